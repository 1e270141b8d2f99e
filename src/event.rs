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

/// `on_hog` calls that panicked, since the process started.
static CALLBACK_PANICS: AtomicU64 = AtomicU64::new(0);
/// `on_hog` calls skipped because the calling thread was already panicking.
static CALLBACK_SKIPPED: AtomicU64 = AtomicU64::new(0);

/// Calls the user's `on_hog` callback so that it cannot break the thread that calls it: a panic
/// in the callback is caught, counted and logged (the first one only: a callback that always
/// panics must not flood the log), and the callback is not called at all on a thread that is
/// already panicking (a second panic there would abort the process); that is counted too.
pub(crate) fn call_on_hog(callback: &OnHog, event: &HogEvent) {
    if std::thread::panicking() {
        CALLBACK_SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // The callback sees the event by reference only; whatever state of its own it leaves
    // behind after a panic is its business, as with any callback that panics.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(event)));
    if let Err(payload) = outcome {
        if CALLBACK_PANICS.fetch_add(1, Ordering::Relaxed) == 0 {
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a non-string payload");
            tracing::error!(
                target: "hogwatch",
                label = %event.label,
                "the on_hog callback panicked ({message}); hogwatch caught it and goes on (later \
                 panics of the callback are counted, not logged)",
            );
        }
    }
}

/// How many `on_hog` calls panicked, and how many were skipped on a panicking thread.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn callback_failures() -> (u64, u64) {
    (
        CALLBACK_PANICS.load(Ordering::Relaxed),
        CALLBACK_SKIPPED.load(Ordering::Relaxed),
    )
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

    fn event() -> HogEvent {
        HogEvent {
            kind: HogKind::Stall,
            label: Arc::from("label"),
            duration: Duration::from_millis(1),
            threshold: Duration::from_millis(1),
            thread: None,
            stack: Vec::new(),
            culprit: None,
        }
    }

    #[test]
    fn a_panicking_callback_is_caught_and_counted_and_none_runs_while_panicking() {
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        let callback: OnHog = Arc::new(move |_: &HogEvent| {
            counter.fetch_add(1, Ordering::Relaxed);
            std::panic::resume_unwind(Box::new("the callback panics"));
        });
        let (panics, skipped) = callback_failures();
        call_on_hog(&callback, &event());
        call_on_hog(&callback, &event());
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(callback_failures().0 - panics, 2);

        // Called from a destructor during a panic: skipped, counted, and no abort.
        struct CallsOnDrop(OnHog);
        impl Drop for CallsOnDrop {
            fn drop(&mut self) {
                call_on_hog(&self.0, &event());
            }
        }
        let guard = CallsOnDrop(callback.clone());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _guard = guard;
            std::panic::resume_unwind(Box::new("the caller panics"));
        }));
        assert!(unwound.is_err());
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "not called while panicking"
        );
        assert_eq!(callback_failures().1 - skipped, 1);
    }

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
