//! Find the code that blocks your tokio executor.
//!
//! An async server serves thousands of requests on a few worker threads. One handler that spends
//! 30 ms parsing and re-serialising a cached JSON blob, hashing a password or calling
//! `std::thread::sleep` stalls every other request on its worker. hogwatch times every poll of the
//! futures it watches, keeps per-label histograms of poll durations, warns (through `tracing`)
//! when a poll runs over a threshold, and reports it all, worst first.
//!
//! ```
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let detector = hogwatch::Detector::builder()
//!     .threshold(Duration::from_millis(10)) // a poll longer than this is a hog
//!     .build()?;
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! # rt.block_on(async {
//! detector
//!     .watch("parse-blob", async {
//!         std::thread::sleep(Duration::from_millis(30)); // stands in for CPU work
//!     })
//!     .await;
//! # });
//! let report = detector.report();
//! assert_eq!(report.entry("parse-blob").unwrap().slow_polls, 1);
//! println!("{}", report.to_text());
//! # Ok(()) }
//! ```
//!
//! Beyond the futures you wrap: [`Builder::lag_probe`] measures event-loop lag (what every task
//! suffered, whoever caused it), `Builder::runtime_metrics` adds tokio-metrics' runtime figures,
//! and with `--cfg tokio_unstable`, `Detector::instrument_runtime` times every poll of every task,
//! labelled by spawn location. [`docs::labels`] explains what each label means.
//!
//! Data flows one way: a poll is recorded into its label's per-thread counters (the recorder), a
//! [`Report`] is built from a snapshot of them, and renderers turn a report into text, JSON,
//! HTML and Prometheus text.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, unreachable_pub, unsafe_code)]
#![warn(rust_2018_idioms)]

#[cfg(any(feature = "metrics", feature = "opentelemetry"))]
mod bridge;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod console;
mod detector;
pub mod docs;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod endpoint;
mod event;
#[cfg(tokio_unstable)]
mod hooks;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod layer;
mod recorder;
mod render;
mod report;
mod runtime;
mod schema;
#[cfg(feature = "watchdog")]
#[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
pub mod testing;
mod watch;
#[cfg(feature = "watchdog")]
mod watch_runtime;
#[cfg(feature = "watchdog")]
mod watchdog;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use bridge::metrics::MetricsReporter;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub use bridge::opentelemetry::OpenTelemetryReporter;
pub use detector::{Builder, ConfigError, Detector};
pub use event::{HogEvent, HogKind};
pub use recorder::{Bucket, LabelKind, PollHistogram, CUT_MARKER, MAX_LABEL_BYTES, OTHER_LABEL};
pub use report::{
    CauseCount, CulpritCount, Entry, FunctionSamples, Report, Responses, StackCount, StallCause,
    WatchdogStats,
};
pub use runtime::{EventLoopLag, RuntimeFigures};
pub use watch::{FutureTiming, Watched};
#[cfg(feature = "watchdog")]
#[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
pub use watchdog::{CurrentRuntimeError, NoWatchdog};

/// The README's examples, compiled (and run, unless marked `no_run`) as doctests: each is a
/// whole program, as a user would paste it. One uses the `metrics` bridge, so they are built
/// with that feature (`cargo test --features metrics --doc ReadmeDoctests`, in CI).
#[cfg(all(doctest, feature = "metrics"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The paths of hogwatch's own poll wrappers (`Watched`, and the layer's route future and body),
/// as `std::any::type_name` spells them without generic arguments: in a stall's stack, the
/// frames below the first of them are the executor's. Taken from the types themselves, here
/// where every room is in view, so that the watchdog names no module of the wrappers and a
/// rename cannot leave it behind.
#[cfg(feature = "watchdog")]
pub(crate) fn poll_wrappers() -> Vec<&'static str> {
    fn path<T: ?Sized>() -> &'static str {
        let name = std::any::type_name::<T>();
        name.split('<').next().unwrap_or(name)
    }
    #[allow(unused_mut)]
    let mut wrappers = vec![path::<watch::Watched<()>>()];
    #[cfg(feature = "axum")]
    wrappers.extend([path::<layer::HogFuture<()>>(), path::<layer::HogBody<()>>()]);
    wrappers
}
