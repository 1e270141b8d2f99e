//! Per-label storage: the registry that maps a label to its statistics, and the statistics
//! themselves, written by the hot path with relaxed atomics only.
//!
//! A watched future looks its label up once, when it is created, and keeps an `Arc<LabelStats>`;
//! each poll then touches only that label's counters. The registry's lock is taken per watched
//! future (a read lock, except the first time a label is seen), never per poll.

mod histogram;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use histogram::AtomicHistogram;
pub(crate) use histogram::{empty_histogram, HIGHEST_US, LOWEST_US};

use crate::report::{Entry, LabelKind, Responses};

/// The label under which polls of labels beyond `max_labels` are counted.
pub const OTHER_LABEL: &str = "<other>";

/// Everything recorded for one label. All counters are cumulative since the last reset.
pub(crate) struct LabelStats {
    pub(crate) label: Arc<str>,
    /// What made the label; the first kind to ask for a label wins.
    kind: LabelKind,
    polls: AtomicHistogram,
    busy_ns: AtomicU64,
    slow_polls: AtomicU64,
    slow_busy_ns: AtomicU64,
    wall_ns: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    panicked: AtomicU64,
    requests: AtomicU64,
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    responses: [AtomicU64; 5],
    /// Rate limiting of the tracing warning, see `crate::event::RateLimiter`.
    pub(crate) warn_limiter: crate::event::RateLimiter,
}

/// How a watched future ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Cancelled,
    Panicked,
}

impl LabelStats {
    fn new(label: Arc<str>, kind: LabelKind, threshold_us: u64) -> Self {
        Self {
            label,
            kind,
            polls: AtomicHistogram::new(threshold_us),
            busy_ns: AtomicU64::new(0),
            slow_polls: AtomicU64::new(0),
            slow_busy_ns: AtomicU64::new(0),
            wall_ns: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            responses: Default::default(),
            warn_limiter: crate::event::RateLimiter::default(),
        }
    }

    /// Records one poll that took `poll_ns` in the histogram. The hot path: one relaxed
    /// `fetch_add`. Busy time is added separately, in batches (see `add_busy`).
    #[inline]
    pub(crate) fn record_poll(&self, poll_ns: u64) {
        self.polls.record(poll_ns / 1_000);
    }

    /// Adds busy time that a watched future accumulated over one or more polls.
    #[inline]
    pub(crate) fn add_busy(&self, busy_ns: u64) {
        self.busy_ns.fetch_add(busy_ns, Ordering::Relaxed);
    }

    /// Adds a poll that was over the threshold (called in addition to `record_poll`).
    pub(crate) fn record_slow_poll(&self, poll_ns: u64) {
        self.slow_polls.fetch_add(1, Ordering::Relaxed);
        self.slow_busy_ns.fetch_add(poll_ns, Ordering::Relaxed);
    }

    /// Records how a watched future ended, how long it lived since its first poll, and the busy
    /// time it had not handed over yet.
    pub(crate) fn record_end(&self, outcome: Outcome, wall_ns: u64, unflushed_busy_ns: u64) {
        self.add_busy(unflushed_busy_ns);
        self.wall_ns.fetch_add(wall_ns, Ordering::Relaxed);
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Cancelled => &self.cancelled,
            Outcome::Panicked => &self.panicked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request (used by the HTTP layer).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one response by its status code (used by the HTTP layer).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn record_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads (and with `reset`, zeroes) every counter into a report entry.
    fn snapshot(&self, reset: bool) -> Entry {
        let take = |counter: &AtomicU64| {
            if reset {
                counter.swap(0, Ordering::Relaxed)
            } else {
                counter.load(Ordering::Relaxed)
            }
        };
        let mut histogram = empty_histogram();
        self.polls.drain_into(&mut histogram, reset);
        let responses = Responses {
            informational: take(&self.responses[0]),
            success: take(&self.responses[1]),
            redirection: take(&self.responses[2]),
            client_error: take(&self.responses[3]),
            server_error: take(&self.responses[4]),
        };
        Entry::new(
            self.label.to_string(),
            self.kind,
            histogram,
            crate::report::Counters {
                busy_ns: take(&self.busy_ns),
                slow_polls: take(&self.slow_polls),
                slow_busy_ns: take(&self.slow_busy_ns),
                wall_ns: take(&self.wall_ns),
                completed: take(&self.completed),
                cancelled: take(&self.cancelled),
                panicked: take(&self.panicked),
                requests: take(&self.requests),
                responses,
            },
        )
    }
}

/// The bounded map from label to statistics.
pub(crate) struct Registry {
    labels: RwLock<HashMap<Arc<str>, Arc<LabelStats>>>,
    other: Arc<LabelStats>,
    max_labels: usize,
    threshold_us: u64,
    folded: AtomicU64,
}

impl Registry {
    pub(crate) fn new(max_labels: usize, threshold_us: u64) -> Self {
        Self {
            labels: RwLock::new(HashMap::new()),
            other: Arc::new(LabelStats::new(
                Arc::from(OTHER_LABEL),
                LabelKind::Other,
                threshold_us,
            )),
            max_labels,
            threshold_us,
            folded: AtomicU64::new(0),
        }
    }

    /// The statistics for `label`, created on first sight; past `max_labels` distinct labels,
    /// the shared `<other>` entry (and the fold is counted).
    pub(crate) fn get(&self, label: &str) -> Arc<LabelStats> {
        self.get_kind(label, LabelKind::Watch)
    }

    /// Like `get`, for a label of another kind (a route, a task's spawn location).
    pub(crate) fn get_kind(&self, label: &str, kind: LabelKind) -> Arc<LabelStats> {
        if label == OTHER_LABEL {
            return self.other.clone();
        }
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is never left half-updated by our code, so keep using it.
        if let Some(stats) = self
            .labels
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(label)
        {
            return stats.clone();
        }
        let mut labels = self
            .labels
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(stats) = labels.get(label) {
            return stats.clone();
        }
        if labels.len() >= self.max_labels {
            self.folded.fetch_add(1, Ordering::Relaxed);
            return self.other.clone();
        }
        let label: Arc<str> = Arc::from(label);
        let stats = Arc::new(LabelStats::new(label.clone(), kind, self.threshold_us));
        labels.insert(label, stats.clone());
        stats
    }

    /// The statistics at `address` (an identity published by a poll in progress), if they are
    /// this registry's. Takes the read lock: for the watchdog, never the hot path.
    #[cfg(feature = "watchdog")]
    pub(crate) fn find(&self, address: usize) -> Option<Arc<LabelStats>> {
        let matches = |stats: &&Arc<LabelStats>| Arc::as_ptr(stats) as usize == address;
        if matches(&&self.other) {
            return Some(self.other.clone());
        }
        self.labels
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .find(matches)
            .cloned()
    }

    /// A snapshot of every label (and `<other>` if it saw anything), unsorted.
    pub(crate) fn snapshot(&self, reset: bool) -> (Vec<Entry>, u64) {
        let labels: Vec<Arc<LabelStats>> = self
            .labels
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        let mut entries: Vec<Entry> = labels.iter().map(|stats| stats.snapshot(reset)).collect();
        let other = self.other.snapshot(reset);
        if !other.is_empty() {
            entries.push(other);
        }
        let folded = if reset {
            self.folded.swap(0, Ordering::Relaxed)
        } else {
            self.folded.load(Ordering::Relaxed)
        };
        (entries, folded)
    }
}
