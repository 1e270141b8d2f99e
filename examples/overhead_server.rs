//! An axum hello-world and a JSON-passthrough route, served in one of several watching
//! configurations, for measuring what watching costs end to end (`scripts/wrk-overhead.sh`).
//!
//! ```sh
//! cargo run --release --example overhead_server -- --mode hogwatch --port 3000
//! ```
//!
//! Modes: `bare`, `hogwatch` (the layer), `hogwatch-watchdog` (the layer and a 50 ms stall
//! watchdog), `tokio-metrics` (a `TaskMonitor` per request), `console` (console-subscriber,
//! needs `RUSTFLAGS="--cfg tokio_unstable"`).

use std::sync::Arc;

use axum::http::header;
use axum::routing::get;
use axum::Router;

fn app() -> Router {
    // A cached JSON document, sent through as it is.
    let cached: Arc<str> = Arc::from(
        serde_json::to_string(&serde_json::json!({
            "instruments": (0..20).map(|i| serde_json::json!({"id": i, "symbol": format!("SYM{i}"), "price": i as f64 * 1.25})).collect::<Vec<_>>()
        }))
        .expect("a json! value serialises"),
    );
    Router::new()
        .route("/hello", get(|| async { "Hello, world!" }))
        .route(
            "/passthrough",
            get(move || {
                let cached = cached.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        cached.to_string(),
                    )
                }
            }),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut mode = String::from("bare");
    let mut port = 3000u16;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => mode = args.next().ok_or("--mode needs a value")?,
            "--port" => port = args.next().ok_or("--port needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let app = match mode.as_str() {
        "bare" => app(),
        "hogwatch" => {
            let detector = hogwatch::Detector::builder().build()?;
            app().layer(detector.layer()).merge(detector.router())
        }
        "hogwatch-watchdog" => {
            let detector = hogwatch::Detector::builder()
                .watchdog(std::time::Duration::from_millis(50))
                .build()?;
            app().layer(detector.layer()).merge(detector.router())
        }
        "tokio-metrics" => {
            let monitor = tokio_metrics::TaskMonitor::new();
            app().layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let monitor = monitor.clone();
                    async move { monitor.instrument(next.run(request)).await }
                },
            ))
        }
        "console" => {
            start_console()?;
            app()
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("serving mode {mode} on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(tokio_unstable)]
fn start_console() -> Result<(), Box<dyn std::error::Error>> {
    console_subscriber::init();
    Ok(())
}

#[cfg(not(tokio_unstable))]
fn start_console() -> Result<(), Box<dyn std::error::Error>> {
    Err("mode console needs RUSTFLAGS=\"--cfg tokio_unstable\"".into())
}
