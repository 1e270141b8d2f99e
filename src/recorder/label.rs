//! One label's statistics: a storage per thread slot, summed by a report.
//!
//! Every counter is cumulative and written by one thread (see `super::thread`), so a poll costs
//! plain loads and stores on a cache line no other core writes. A report sums the slots and
//! subtracts what the last reset summed (the baseline): each poll lands in exactly one window,
//! whenever it is recorded, without a reset ever writing a counter a thread owns (the idea of
//! tokio-metrics' intervals, which subtract cumulative readings).
//!
//! Memory: a storage is ~820 bytes (64 inline buckets, 20 chunk pointers, 14 counters) plus 256
//! bytes per further power of two its polls reached, allocated once, the first time that thread
//! records that label. So labels x threads that polled them (at most
//! `thread::SLOTS` = 65) x (820 B + 256 B per octave past 64 µs), plus the baseline of each
//! label that was reset (16 bytes per non-empty bucket). 1,024 labels polled from 8 threads under
//! 64 µs: about 7 MiB.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::histogram::{Buckets, PollHistogram, BUCKETS};
use super::thread;
use crate::event::RateLimiter;

/// What made a label: see [the labels guide](crate::docs::labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LabelKind {
    /// A future or stream passed to [`Detector::watch`](crate::Detector::watch).
    Watch,
    /// A request through the HTTP layer, labelled `METHOD /route/{template}`.
    Route,
    /// Every poll of a tokio task, labelled `task FILE:LINE` by its spawn location (needs
    /// `--cfg tokio_unstable` and `Detector::instrument_runtime`).
    Task,
    /// `<other>`: labels beyond `max_labels`, of any kind.
    Other,
}

/// How a watched future ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Cancelled,
    Panicked,
}

/// The counters besides the histogram, in the order `Totals::counters` keeps them.
/// Busy time in clock ticks (converted by a report).
const BUSY: usize = 0;
const SLOW: usize = 1;
const SLOW_BUSY: usize = 2;
const WALL: usize = 3;
const COMPLETED: usize = 4;
const CANCELLED: usize = 5;
const PANICKED: usize = 6;
const REQUESTS: usize = 7;
/// Responses by status class: 1xx .. 5xx.
const RESPONSES: usize = 8;
/// Scheduling delay attributed to this label's polls, in nanoseconds (see `super::delay`).
const INFLICTED: usize = RESPONSES + 5;
const COUNTERS: usize = INFLICTED + 1;

/// One thread slot's counters for one label.
struct Storage {
    buckets: Buckets,
    counters: [AtomicU64; COUNTERS],
}

/// Everything recorded for one label.
pub(crate) struct Label {
    pub(crate) name: Arc<str>,
    /// The first kind to ask for a label wins.
    pub(crate) kind: LabelKind,
    storages: [OnceLock<Box<Storage>>; thread::SLOTS],
    /// The sums the last reset saw; locked by reports only.
    baseline: Mutex<Baseline>,
    /// Rate limiting of the tracing warning.
    pub(crate) warn_limiter: RateLimiter,
}

#[derive(Default)]
struct Baseline {
    /// Non-empty cumulative bucket counts, by index.
    buckets: Vec<(u16, u64)>,
    counters: [u64; COUNTERS],
}

/// A label's figures over one window, as a report takes them.
pub(crate) struct LabelSnapshot {
    pub(crate) name: Arc<str>,
    pub(crate) kind: LabelKind,
    pub(crate) histogram: PollHistogram,
    pub(crate) busy_ns: u64,
    pub(crate) slow_polls: u64,
    pub(crate) slow_busy_ns: u64,
    pub(crate) wall_ns: u64,
    pub(crate) completed: u64,
    pub(crate) cancelled: u64,
    pub(crate) panicked: u64,
    pub(crate) requests: u64,
    /// 1xx .. 5xx.
    pub(crate) responses: [u64; 5],
    pub(crate) inflicted_ns: u64,
}

/// Adds to a counter: a plain load and store where this thread owns the slot, an atomic add in
/// the shared one. Wrapping: the counters are cumulative and only ever subtracted.
#[inline(always)]
fn add(counter: &AtomicU64, value: u64, exclusive: bool) {
    if exclusive {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(value),
            Ordering::Relaxed,
        );
    } else {
        counter.fetch_add(value, Ordering::Relaxed);
    }
}

/// The current thread's storage of a label: what the hot path writes.
pub(crate) struct Writer<'a> {
    storage: &'a Storage,
    exclusive: bool,
}

impl Writer<'_> {
    /// One poll of `poll_us` microseconds, `poll_ticks` clock ticks: its bucket and its busy
    /// time.
    #[inline(always)]
    pub(crate) fn poll(&self, poll_us: u64, poll_ticks: u64) {
        add(self.storage.buckets.counter(poll_us), 1, self.exclusive);
        add(&self.storage.counters[BUSY], poll_ticks, self.exclusive);
    }

    /// A poll over the threshold (besides `poll`).
    pub(crate) fn slow_poll(&self, poll_ns: u64) {
        add(&self.storage.counters[SLOW], 1, self.exclusive);
        add(&self.storage.counters[SLOW_BUSY], poll_ns, self.exclusive);
    }

    /// How a watched future ended, and how long it lived since its first poll.
    pub(crate) fn end(&self, outcome: Outcome, wall_ns: u64) {
        add(&self.storage.counters[WALL], wall_ns, self.exclusive);
        let counter = match outcome {
            Outcome::Completed => COMPLETED,
            Outcome::Cancelled => CANCELLED,
            Outcome::Panicked => PANICKED,
        };
        add(&self.storage.counters[counter], 1, self.exclusive);
    }

    /// Scheduling delay the label's polls caused (attributed later, off the hot path).
    pub(crate) fn inflicted(&self, delay_ns: u64) {
        add(&self.storage.counters[INFLICTED], delay_ns, self.exclusive);
    }

    /// One request (the HTTP layer).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn request(&self) {
        add(&self.storage.counters[REQUESTS], 1, self.exclusive);
    }

    /// One response, by status class (the HTTP layer).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        add(&self.storage.counters[RESPONSES + class], 1, self.exclusive);
    }
}

