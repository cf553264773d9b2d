//! Load generator: keep-alive HTTP/1.1 connections posting generic inquiries as fast as each
//! connection's answers allow (closed loop), or at a fixed total rate (`--rate`, open loop: latency
//! is measured from each request's scheduled start, so queueing is not hidden).
//! Prints one JSON line: throughput and p50/p99/p999 latency in microseconds.
//!
//! `loadgen --url http://127.0.0.1:8080/v1/inquiries --connections 64 --seconds 10`
//! `loadgen --url http://127.0.0.1:8080/v1/inquiries/batch --batch 1000 --connections 4 --seconds 10`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser, Clone)]
struct Args {
    /// Target URL (`/v1/inquiries`, or `/v1/inquiries/batch` with --batch).
    #[arg(long)]
    url: hyper::Uri,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured duration.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// NDJSON lines per request; 0 posts one JSON inquiry per request.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Total requests per second across connections (open loop); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Label echoed in the output line.
    #[arg(long, default_value = "")]
    label: String,
}

fn inquiry(run: u64, conn: usize, seq: u64) -> String {
    format!(
        concat!(
            r#"{{"channel":"generic","account":"shop-{}","external_id":"r{}-c{}-s{}","conversation_id":"conv-{}-{}","#,
            r#""buyer":{{"name":"Bench Buyer","email":"buyer{}@example.com","country":"DE","language":"de"}},"#,
            r#""subject":"Bulk order","body":"Hello, can you ship 500 units of the blue lamp to Berlin by Friday? Urgent.","#,
            r#""occurred_at":"2026-11-24T08:00:00Z","product_ids":["sku-blue-lamp"]}}"#
        ),
        conn % 8,
        run,
        conn,
        seq,
        conn,
        seq % 16,
        seq % 1000
    )
}

struct Totals {
    requests: AtomicU64,
    inquiries: AtomicU64,
    errors: AtomicU64,
    refused: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let totals = Arc::new(Totals {
        requests: AtomicU64::new(0),
        inquiries: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_seconds);
    let end = measure_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let (args, totals) = (args.clone(), totals.clone());
        tasks.push(tokio::spawn(async move { connection(args, run, conn, totals, measure_from, end).await }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        histogram.add(task.await??)?;
    }
    let secs = args.seconds as f64;
    let requests = totals.requests.load(Ordering::Relaxed);
    let inquiries = totals.inquiries.load(Ordering::Relaxed);
    println!(
        "{{\"label\":\"{}\",\"connections\":{},\"batch\":{},\"target_rps\":{},\"requests\":{},\"rps\":{:.0},\"inquiries_per_s\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"errors\":{},\"refused\":{}}}",
        args.label, args.connections, args.batch, args.rate, requests, requests as f64 / secs, inquiries as f64 / secs,
        histogram.value_at_quantile(0.5), histogram.value_at_quantile(0.99), histogram.value_at_quantile(0.999),
        histogram.max(), totals.errors.load(Ordering::Relaxed), totals.refused.load(Ordering::Relaxed),
    );
    Ok(())
}

/// A keep-alive HTTP/1.1 connection to `authority`.
async fn connect(authority: &str) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn connection(
    args: Args,
    run: u64,
    conn: usize,
    totals: Arc<Totals>,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let authority = args.url.authority().expect("url has a host").clone();
    let mut sender = connect(authority.as_str()).await?;
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
    let mut next =
        Instant::now() + interval.map_or(Duration::ZERO, |i| i.mul_f64(conn as f64 / args.connections as f64));
    let (content_type, per_request) =
        if args.batch > 0 { ("application/x-ndjson", args.batch) } else { ("application/json", 1) };
    let mut seq = 0u64;
    loop {
        if interval.is_some() {
            tokio::time::sleep_until(next.into()).await;
        }
        let scheduled = if interval.is_some() { next } else { Instant::now() };
        if scheduled >= end {
            break;
        }
        let body = if args.batch > 0 {
            let mut lines = String::with_capacity(args.batch * 400);
            for _ in 0..args.batch {
                lines.push_str(&inquiry(run, conn, seq));
                lines.push('\n');
                seq += 1;
            }
            lines
        } else {
            seq += 1;
            inquiry(run, conn, seq)
        };
        let req = Request::post(args.url.clone())
            .header(hyper::header::HOST, authority.as_str())
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))?;
        if sender.ready().await.is_err() {
            // The server closed the connection (after answering): a client opens another.
            sender = connect(authority.as_str()).await?;
        }
        let answered = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        let status = match answered.await {
            Ok(status) => status,
            Err(_) => {
                // Closed before answering (e.g. a server refusing a request whose body it did not
                // read): counted as an error, and the next request goes on a new connection.
                if scheduled >= measure_from {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                }
                sender = connect(authority.as_str()).await?;
                if let Some(interval) = interval {
                    next += interval;
                }
                continue;
            }
        };
        let done = Instant::now();
        if scheduled >= measure_from {
            if status.is_success() {
                totals.requests.fetch_add(1, Ordering::Relaxed);
                totals.inquiries.fetch_add(per_request as u64, Ordering::Relaxed);
                histogram.record((done - scheduled).as_micros().max(1) as u64)?;
            } else if status == 503 || status == 429 {
                totals.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                totals.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(interval) = interval {
            next += interval;
        }
    }
    Ok(histogram)
}
