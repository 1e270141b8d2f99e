//! Hog events: what a slow poll reports to the user's callback and to `tracing`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What kind of hog an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HogKind {
    /// A poll returned after running longer than the threshold.
    SlowPoll,
    /// A poll is still running past the watchdog threshold (reported while it blocks, with the
    /// blocked thread's stack). Needs the `watchdog` feature and
    /// [`Builder::watchdog`](crate::Builder::watchdog).
    Stall,
}

/// One poll that blocked the executor, as passed to the `on_hog` callback: a slow poll after it
/// returned, or (with the watchdog) a stall while it still blocks.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), hogwatch::ConfigError> {
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// let detector = hogwatch::Detector::builder()
///     .threshold(Duration::from_millis(1))
///     .on_hog(move |event: &hogwatch::HogEvent| {
///         sink.lock().unwrap().push((event.label.to_string(), event.duration));
///     })
///     .build()?;
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(detector.watch("sleepy", async {
///     std::thread::sleep(Duration::from_millis(5)); // blocks the executor
/// }));
/// assert_eq!(seen.lock().unwrap()[0].0, "sleepy");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HogEvent {
    /// What happened.
    pub kind: HogKind,
    /// The label of the watched future (or route).
    pub label: Arc<str>,
    /// How long the poll ran (for a [`HogKind::Stall`]: has been running so far).
    pub duration: Duration,
    /// The threshold it exceeded (for a stall: the watchdog threshold).
    pub threshold: Duration,
    /// The blocked thread's name (stalls only).
    pub thread: Option<Arc<str>>,
    /// The blocked thread's stack while it blocked, symbolised, innermost frame first (stalls
    /// only; empty if it could not be captured).
    pub stack: Vec<String>,
    /// The first frame of `stack` outside the runtime, the standard library, hogwatch and the
    /// HTTP stack: the code to look at (stalls only).
    pub culprit: Option<String>,
}

/// A callback that receives every hog event (not rate limited).
pub(crate) type OnHog = Arc<dyn Fn(&HogEvent) + Send + Sync>;

/// Calls the user's `on_hog` callback so that it cannot harm the code being watched: never while
/// the thread is already unwinding (a second panic would abort), and a panic in it is caught
/// (and logged once per process) instead of reaching the watched future or the watchdog.
pub(crate) fn call_on_hog(callback: &OnHog, event: &HogEvent) {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::thread::panicking() {
        return;
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(event)));
    if outcome.is_err() && !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::error!(
            target: "hogwatch",
            label = %event.label,
            "the on_hog callback panicked; hogwatch caught it (logged once)"
        );
    }
}

/// Lets one warning per interval through, and counts the ones it held back.
#[derive(Default)]
pub(crate) struct RateLimiter {
    /// When the last warning went out, in clock nanoseconds plus one (0: never).
    last_ns: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimiter {
    /// `Some(suppressed since the last one)` if a warning may go out at `now_ns`.
    pub(crate) fn try_acquire(&self, now_ns: u64, interval_ns: u64) -> Option<u64> {
        let now = now_ns.saturating_add(1);
        let last = self.last_ns.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= interval_ns;
        if due
            && self
                .last_ns
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_with_suppressed_count() {
        let limiter = RateLimiter::default();
        assert_eq!(limiter.try_acquire(0, 1_000), Some(0));
        assert_eq!(limiter.try_acquire(10, 1_000), None);
        assert_eq!(limiter.try_acquire(999, 1_000), None);
        assert_eq!(limiter.try_acquire(1_000, 1_000), Some(2));
        assert_eq!(limiter.try_acquire(1_500, 1_000), None);
    }
}
