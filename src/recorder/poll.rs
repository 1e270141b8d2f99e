//! The one poll path. [`Recorder::begin`] and [`Recorder::end`] bracket a poll: the clock,
//! the watchdog's publication, the histogram and busy time, and the slow-poll policy.
//! [`Recorder::poll`] runs a poll between them and records a panic that unwinds out of it;
//! watched futures, streams and response bodies use it, tokio's task hooks (separate before-
//! and after-calls) use `begin` and `end` directly.

use super::{Label, Outcome, Recorder};

/// A poll in progress: when it started, and what the thread published for the watchdog before.
#[must_use]
pub(crate) struct Started {
    start_raw: u64,
    #[cfg(feature = "watchdog")]
    previous: Option<super::slot::Published>,
}

impl Started {
    /// Nothing in progress (for a hook whose before-call did not run).
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    pub(crate) const NONE: Self = Self {
        start_raw: 0,
        #[cfg(feature = "watchdog")]
        previous: None,
    };

    /// Ends the watchdog's publication of this poll, restoring what was published before.
    #[inline(always)]
    fn unpublish(&mut self) {
        #[cfg(feature = "watchdog")]
        if let Some(previous) = self.previous.take() {
            super::slot::poll_ended(previous);
        }
    }

    /// Ends the publication without recording the poll (it was not ours to record).
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    pub(crate) fn abandon(mut self) {
        self.unpublish();
    }
}

/// What one watched future, stream or body knows of its own polls.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Own {
    /// Clock reading at the first poll (0: not polled yet).
    pub(crate) first_poll_raw: u64,
    pub(crate) polls: u64,
    /// Time in polls, in clock ticks.
    pub(crate) busy_ticks: u64,
    /// The longest poll, in clock ticks.
    pub(crate) longest_ticks: u64,
    /// Its end (completed, cancelled, panicked) is recorded, or is not its to record.
    pub(crate) ended: bool,
}

impl Own {
    /// Nothing to end: a response body, whose request was counted when its future ended.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) const NOT_ENDING: Self = Self {
        first_poll_raw: 0,
        polls: 0,
        busy_ticks: 0,
        longest_ticks: 0,
        ended: true,
    };

    /// Records how it ended (once).
    pub(crate) fn end(&mut self, recorder: &Recorder, label: &Label, outcome: Outcome) {
        if self.ended {
            return;
        }
        self.ended = true;
        let wall = if self.first_poll_raw == 0 {
            0
        } else {
            recorder
                .clock
                .delta_as_nanos(self.first_poll_raw, recorder.clock.raw())
        };
        label.writer().end(outcome, wall);
    }
}

impl Recorder {
    /// A poll of `label` starts on this thread: read the clock, and publish it for the watchdog
    /// (one branch without one).
    #[inline(always)]
    pub(crate) fn begin(&self, label: &Label) -> Started {
        let start_raw = self.clock.raw();
        #[cfg(feature = "watchdog")]
        let previous = if self.watchdog_id == 0 {
            None
        } else {
            super::slot::poll_started(
                self.watchdog_id,
                std::ptr::from_ref(label) as usize,
                start_raw,
            )
        };
        #[cfg(not(feature = "watchdog"))]
        let _ = label;
        Started {
            start_raw,
            #[cfg(feature = "watchdog")]
            previous,
        }
    }

    /// The poll `started` ended: end its publication first (nothing below can then leave it
    /// published), record it, and run the slow-poll policy. Returns its duration in ticks.
    #[inline(always)]
    pub(crate) fn end(&self, label: &Label, mut started: Started) -> u64 {
        started.unpublish();
        let end_raw = self.clock.raw();
        // A reading behind the start (another core's counter, a few ticks off) is a zero poll.
        let poll_ticks = end_raw.saturating_sub(started.start_raw);
        let writer = label.writer();
        writer.poll(self.ticks.us(poll_ticks), poll_ticks);
        if poll_ticks > self.threshold_ticks && !offloaded(started.start_raw) {
            self.on_slow_poll(label, &writer, self.ticks.ns(poll_ticks), end_raw);
        }
        poll_ticks
    }

    /// Runs `poll`, one poll of a watched thing whose own figures are `own`, and records it
    /// under `label`. If `poll` unwinds, the poll is recorded and the thing counted as panicked
    /// (unless `own` says its end is not its own), and the panic goes on unchanged.
    #[inline(always)]
    pub(crate) fn poll<R>(&self, label: &Label, own: &mut Own, poll: impl FnOnce() -> R) -> R {
        let started = self.begin(label);
        if own.first_poll_raw == 0 {
            own.first_poll_raw = started.start_raw;
        }
        let mut guard = Unwind {
            recorder: self,
            label,
            own,
            started: Some(started),
        };
        let output = poll();
        let started = guard.started.take();
        let own = &mut *guard.own;
        if let Some(started) = started {
            let poll_ticks = self.end(label, started);
            own.polls += 1;
            own.busy_ticks = own.busy_ticks.saturating_add(poll_ticks);
            own.longest_ticks = own.longest_ticks.max(poll_ticks);
        }
        output
    }
}

/// Records the poll if it unwinds.
struct Unwind<'a> {
    recorder: &'a Recorder,
    label: &'a Label,
    own: &'a mut Own,
    started: Option<Started>,
}

impl Drop for Unwind<'_> {
    /// Inlined so that the normal path (nothing to do: `poll` took `started`) is one branch.
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(started) = self.started.take() {
            self.unwinding(started);
        }
    }
}

impl Unwind<'_> {
    #[cold]
    #[inline(never)]
    fn unwinding(&mut self, started: Started) {
        let poll_ticks = self.recorder.end(self.label, started);
        self.own.polls += 1;
        self.own.busy_ticks = self.own.busy_ticks.saturating_add(poll_ticks);
        self.own.end(self.recorder, self.label, Outcome::Panicked);
    }
}

/// Whether the watchdog found the poll that started at `start_raw` on this thread inside
/// `block_in_place`, tokio's sanctioned way to block: it is then no slow poll (asked only of a
/// poll over the threshold). Without the watchdog nobody looks, and it is one.
#[cfg(feature = "watchdog")]
#[cold]
fn offloaded(start_raw: u64) -> bool {
    super::slot::offloaded(start_raw)
}

#[cfg(not(feature = "watchdog"))]
fn offloaded(_start_raw: u64) -> bool {
    false
}
