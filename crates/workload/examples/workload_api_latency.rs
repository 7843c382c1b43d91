//! Workload API latency, measured from a real client (the `spiffe` crate) against a running
//! `mandate serve --workload-socket`. Driven by `bench/workload-api/run.sh`, which registers
//! this binary (uid + path) as an agent first.
//!
//!   workload_api_latency <unix:/path/to/socket> [calls] [warmup]
//!
//! Prints one JSON object: p50/p90/p99/mean (µs) per operation over `calls` sequential calls on
//! one connection, after `warmup` discarded calls:
//! - `fetch_x509_svid_first`: open FetchX509SVID, receive the first message (attest + issue a
//!   fresh P-256 X.509-SVID + audit append), close the stream;
//! - `fetch_jwt_svid`: FetchJWTSVID round trip (attest + ES256 JWT-SVID + audit append);
//! - `validate_jwt_svid`: ValidateJWTSVID round trip (attest + signature check, no audit write);
//! - `fetch_jwt_bundles_first`: FetchJWTBundles first message (attest only: the baseline cost of
//!   a call that issues nothing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use spiffe::WorkloadApiClient;

const AUDIENCE: &str = "https://bench.example.test";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e6
}

fn summary(mut samples: Vec<Duration>) -> serde_json::Value {
    samples.sort();
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e6;
    serde_json::json!({
        "n": samples.len(),
        "p50_us": percentile(&samples, 50.0).round(),
        "p90_us": percentile(&samples, 90.0).round(),
        "p99_us": percentile(&samples, 99.0).round(),
        "mean_us": mean.round(),
        "max_us": percentile(&samples, 100.0).round(),
    })
}

async fn measure<F, Fut>(calls: usize, warmup: usize, mut op: F) -> serde_json::Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..warmup {
        op().await;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        op().await;
        samples.push(started.elapsed());
    }
    summary(samples)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args.get(1).expect("usage: workload_api_latency <unix:/socket> [calls] [warmup]");
    let calls: usize = args.get(2).map_or(1000, |n| n.parse().expect("calls"));
    let warmup: usize = args.get(3).map_or(50, |n| n.parse().expect("warmup"));
    let client = WorkloadApiClient::connect_to(endpoint).await.expect("connect");
    let token = client.fetch_jwt_svid([AUDIENCE], None).await.expect("a JWT-SVID: is this binary registered?");
    let token = token.token().to_owned();

    let x509 = measure(calls, warmup, || async {
        client.fetch_x509_svid().await.expect("FetchX509SVID");
    })
    .await;
    let jwt = measure(calls, warmup, || async {
        client.fetch_jwt_svid([AUDIENCE], None).await.expect("FetchJWTSVID");
    })
    .await;
    let validate = measure(calls, warmup, || async {
        client.validate_jwt_token(AUDIENCE, &token).await.expect("ValidateJWTSVID");
    })
    .await;
    let bundles = measure(calls, warmup, || async {
        client.fetch_jwt_bundles().await.expect("FetchJWTBundles");
    })
    .await;
    let report = serde_json::json!({
        "calls": calls,
        "warmup": warmup,
        "fetch_x509_svid_first": x509,
        "fetch_jwt_svid": jwt,
        "validate_jwt_svid": validate,
        "fetch_jwt_bundles_first": bundles,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
