//! The recorder: the state every subsystem shares (clock, threshold, label registry, per-thread
//! storage, slow-poll policy) and the one function that accounts a poll.
//!
//! Data flows one way: a poll is recorded here (`poll`), into storage only its own thread
//! writes (`label`, `thread`); a report takes a [`Snapshot`] (`Recorder::snapshot`), which
//! `crate::report` turns into a `Report` for the renderers. This module imports nothing of the
//! crate but `event` (what a slow poll tells the user).
//!
//! - `histogram`: log-linear buckets, per-thread counters and the report's [`PollHistogram`];
//! - `thread`: which storage slot a thread writes;
//! - `label`: one label's per-thread storage and its windows;
//! - `registry`: label -> statistics, bounded by `max_labels`, labels capped in length;
//! - `poll`: the poll path shared by futures, streams, response bodies and task hooks;
//! - `delay`: who held the workers while the lag probe waited (the delay each label inflicts);
//! - `slot` (feature `watchdog`): each thread's poll in flight, published for the watchdog.

mod delay;
mod histogram;
mod label;
mod poll;
mod registry;
#[cfg(feature = "watchdog")]
pub(crate) mod slot;
mod thread;

use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(all(test, tokio_unstable))]
use std::sync::Arc;
use std::time::Duration;

#[cfg_attr(not(feature = "watchdog"), allow(unused_imports))]
pub(crate) use delay::Held;
#[cfg_attr(not(feature = "cli"), allow(unused_imports))]
pub(crate) use histogram::{clamp_us, index_of, BUCKETS, HIGHEST_US, LOWEST_US};
pub use histogram::{Bucket, PollHistogram};
pub use label::LabelKind;
pub(crate) use label::{Label, LabelSnapshot, Outcome, Writer};
#[cfg_attr(not(tokio_unstable), allow(unused_imports))]
pub(crate) use poll::{Own, Started};
pub(crate) use registry::Registry;
pub use registry::{CUT_MARKER, MAX_LABEL_BYTES, OTHER_LABEL};

use crate::event::{HogEvent, HogKind, OnHog};

/// What the recorder is built with.
pub(crate) struct Config {
    pub(crate) threshold: Duration,
    pub(crate) max_labels: usize,
    pub(crate) warn_interval: Duration,
    pub(crate) on_hog: Option<OnHog>,
    /// The watchdog's id in the thread slots; 0 without a watchdog.
    pub(crate) watchdog_id: u64,
}

/// Clock ticks to time, with factors worked out once: the hot path measures a poll in raw ticks
/// (`quanta`'s TSC reading), buckets it with one multiplication by a constant shift, and adds
/// ticks to the busy counter; a report converts the sums.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticks {
    /// Nanoseconds per 2^32 ticks.
    ns_per_2_32: u64,
    /// Microseconds per 2^32 ticks.
    us_per_2_32: u64,
}

impl Ticks {
    fn of(clock: &quanta::Clock) -> Self {
        // quanta's conversion is linear (ticks times a factor, shifted): read its factor off a
        // large delta, precise to better than one part in a million.
        let ns_per_2_32 = clock.delta_as_nanos(0, 1 << 32).max(1);
        Self {
            ns_per_2_32,
            us_per_2_32: (ns_per_2_32 / 1_000).max(1),
        }
    }

    #[inline(always)]
    pub(crate) fn ns(self, ticks: u64) -> u64 {
        saturating_u64((u128::from(ticks) * u128::from(self.ns_per_2_32)) >> 32)
    }

    #[inline(always)]
    pub(crate) fn us(self, ticks: u64) -> u64 {
        saturating_u64((u128::from(ticks) * u128::from(self.us_per_2_32)) >> 32)
    }

    /// The ticks of `ns` nanoseconds (rounded down).
    pub(crate) fn of_ns(self, ns: u64) -> u64 {
        saturating_u64((u128::from(ns) << 32) / u128::from(self.ns_per_2_32))
    }
}

/// What every watched future, the task hooks and the watchdog share.
pub(crate) struct Recorder {
    pub(crate) clock: quanta::Clock,
    pub(crate) ticks: Ticks,
    /// A poll longer than this many ticks is slow (`threshold_ns` in ticks).
    pub(crate) threshold_ticks: u64,
    pub(crate) threshold_ns: u64,
    pub(crate) threshold_us: u64,
    pub(crate) warn_interval_ns: u64,
    pub(crate) registry: Registry,
    pub(crate) on_hog: Option<OnHog>,
    /// The watchdog's id in the thread slots; 0 without a watchdog (the hot path's one branch).
    #[cfg_attr(not(feature = "watchdog"), allow(dead_code))]
    pub(crate) watchdog_id: u64,
    /// Clock reading at the start of the current report window.
    window_start: AtomicU64,
    /// Who held the workers while the lag probe waited.
    delays: delay::Delays,
    /// How long after it ended a late interval is attributed, in ticks.
    grace_ticks: u64,
}

/// Every label's figures over one window.
pub(crate) struct Snapshot {
    pub(crate) labels: Vec<LabelSnapshot>,
    pub(crate) folded: u64,
    pub(crate) window_us: u64,
    /// The lag probe's delay over the window, and the part nobody was holding a worker for.
    pub(crate) delay_us: u64,
    pub(crate) unattributed_delay_us: u64,
}

