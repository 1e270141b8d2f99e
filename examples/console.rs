//! hogwatch beside tokio-console: one app, both views.
//!
//! ```text
//! RUSTFLAGS="--cfg tokio_unstable" cargo run --example console
//! tokio-console                                  # another terminal; connects to 127.0.0.1:6669
//! curl localhost:3000/slow; curl localhost:3000/fast
//! curl 'localhost:3000/debug/hogs?format=text'   # hogwatch's report
//! ```
//!
//! The app has one `tracing_subscriber` registry with two layers: console-subscriber's, which
//! feeds tokio-console, and a `fmt` layer that prints hogwatch's warnings. Its runtime is
//! instrumented by hogwatch (`Detector::instrument_runtime`), so every task is timed, and the
//! tasks it spawns are named with `tokio::task::Builder::name`: tokio-console's task list shows
//! `GET /slow` and `cache-refresh` with their spawn locations, and hogwatch's report shows the same
//! tasks as `task examples/console.rs:LINE`.
//!
//! tokio-console and the task hooks need `--cfg tokio_unstable`; without it the example only says so.

/// A poll longer than this is a hog.
pub const THRESHOLD: std::time::Duration = std::time::Duration::from_millis(10);
/// How long `GET /slow` blocks its worker: five times the threshold.
pub const BLOCK: std::time::Duration = std::time::Duration::from_millis(50);
/// Where the app listens.
pub const APP_ADDR: &str = "127.0.0.1:3000";

#[cfg(not(tokio_unstable))]
fn main() {
    eprintln!(
        "tokio-console needs tokio's unstable instrumentation; run\n  \
         RUSTFLAGS=\"--cfg tokio_unstable\" cargo run --example console"
    );
}

#[cfg(tokio_unstable)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::prelude::*;

    tracing_subscriber::registry()
        // tokio-console's layer, serving its gRPC API on 127.0.0.1:6669 (or $TOKIO_CONSOLE_BIND).
        .with(
            console_subscriber::ConsoleLayer::builder()
                .with_default_env()
                .spawn(),
        )
        // hogwatch's warnings on stderr, and nothing of tokio's own tracing.
        .with(
            tracing_subscriber::fmt::layer().with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("hogwatch", tracing::Level::WARN),
            ),
        )
        .init();

    let detector = hogwatch::Detector::builder()
        .threshold(THRESHOLD)
        .lag_probe(std::time::Duration::from_millis(10))
        .build()?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let runtime = detector.instrument_runtime(builder.enable_all()).build()?;
    runtime.block_on(async {
        spawn_cache_refresh();
        let listener = tokio::net::TcpListener::bind(APP_ADDR).await?;
        eprintln!(
            "listening on http://{APP_ADDR}: GET /slow, GET /fast, GET /debug/hogs?format=text; \
             run `tokio-console` in another terminal"
        );
        axum::serve(listener, app(&detector)).await?;
        Ok(())
    })
}

/// The app: a handler that blocks, one that does not, hogwatch's layer on both, and the report
/// at `/debug/hogs`.
#[cfg(tokio_unstable)]
pub fn app(detector: &hogwatch::Detector) -> axum::Router {
    use axum::routing::get;

    axum::Router::new()
        .route("/slow", get(slow))
        .route("/fast", get(fast))
        .layer(detector.layer())
        .merge(detector.router())
}

/// Does its work in a task named after the route, so tokio-console's task list reads like the
/// report. The work blocks the worker: a stand-in for parsing a large document.
#[cfg(tokio_unstable)]
async fn slow() -> &'static str {
    let work = tokio::task::Builder::new()
        .name("GET /slow")
        .spawn(async {
            std::thread::sleep(BLOCK);
            "slow: blocked a worker\n"
        })
        .expect("spawning a task on a running runtime succeeds");
    work.await.unwrap_or("slow: the task failed\n")
}

/// The same shape, without blocking.
#[cfg(tokio_unstable)]
async fn fast() -> &'static str {
    let work = tokio::task::Builder::new()
        .name("GET /fast")
        .spawn(async {
            tokio::task::yield_now().await;
            "fast: never blocked\n"
        })
        .expect("spawning a task on a running runtime succeeds");
    work.await.unwrap_or("fast: the task failed\n")
}

/// A background task nobody wrapped: refreshes a cache every half second and blocks for 20 ms
/// each time. Only the task hooks (and tokio-console) see it.
#[cfg(tokio_unstable)]
pub fn spawn_cache_refresh() {
    tokio::task::Builder::new()
        .name("cache-refresh")
        .spawn(async {
            let mut interval = tokio::time::interval(std::time::Duration::from_millis(500));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
        .expect("spawning a task on a running runtime succeeds");
}
