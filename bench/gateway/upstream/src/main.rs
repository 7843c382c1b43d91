//! The upstream of `bench/gateway`: answers every request, on any path and method, with one small
//! fixed JSON body, so the benchmark measures the gateway's overhead and not the upstream's work.
//! Usage: `bench-upstream 127.0.0.1:PORT`; prints `listening on http://ADDR` once bound.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;

/// The same bytes for every answer: a JSON-RPC result the size of a small MCP tool result.
const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;

async fn answer() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .context("usage: bench-upstream ADDR (e.g. 127.0.0.1:9000)")?
        .parse()
        .context("ADDR must be host:port")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{}", listener.local_addr()?)?;
    stdout.flush()?;
    // Any path, any method: the fallback is the only route.
    let app = Router::new().fallback(answer);
    axum::serve(listener, app).await.context("serving HTTP")
}