impl Label {
    pub(crate) fn new(name: Arc<str>, kind: LabelKind) -> Self {
        Self {
            name,
            kind,
            storages: std::array::from_fn(|_| OnceLock::new()),
            baseline: Mutex::new(Baseline::default()),
            warn_limiter: RateLimiter::default(),
        }
    }

    /// The current thread's storage, made the first time this thread records this label.
    #[inline]
    pub(crate) fn writer(&self) -> Writer<'_> {
        let (index, exclusive) = thread::current();
        // `index` < SLOTS by construction; `get` keeps the hot path free of a panic path anyway.
        let slot = match self.storages.get(index) {
            Some(slot) => slot,
            None => &self.storages[thread::SHARED],
        };
        let storage = match slot.get() {
            Some(storage) => storage,
            None => Self::make(slot),
        };
        Writer { storage, exclusive }
    }

    #[cold]
    #[inline(never)]
    fn make(slot: &OnceLock<Box<Storage>>) -> &Storage {
        slot.get_or_init(|| {
            Box::new(Storage {
                buckets: Buckets::new(),
                counters: std::array::from_fn(|_| AtomicU64::new(0)),
            })
        })
    }

    /// The label's figures since the last reset; with `reset`, a new window starts. `scratch`
    /// is reused between labels so a report allocates no bucket array per label.
    pub(crate) fn snapshot(
        &self,
        reset: bool,
        ticks: super::Ticks,
        scratch: &mut [u64; BUCKETS],
    ) -> LabelSnapshot {
        scratch.fill(0);
        let mut counters = [0u64; COUNTERS];
        for storage in self.storages.iter().filter_map(OnceLock::get) {
            storage.buckets.add_to(scratch);
            for (sum, counter) in counters.iter_mut().zip(&storage.counters) {
                *sum = sum.wrapping_add(counter.load(Ordering::Relaxed));
            }
        }
        // A poisoned baseline only means a report panicked; the numbers in it are whole.
        let mut baseline = self
            .baseline
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut window = counters;
        for (value, seen) in window.iter_mut().zip(&baseline.counters) {
            *value = value.wrapping_sub(*seen);
        }
        if reset {
            baseline.counters = counters;
        }
        for &(index, seen) in &baseline.buckets {
            let count = &mut scratch[usize::from(index)];
            *count = count.wrapping_sub(seen);
        }
        let histogram = PollHistogram::from_counts(scratch);
        if reset {
            // The new baseline is the old one plus this window.
            let mut cumulative = std::mem::take(&mut baseline.buckets);
            for bucket in histogram.raw() {
                match cumulative.binary_search_by_key(&bucket.0, |&(index, _)| index) {
                    Ok(at) => cumulative[at].1 = cumulative[at].1.wrapping_add(bucket.1),
                    Err(at) => cumulative.insert(at, *bucket),
                }
            }
            baseline.buckets = cumulative;
        }
        drop(baseline);
        LabelSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            histogram,
            busy_ns: ticks.ns(window[BUSY]),
            slow_polls: window[SLOW],
            slow_busy_ns: window[SLOW_BUSY],
            wall_ns: window[WALL],
            completed: window[COMPLETED],
            cancelled: window[CANCELLED],
            panicked: window[PANICKED],
            requests: window[REQUESTS],
            responses: [
                window[RESPONSES],
                window[RESPONSES + 1],
                window[RESPONSES + 2],
                window[RESPONSES + 3],
                window[RESPONSES + 4],
            ],
            inflicted_ns: window[INFLICTED],
        }
    }

    /// Heap bytes this label holds (for the memory tests and docs).
    #[allow(dead_code)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.storages
            .iter()
            .filter_map(OnceLock::get)
            .map(|storage| std::mem::size_of::<Storage>() + storage.buckets.heap_bytes())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_split_counts_exactly_under_concurrent_writers() {
        let label = Arc::new(Label::new(Arc::from("x"), LabelKind::Watch));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|thread| {
                let label = label.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut written = 0u64;
                    while !stop.load(Ordering::Relaxed) || written < 1_000 {
                        let writer = label.writer();
                        writer.poll(thread * 40_000 + written % 3_000, 1);
                        writer.end(Outcome::Completed, 1);
                        written += 1;
                    }
                    written
                })
            })
            .collect();
        let mut scratch = [0u64; BUCKETS];
        let ticks = super::super::Ticks::of(&quanta::Clock::new());
        let mut seen = 0u64;
        let mut completed = 0u64;
        for _ in 0..200 {
            let window = label.snapshot(true, ticks, &mut scratch);
            seen += window.histogram.len();
            completed += window.completed;
        }
        stop.store(true, Ordering::Relaxed);
        let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        let last = label.snapshot(true, ticks, &mut scratch);
        seen += last.histogram.len();
        completed += last.completed;
        assert_eq!(seen, written, "every poll in exactly one window");
        assert_eq!(completed, written);
        assert!(label
            .snapshot(false, ticks, &mut scratch)
            .histogram
            .is_empty());
    }
}
