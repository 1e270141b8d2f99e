//! `Detector::watch_runtime`: the runtime watchdog's place on the handle. The watchdog's
//! `workers` module does the work; this module only lends it the detector's recorder (the
//! watchdog never imports the detector, which builds it).

use crate::detector::Detector;
use crate::watchdog::NoWatchdog;
#[cfg(doc)]
use crate::HogKind;

impl Detector {
    /// Watches every task poll of the runtime `builder` builds, on stable Rust and without
    /// wrapping anything: a worker that stays inside one task poll longer than the
    /// [watchdog](crate::Builder::watchdog) threshold is reported as a stall
    /// ([`HogKind::Stall`] to [`on_hog`](crate::Builder::on_hog), a warning, and the stall,
    /// stack, culprit and cause in the report) under the label `task <the future's function>`
    /// (see [the guide](crate::docs::watchdog#every-worker-without-wrapping-watch_runtime)).
    /// Parked workers cost nothing; a busy worker is sampled about twice per threshold.
    ///
    /// Installs tokio's `on_thread_start`, `on_thread_stop`, `on_thread_park` and
    /// `on_thread_unpark` callbacks, replacing any set on `builder` before (tokio keeps one of
    /// each). Stacks need Linux; elsewhere the runtime is built unwatched.
    ///
    /// # Errors
    ///
    /// [`NoWatchdog`] if the detector was built without [`Builder::watchdog`](crate::Builder::watchdog).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let detector = hogwatch::Detector::builder()
    ///     .watchdog(Duration::from_millis(50))
    ///     .build()?;
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// let rt = detector.watch_runtime(builder.enable_all())?.build()?;
    /// rt.block_on(async {
    ///     // A background task that blocks its worker for a second.
    ///     tokio::spawn(async { std::thread::sleep(Duration::from_secs(1)) })
    ///         .await
    ///         .unwrap();
    /// });
    /// # if cfg!(target_os = "linux") {
    /// let report = detector.report();
    /// let stalled = report.entries.iter().find(|entry| entry.stalls > 0).unwrap();
    /// assert!(stalled.label.starts_with("task "), "{}", stalled.label);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn watch_runtime<'a>(
        &self,
        builder: &'a mut tokio::runtime::Builder,
    ) -> Result<&'a mut tokio::runtime::Builder, NoWatchdog> {
        let watchdog = self.watchdog_state().ok_or(NoWatchdog)?;
        crate::watchdog::install_workers(self.recorder(), &watchdog.runtimes, builder);
        Ok(builder)
    }
}
