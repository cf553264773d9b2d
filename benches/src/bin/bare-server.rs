//! The bare-hyper ceiling: reads each request body and answers 200 with a small JSON body, doing
//! nothing else. Run: `bare-server --listen 127.0.0.1:18080`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from_static(
        b"{\"id\":\"01a20cca-ee25-741e-bd8f-7e3170ff15fc\",\"status\":\"accepted\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"}",
    )));
    *resp.status_mut() = hyper::StatusCode::CREATED;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("bare-server listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer)).await;
        });
    }
}
