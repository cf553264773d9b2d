//! `platform-standins`: serves the platform stand-ins on fixed loopback ports, so a newcomer can
//! point the pollers of `deploy/examples/connectors.toml` at them and watch them import, within
//! quota. `--demo` adds a few buyer messages to every stand-in, then one more every few seconds.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use platform_standins::{platform, Message, Standin, PLATFORMS};

/// Local stand-ins for platform APIs (documented shapes and quotas).
#[derive(Parser)]
struct Args {
    /// `name=address` pairs, e.g. `etsy=127.0.0.1:18102`; default: every stand-in on 18101+.
    #[arg(long = "serve")]
    serve: Vec<String>,
    /// The account (page id, shop id) demo messages are added for, per stand-in: `name=account`.
    #[arg(long = "account")]
    accounts: Vec<String>,
    /// Add demo buyer messages now and every 5 seconds.
    #[arg(long)]
    demo: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let wanted: Vec<(String, SocketAddr)> = if args.serve.is_empty() {
        PLATFORMS
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), SocketAddr::from(([127, 0, 0, 1], 18101 + i as u16))))
            .collect()
    } else {
        args.serve
            .iter()
            .map(|pair| {
                let (name, addr) = pair.split_once('=').ok_or(format!("--serve {pair}: expected name=address"))?;
                Ok((name.to_owned(), addr.parse()?))
            })
            .collect::<Result<_, Box<dyn std::error::Error>>>()?
    };
    let mut running = Vec::new();
    for (name, addr) in wanted {
        let platform = platform(&name).ok_or(format!("unknown stand-in {name}; known: {}", PLATFORMS.join(", ")))?;
        let standin = Standin::start_on(addr, platform, None).await?;
        let rule = standin.rule();
        println!(
            "{name}: {} ({} req/s, burst {}, per day {:?}); stats at {}/_standin/stats",
            standin.url(),
            rule.per_second,
            rule.burst,
            rule.per_day,
            standin.url()
        );
        let account = args
            .accounts
            .iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .unwrap_or_else(|| "1001".to_owned());
        running.push((standin, account));
    }
    let mut n: i64 = 0;
    loop {
        if args.demo {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            for (standin, account) in &running {
                standin.add(Message {
                    account: account.clone(),
                    conversation: format!("{}", 3_000_000_000i64 + n),
                    id: format!("demo-{n}"),
                    buyer_id: format!("{}", 100_000_000 + n % 7),
                    buyer_name: "Demo Buyer".to_owned(),
                    text: format!("Hello, is item {n} available in blue? We need 20 pieces."),
                    created: now,
                    from_seller: false,
                    order_id: None,
                    country: Some("DE".to_owned()),
                });
            }
            n += 1;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
