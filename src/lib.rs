//! Find the code that blocks your tokio executor.
//!
//! An async server serves thousands of requests on a few worker threads. One handler that spends
//! 30 ms parsing and re-serialising a cached JSON blob, hashing a password or calling
//! `std::thread::sleep` stalls every other request on its worker. hogwatch times every poll of the
//! futures it watches, keeps per-label HdrHistograms of poll durations, warns (through `tracing`)
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
//! Data flows one way: a poll is recorded into its label's atomic counters (`stats`), a
//! [`Report`] is a snapshot of them, and renderers turn a report into text, JSON and the rest.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, unreachable_pub, unsafe_code)]
#![warn(rust_2018_idioms)]

mod detector;
mod event;
mod render;
mod report;
mod stats;
mod watch;
#[cfg(feature = "watchdog")]
mod watchdog;
#[cfg(not(feature = "watchdog"))]
#[path = "watchdog/off.rs"]
mod watchdog;

/// Guides: the longer explanations.
pub mod guide {
    #[cfg(feature = "watchdog")]
    #[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
    #[doc = include_str!("docs/watchdog.md")]
    pub mod watchdog {}
}

pub use detector::{Builder, ConfigError, Detector};
pub use event::{HogEvent, HogKind};
pub use report::{CulpritCount, Entry, Report, Responses, StackCount, WatchdogStats};
pub use stats::OTHER_LABEL;
pub use watch::{FutureTiming, Watched};
