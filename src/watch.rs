//! The watched future: the hot path. Every poll reads the clock twice, adds one to a relaxed
//! atomic histogram counter and keeps a few plain numbers of its own; anything more happens only
//! when a poll was over the threshold.
//!
//! Busy time is handed to the label in batches: a future keeps what its polls spent and adds it
//! to the label's counter once it reaches `BUSY_FLUSH_NS`, after a slow poll, and when it ends.
//! That saves a contended atomic add per poll; the report's busy time lags by at most
//! `BUSY_FLUSH_NS` per future still in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::detector::Shared;
use crate::stats::{LabelStats, Outcome};

/// How much busy time a watched future keeps before adding it to its label (1 ms).
const BUSY_FLUSH_NS: u64 = 1_000_000;

/// What happened to one watched future so far: its own polls, not its label's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FutureTiming {
    /// Polls so far.
    pub polls: u64,
    /// Time spent inside polls.
    pub busy: Duration,
    /// The longest poll.
    pub longest_poll: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Ended,
}

pin_project! {
    /// A future whose polls are timed and recorded; made by
    /// [`Detector::watch`](crate::Detector::watch).
    #[must_use = "futures do nothing unless polled"]
    pub struct Watched<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        stats: Arc<LabelStats>,
        // Clock reading at the first poll (0: not polled yet).
        first_poll_raw: u64,
        polls: u64,
        busy_ns: u64,
        // Busy time not yet added to the label.
        unflushed_busy_ns: u64,
        longest_ns: u64,
        state: State,
    }

    impl<F> PinnedDrop for Watched<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.state == State::Pending {
                let wall = wall_ns(this.shared, *this.first_poll_raw);
                this.stats.record_end(Outcome::Cancelled, wall, *this.unflushed_busy_ns);
            }
        }
    }
}

fn wall_ns(shared: &Shared, first_poll_raw: u64) -> u64 {
    if first_poll_raw == 0 {
        return 0;
    }
    shared
        .clock
        .delta_as_nanos(first_poll_raw, shared.clock.raw())
}

impl<F> Watched<F> {
    pub(crate) fn new(inner: F, shared: Arc<Shared>, stats: Arc<LabelStats>) -> Self {
        Self {
            inner,
            shared,
            stats,
            first_poll_raw: 0,
            polls: 0,
            busy_ns: 0,
            unflushed_busy_ns: 0,
            longest_ns: 0,
            state: State::Pending,
        }
    }

    /// This future's own polls so far (used for the `Server-Timing` header).
    pub fn timing(&self) -> FutureTiming {
        FutureTiming {
            polls: self.polls,
            busy: Duration::from_nanos(self.busy_ns),
            longest_poll: Duration::from_nanos(self.longest_ns),
        }
    }

    /// The label this future is recorded under (`<other>` if it was folded).
    pub fn label(&self) -> &str {
        &self.stats.label
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn stats(&self) -> &LabelStats {
        &self.stats
    }
}

/// Records the poll if it unwinds: the poll counts, and the future counts as panicked.
struct UnwindGuard<'a> {
    shared: &'a Shared,
    stats: &'a LabelStats,
    start_raw: u64,
    first_poll_raw: u64,
    unflushed_busy_ns: u64,
    state: &'a mut State,
    armed: bool,
}

impl Drop for UnwindGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let end = self.shared.clock.raw();
        let poll_ns = self.shared.clock.delta_as_nanos(self.start_raw, end);
        self.stats.record_poll(poll_ns);
        if poll_ns > self.shared.threshold_ns {
            self.shared.on_slow_poll(self.stats, poll_ns, end);
        }
        let wall = self.shared.clock.delta_as_nanos(self.first_poll_raw, end);
        self.stats.record_end(
            Outcome::Panicked,
            wall,
            self.unflushed_busy_ns.saturating_add(poll_ns),
        );
        *self.state = State::Ended;
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let shared: &Shared = this.shared;
        let stats: &LabelStats = this.stats;
        let start = shared.clock.raw();
        let in_poll = crate::watchdog::InPoll::enter(shared, stats, start);
        if *this.first_poll_raw == 0 {
            *this.first_poll_raw = start;
        }
        let mut guard = UnwindGuard {
            shared,
            stats,
            start_raw: start,
            first_poll_raw: *this.first_poll_raw,
            unflushed_busy_ns: *this.unflushed_busy_ns,
            state: &mut *this.state,
            armed: true,
        };
        let result = this.inner.poll(cx);
        // The poll returned normally: the guard has nothing to record.
        guard.armed = false;
        drop(guard);
        in_poll.exit();
        let end = shared.clock.raw();
        let poll_ns = shared.clock.delta_as_nanos(start, end);
        stats.record_poll(poll_ns);
        *this.polls += 1;
        *this.busy_ns = this.busy_ns.saturating_add(poll_ns);
        *this.unflushed_busy_ns = this.unflushed_busy_ns.saturating_add(poll_ns);
        *this.longest_ns = (*this.longest_ns).max(poll_ns);
        if poll_ns > shared.threshold_ns {
            shared.on_slow_poll(stats, poll_ns, end);
        }
        if result.is_ready() {
            let wall = shared.clock.delta_as_nanos(*this.first_poll_raw, end);
            stats.record_end(Outcome::Completed, wall, *this.unflushed_busy_ns);
            *this.unflushed_busy_ns = 0;
            *this.state = State::Ended;
        } else if *this.unflushed_busy_ns >= BUSY_FLUSH_NS {
            stats.add_busy(std::mem::take(this.unflushed_busy_ns));
        }
        result
    }
}
