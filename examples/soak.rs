//! Soak: a real axum server with hogwatch, driven at full speed across blocking, async and
//! passthrough routes for a fixed time. Afterwards the report's request counts must equal the
//! client's completed requests exactly, per route, and resident memory after warm-up must grow by
//! less than 5 %. Exits non-zero if either fails.
//!
//! ```sh
//! cargo run --release --example soak -- --seconds 60     # CI's short run
//! cargo run --release --example soak -- --seconds 600    # the long run
//! ```

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use support::documents::{document, Size};
use support::load::Load;
use support::table::Table;

const ROUTES: [&str; 3] = ["/blocking", "/async", "/passthrough"];

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

fn app(detector: &hogwatch::Detector) -> Router {
    let cached: Arc<str> = Arc::from(document(Size::Small));
    Router::new()
        .route(
            "/blocking",
            get(|State(cached): State<Arc<str>>| async move {
                // The mistake on purpose: a JSON round-trip on the executor.
                let value: serde_json::Value =
                    serde_json::from_str(&cached).expect("the cached document is JSON");
                serde_json::to_string(&value).expect("a Value serialises")
            }),
        )
        .route(
            "/async",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                "ok"
            }),
        )
        .route(
            "/passthrough",
            get(|State(cached): State<Arc<str>>| async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    cached.to_string(),
                )
            }),
        )
        .with_state(cached)
        .layer(detector.layer())
        .merge(detector.router())
}

/// Keeps loading `route` in batches until `deadline`; returns (answered, errors).
async fn hammer(address: SocketAddr, route: &'static str, deadline: Instant) -> (u64, u64) {
    let (mut answered, mut errors) = (0, 0);
    while Instant::now() < deadline {
        let result = Load::get(address, route)
            .requests(2_000)
            .concurrency(8)
            .run()
            .await;
        answered += result.requests;
        errors += result.errors;
    }
    (answered, errors)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 60u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().ok_or("--seconds needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}; try --seconds N").into()),
        }
    }
    let detector = hogwatch::Detector::builder()
        .threshold(Duration::from_millis(1))
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server_app = app(&detector);
    tokio::spawn(async move { axum::serve(listener, server_app).await });

    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let warm_up = Duration::from_secs(seconds / 5);
    let load: Vec<_> = ROUTES
        .iter()
        .map(|route| tokio::spawn(hammer(address, route, deadline)))
        .collect();
    tokio::time::sleep(warm_up).await;
    let rss_start = resident_bytes();
    let mut client = BTreeMap::new();
    for (route, task) in ROUTES.iter().zip(load) {
        client.insert(*route, task.await?);
    }
    let rss_end = resident_bytes();
    let elapsed = start.elapsed();

    let report = detector.report();
    let mut table = Table::new([
        "route",
        "client answered",
        "client errors",
        "server requests",
        "match",
    ]);
    let mut all_match = true;
    let mut served = 0;
    for (route, (answered, errors)) in &client {
        let label = format!("GET {route}");
        let entry = report.entry(&label);
        let requests = entry.map_or(0, |entry| entry.requests);
        let ended = entry.map_or(0, |entry| {
            entry.completed + entry.cancelled + entry.panicked
        });
        let matched = requests == *answered && ended == requests && *errors == 0;
        all_match &= matched;
        served += requests;
        table.row([
            label,
            answered.to_string(),
            errors.to_string(),
            requests.to_string(),
            if matched { "yes" } else { "NO" }.to_string(),
        ]);
    }
    let growth = rss_end as f64 / rss_start.max(1) as f64 - 1.0;
    println!("{table}");
    println!(
        "served {served} requests in {:.1} s ({:.0}/s); counts matched: {}",
        elapsed.as_secs_f64(),
        served as f64 / elapsed.as_secs_f64(),
        if all_match { "yes" } else { "NO" }
    );
    println!(
        "resident memory after {} s warm-up: {:.1} MiB, at the end: {:.1} MiB, growth {:+.2} %",
        warm_up.as_secs(),
        rss_start as f64 / 1048576.0,
        rss_end as f64 / 1048576.0,
        growth * 100.0
    );
    println!("\n{}", report.to_text());
    if !all_match {
        return Err("request counts do not match".into());
    }
    if growth >= 0.05 {
        return Err(format!("resident memory grew by {:.2} %", growth * 100.0).into());
    }
    Ok(())
}
