//! `Detector::watch_runtime`: the runtime watchdog's place on the handle. The watchdog's
//! `workers` module does the work; this module only lends it the detector's recorder (the
//! watchdog never imports the detector, which builds it).

use crate::detector::Detector;
use crate::watchdog::{CurrentRuntimeError, NoWatchdog};
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

    /// Watches the runtime it is called from, as [`watch_runtime`](Self::watch_runtime) does,
    /// for apps and tests that never see the runtime's `Builder`: call it at the top of a
    /// `#[tokio::main]` or `#[tokio::test]` function (either flavor), or from any task.
    ///
    /// Stalls of tasks that nothing wraps are reported under `task <the future's function>`,
    /// with stack, culprit and cause; parked workers are never interrupted; many short polls
    /// are never a stall. Stacks need Linux; elsewhere it does nothing.
    ///
    /// It finds the workers from inside the runtime: a current-thread runtime's thread is the
    /// caller's; a multi-thread runtime's workers each run one of the registration tasks it
    /// spawns (called from `block_on`'s thread, as in `#[tokio::main]`, it waits up to 250 ms
    /// for them, idle workers take microseconds, and then for the watchdog's first two checks of
    /// them, which learn how each parks: half a threshold or so, so that a stall right after the
    /// call is sampled as soon as any other). Compared with `watch_runtime`:
    ///
    /// - a worker busy in a long poll when it is called is watched from its next poll on;
    /// - tokio tells it nothing of parks: the watchdog reads each worker's `/proc` entry at
    ///   each check (one small read; a parked worker is never signalled) and knows a park by the
    ///   call tokio parks in, learnt from its stack. A stall's start is known to a check
    ///   (a quarter of the threshold) rather than to the unpark. In a build without symbols
    ///   (`strip = true`), parks cannot be told from stacks: an idle worker is looked at every
    ///   eight thresholds, and a stall that begins meanwhile is reported that much later;
    /// - a thread that becomes a worker later (after `block_in_place` hands a worker's queue to
    ///   a new thread) is not watched.
    ///
    /// Calling it again from the same thread on the same runtime does nothing.
    ///
    /// # Errors
    ///
    /// [`CurrentRuntimeError::NoWatchdog`] if the detector was built without
    /// [`Builder::watchdog`](crate::Builder::watchdog); [`CurrentRuntimeError::NoRuntime`]
    /// outside a tokio runtime.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let detector = hogwatch::Detector::builder()
    ///         .watchdog(Duration::from_millis(50))
    ///         .build()?;
    ///     detector.watch_current_runtime()?;
    ///     // A background task that blocks its worker for half a second.
    ///     tokio::spawn(async { std::thread::sleep(Duration::from_millis(500)) }).await?;
    /// #   if cfg!(target_os = "linux") {
    ///     let report = detector.report();
    ///     let stalled = report.entries.iter().find(|entry| entry.stalls > 0).unwrap();
    ///     assert!(stalled.label.starts_with("task "), "{}", stalled.label);
    /// #   }
    ///     Ok(())
    /// }
    /// ```
    pub fn watch_current_runtime(&self) -> Result<(), CurrentRuntimeError> {
        let watchdog = self
            .watchdog_state()
            .ok_or(CurrentRuntimeError::NoWatchdog)?;
        crate::watchdog::watch_current_runtime(self.recorder(), &watchdog.runtimes, false)
    }

    /// `watch_current_runtime`, and stalls of the future given to `block_on` count in either
    /// flavor (the test guard's: a test body that blocks fails its test).
    pub(crate) fn watch_current_runtime_and_body(&self) -> Result<(), CurrentRuntimeError> {
        let watchdog = self
            .watchdog_state()
            .ok_or(CurrentRuntimeError::NoWatchdog)?;
        crate::watchdog::watch_current_runtime(self.recorder(), &watchdog.runtimes, true)
    }
}