/// A duration in whole units that never overflows.
pub(crate) fn saturating_u64(value: u128) -> u64 {
    value.try_into().unwrap_or(u64::MAX)
}

impl Recorder {
    pub(crate) fn new(config: Config) -> Self {
        let clock = quanta::Clock::new();
        let ticks = Ticks::of(&clock);
        let threshold_ns = saturating_u64(config.threshold.as_nanos());
        Self {
            window_start: AtomicU64::new(clock.raw()),
            clock,
            ticks,
            threshold_ticks: ticks.of_ns(threshold_ns),
            threshold_ns,
            threshold_us: saturating_u64(config.threshold.as_micros()),
            warn_interval_ns: saturating_u64(config.warn_interval.as_nanos()),
            registry: Registry::new(config.max_labels),
            on_hog: config.on_hog,
            watchdog_id: config.watchdog_id,
            delays: delay::Delays::new(),
            grace_ticks: ticks.of_ns(delay::grace_ns(threshold_ns)),
        }
    }

    /// `label`'s poll or stall held a thread over `held` (a slow poll's end, the watchdog's
    /// samples of a stall): what the lag probe's delays are attributed to.
    #[cfg_attr(not(feature = "watchdog"), allow(dead_code))]
    pub(crate) fn held(&self, held: Held) {
        self.delays.held(held);
    }

    /// The lag probe should have run at `from_raw` and ran at `to_raw`, on the current thread (one
    /// of its runtime's): more than a threshold late, that is a delay to attribute (a smaller one
    /// is the timer's granularity).
    pub(crate) fn probe_woke(&self, from_raw: u64, to_raw: u64) {
        self.delays.probe_ran_on(thread::current().0 as u64);
        if to_raw.saturating_sub(from_raw) > self.threshold_ticks {
            self.delays.late((from_raw, to_raw));
        }
    }

    /// Attributes the lag probe's delays that are old enough (see `delay`), to the labels that
    /// held the workers meanwhile. Off the hot path: the probe's wake-ups and reports.
    pub(crate) fn attribute_delays(&self) {
        let now = self.clock.raw();
        self.delays
            .attribute(now, self.grace_ticks, self.ticks, |address, delay_ns| {
                if let Some(label) = self.registry.find(address) {
                    label.writer().inflicted(delay_ns);
                }
            });
    }

    /// The slow path of a poll that took longer than the threshold: count it, tell the callback,
    /// and warn (rate limited per label).
    #[cold]
    #[inline(never)]
    pub(crate) fn on_slow_poll(
        &self,
        label: &Label,
        writer: &Writer<'_>,
        poll_ns: u64,
        now_raw: u64,
    ) {
        writer.slow_poll(poll_ns);
        self.delays.held(Held {
            label: std::ptr::from_ref(label) as usize,
            thread: thread::current().0 as u64,
            start_raw: now_raw.saturating_sub(self.ticks.of_ns(poll_ns)),
            end_raw: now_raw,
        });
        if let Some(callback) = &self.on_hog {
            crate::event::call_on_hog(
                callback,
                &HogEvent {
                    kind: HogKind::SlowPoll,
                    label: label.name.clone(),
                    duration: Duration::from_nanos(poll_ns),
                    threshold: Duration::from_nanos(self.threshold_ns),
                    thread: None,
                    stack: Vec::new(),
                    culprit: None,
                },
            );
        }
        let now_ns = self.clock.delta_as_nanos(0, now_raw);
        if let Some(suppressed) = label
            .warn_limiter
            .try_acquire(now_ns, self.warn_interval_ns)
        {
            tracing::warn!(
                target: "hogwatch",
                label = %label.name,
                poll_us = poll_ns / 1_000,
                threshold_us = self.threshold_us,
                suppressed,
                "a poll blocked the executor for {:.1} ms",
                poll_ns as f64 / 1e6,
            );
        }
    }

    /// Every label's figures since the window started; with `reset`, a new one starts. Nothing
    /// recorded meanwhile is lost or counted twice.
    pub(crate) fn snapshot(&self, reset: bool) -> Snapshot {
        self.attribute_delays();
        let now = self.clock.raw();
        let start = if reset {
            self.window_start.swap(now, Ordering::Relaxed)
        } else {
            self.window_start.load(Ordering::Relaxed)
        };
        let (labels, folded) = self.registry.snapshot(reset, self.ticks);
        let delay = self.delays.window(reset);
        Snapshot {
            labels,
            folded,
            window_us: self.clock.delta_as_nanos(start, now) / 1_000,
            delay_us: delay.delay_ns / 1_000,
            unattributed_delay_us: delay.unattributed_ns / 1_000,
        }
    }
}

/// A recorder with a 10 ms threshold, for unit tests.
#[cfg(all(test, tokio_unstable))]
pub(crate) fn for_tests() -> Arc<Recorder> {
    Arc::new(Recorder::new(Config {
        threshold: Duration::from_millis(10),
        max_labels: 1024,
        warn_interval: Duration::from_secs(1),
        on_hog: None,
        watchdog_id: 0,
    }))
}
