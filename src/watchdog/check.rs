//! The watchdog thread: every quarter of a threshold it looks at the polls the recorder
//! publishes and at the watched runtimes' workers (`sampler`), samples the stalled ones (cause,
//! CPU time, stack) within its budget, and reports them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::event::{HogEvent, HogKind};
use crate::recorder::slot::{self, Published};
use crate::recorder::Recorder;

#[cfg(target_os = "linux")]
use super::namer::{Job, Namer};
#[cfg(not(target_os = "linux"))]
use super::table::NO_STACK;
use super::table::{warn_stall, Watchdog};
#[cfg(target_os = "linux")]
use super::{activity, scan, signal};
use super::{sampler, stalls};

/// The watchdog thread; stops (promptly) and is joined when dropped.
pub(crate) struct WatchdogThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// The process the thread runs in: a `fork()` child has a copy of this handle, not the thread.
    pid: u32,
}

impl WatchdogThread {
    /// Starts the thread that watches `recorder`'s polls (and, on Linux, the thread that names
    /// the stacks it captures).
    pub(crate) fn spawn(recorder: Arc<Recorder>, watchdog: Arc<Watchdog>) -> std::io::Result<Self> {
        // The program's symbol table, read here on the caller's thread (milliseconds, at
        // `build()`): the watchdog thread never waits for it (see `in_block_in_place`).
        #[cfg(target_os = "linux")]
        super::symbols::symbol_table();
        #[cfg(target_os = "linux")]
        let namer = Namer::spawn(watchdog.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let checker = Checker {
            workers: sampler::Sampler::new(watchdog.runtimes.clone()),
            recorder,
            watchdog,
            stalled: HashMap::new(),
            budget: Budget::default(),
            #[cfg(target_os = "linux")]
            activity: activity::Reader::default(),
            #[cfg(target_os = "linux")]
            scanner: scan::Scanner::default(),
            #[cfg(target_os = "linux")]
            namer,
            #[cfg(target_os = "linux")]
            reinstalled: signal::reinstalled(),
        };
        let handle = std::thread::Builder::new()
            .name("hogwatch-watchdog".to_string())
            .spawn(move || checker.run(&flag))?;
        Ok(Self {
            stop,
            handle: Some(handle),
            pid: std::process::id(),
        })
    }
}

impl Drop for WatchdogThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            if std::process::id() != self.pid {
                // A `fork()` child: the thread stayed in the parent. Joining would wait for ever,
                // and even detaching touches the parent's thread record: leave it alone.
                std::mem::forget(handle);
                return;
            }
            handle.thread().unpark();
            // The last detector may be dropped by a callback on the watchdog thread itself:
            // it then sees the flag and ends after the callback returns.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// A poll the watchdog saw stalled, and when to report it again.
struct Stall {
    label: usize,
    start_raw: u64,
    next_report_ns: u64,
    reports: u64,
    seen_in: u64,
    /// Its thread was found inside `block_in_place`: no stall, not sampled again.
    offloaded: bool,
    /// The thread's CPU clock and the watchdog's clock (in ns) at this stall's recent
    /// samples, oldest first: the last one for its CPU time, the oldest (about
    /// [`PREEMPTION_WINDOW`] ago) to tell preemption from a busy machine's usual sharing.
    #[cfg(target_os = "linux")]
    readings: std::collections::VecDeque<(activity::SchedClocks, u64)>,
}

/// The time over which a thread's run-queue wait and CPU time are compared to call it
/// `preempted`: several of the scheduler's time slices, so that a thread that shares a CPU
/// fairly is not called preempted because one short interval fell between its slices.
#[cfg(target_os = "linux")]
const PREEMPTION_WINDOW: Duration = Duration::from_millis(100);

impl Stall {
    fn new(published: Published, threshold_ns: u64, generation: u64) -> Self {
        Self {
            label: published.label,
            start_raw: published.start_raw,
            next_report_ns: threshold_ns,
            reports: 0,
            seen_in: generation,
            offloaded: false,
            #[cfg(target_os = "linux")]
            readings: std::collections::VecDeque::new(),
        }
    }
}

/// Samples per second, at most, for one watchdog (all stalled threads together). A stall is
/// always sampled when it is reported (when first seen, then at 2, 4, 8... times the threshold);
/// the samples in between come out of this budget.
pub(super) const SAMPLES_PER_SECOND: u64 = 100;

/// The sampling budget: credit in nanoseconds, earned with time (up to one second's worth), a
/// sample costing `1 s / SAMPLES_PER_SECOND`.
#[derive(Default)]
struct Budget {
    credit_ns: u64,
    last_ns: u64,
}

impl Budget {
    const COST_NS: u64 = 1_000_000_000 / SAMPLES_PER_SECOND;

    /// Takes one sample's credit if there is enough at `now_ns` (a report always takes it,
    /// going into debt no further than zero).
    fn take(&mut self, now_ns: u64, always: bool) -> bool {
        let earned = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.credit_ns = self.credit_ns.saturating_add(earned).min(1_000_000_000);
        if self.credit_ns >= Self::COST_NS || always {
            self.credit_ns = self.credit_ns.saturating_sub(Self::COST_NS);
            true
        } else {
            false
        }
    }
}

/// The watchdog thread's state.
struct Checker {
    /// Samples the workers of the runtimes `watch_runtime` watches.
    workers: sampler::Sampler,
    recorder: Arc<Recorder>,
    watchdog: Arc<Watchdog>,
    stalled: HashMap<usize, Stall>,
    budget: Budget,
    #[cfg(target_os = "linux")]
    activity: activity::Reader,
    #[cfg(target_os = "linux")]
    scanner: scan::Scanner,
    #[cfg(target_os = "linux")]
    namer: Namer,
    /// `signal::reinstalled()` when last looked at, to warn when it changes.
    #[cfg(target_os = "linux")]
    reinstalled: u64,
}

/// What became of one sample of a stall.
enum Sample {
    /// The stack was captured (by the signal) or read (by a scan).
    #[cfg(target_os = "linux")]
    Stack(signal::RawStack),
    /// No stack, for this reason.
    None(String),
}

/// One sample of a stalled thread.
struct Taken {
    sample: Sample,
    /// What the thread was doing (`None`: it was changing state, or `/proc` is unreadable).
    cause: Option<stalls::Cause>,
    /// The thread's CPU time and the time since the previous sample, if both were read.
    cpu_and_wall_ns: Option<(u64, u64)>,
}

impl Checker {
    /// How often the slots are looked at: every quarter of the threshold (100 µs at the least).
    fn interval(&self) -> Duration {
        Duration::from_nanos(self.watchdog.threshold_ns / 4).max(Duration::from_micros(100))
    }

    /// How long the watchdog thread waits for a stack to be named before it reports the stall
    /// without it (the stack is still named, recorded and warned about when it is ready): a
    /// fraction of the interval between checks, 20 ms at most.
    fn naming_budget(&self) -> Duration {
        (self.interval() / 2).min(Duration::from_millis(20))
    }

    fn run(mut self, stop: &AtomicBool) {
        let interval = self.interval();
        let mut slots = Vec::new();
        let mut generation = 0u64;
        while !stop.load(Ordering::Acquire) {
            std::thread::park_timeout(interval);
            if stop.load(Ordering::Acquire) {
                break;
            }
            generation = generation.wrapping_add(1);
            slot::snapshot(&mut slots);
            for slot in &slots {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                self.check(slot, generation);
            }
            self.stalled.retain(|_, stall| stall.seen_in == generation);
            // Then every watched runtime's workers.
            if !stop.load(Ordering::Acquire) {
                self.workers.check(&self.recorder, &self.watchdog);
            }
        }
    }

    /// Looks at one thread: if its poll has run past the threshold, samples it (within the
    /// budget), and reports it when first seen and again at each doubling (1x, 2x, 4x... the
    /// threshold), so a poll that never returns is reported a few times, not every check.
    fn check(&mut self, slot: &Arc<slot::Slot>, generation: u64) {
        let Some(published) = slot.read() else {
            return;
        };
        if published.detector != self.watchdog.id || published.start_raw == 0 {
            return;
        }
        let now = self.recorder.clock.raw();
        let running_ns = self.recorder.clock.delta_as_nanos(published.start_raw, now);
        let threshold_ns = self.watchdog.threshold_ns;
        if running_ns < threshold_ns {
            return;
        }
        let key = Arc::as_ptr(slot) as usize;
        let stall = self
            .stalled
            .entry(key)
            .or_insert_with(|| Stall::new(published, threshold_ns, generation));
        if stall.label != published.label || stall.start_raw != published.start_raw {
            *stall = Stall::new(published, threshold_ns, generation);
        }
        stall.seen_in = generation;
        if stall.offloaded {
            return;
        }
        let due = running_ns >= stall.next_report_ns;
        while stall.next_report_ns <= running_ns {
            stall.next_report_ns = stall.next_report_ns.saturating_mul(2);
        }
        let first = stall.reports == 0;
        if due {
            stall.reports += 1;
        }
        let now_ns = self.recorder.clock.delta_as_nanos(0, now);
        if !self.budget.take(now_ns, due) {
            self.watchdog.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.sample_and_report(slot, key, published, running_ns, first, due);
    }

    /// Samples one stalled poll (its cause, stack and CPU time) and, if `report`, counts it
    /// (when `first`) and reports it, with its stack if it can be had (and named) now.
    ///
    /// The sample is recorded here, under one lock of the stall table; the naming thread adds
    /// its stack's names under another (see `LabelStalls::record_names`).
    fn sample_and_report(
        &mut self,
        slot: &slot::Slot,
        key: usize,
        published: Published,
        running_ns: u64,
        first: bool,
        report: bool,
    ) {
        let Some(label) = self.recorder.registry.find(published.label) else {
            return;
        };
        let watchdog = self.watchdog.clone();
        let Taken {
            sample,
            cause,
            cpu_and_wall_ns,
        } = self.sample(slot, key, report);
        // Inside `block_in_place`, tokio's sanctioned way to block: the thread handed its
        // worker's queue on and blocks no task. No stall; the recorder is told, so that the poll
        // is no slow poll either when it ends.
        #[cfg(target_os = "linux")]
        if let Sample::Stack(raw) = &sample {
            if in_block_in_place(raw) && slot.read() == Some(published) {
                slot.offload(published.start_raw);
                if let Some(stall) = self.stalled.get_mut(&key) {
                    stall.offloaded = true;
                }
                return;
            }
        }
        // Counted when seen: whatever becomes of its stack, the poll did stall.
        if first && report {
            watchdog.stall_count.fetch_add(1, Ordering::Relaxed);
        }
        watchdog.samples.fetch_add(1, Ordering::Relaxed);
        // The poll may have ended before the stack was taken: it is then someone else's.
        // (Still the same poll now means the handler ran inside it, or inside a poll nested in
        // it, since a thread only comes back to a poll's start reading by returning to it.)
        let sample = match sample {
            #[cfg(target_os = "linux")]
            Sample::Stack(_) if slot.read() != Some(published) => {
                Sample::None("the poll returned before its stack was taken".to_string())
            }
            sample => sample,
        };
        let now_ns = self
            .recorder
            .clock
            .delta_as_nanos(0, self.recorder.clock.raw());
        let record = stalls::Sample {
            first: first && report,
            running_ns,
            cause,
            cpu_and_wall_ns,
            named: None,
        };
        let warn_at = report.then_some((now_ns, self.recorder.warn_interval_ns));
        #[allow(unused_mut)]
        let mut event = HogEvent {
            kind: HogKind::Stall,
            label: label.name.clone(),
            duration: Duration::from_nanos(running_ns),
            threshold: Duration::from_nanos(watchdog.threshold_ns),
            thread: Some(slot.thread_name.clone()),
            stack: Vec::new(),
            culprit: None,
        };
        // Counted here, whatever becomes of the stack: naming may wait (the debug information
        // loading, or, in a `fork()` child, a lock the parent's naming held at the fork).
        let warn = watchdog
            .lock()
            .entry(label.name.clone())
            .or_default()
            .record(&record, warn_at);
        // The reason there is no stack to warn with, if the warning is ours to send.
        let reason = match sample {
            #[cfg(target_os = "linux")]
            Sample::Stack(raw) => {
                let (reply, named) = std::sync::mpsc::channel();
                let job = Job {
                    raw,
                    label: label.name.clone(),
                    // A sample between reports is named and recorded, nobody waits for it.
                    event: report.then(|| (event.clone(), warn)),
                    reply: report.then_some(reply),
                };
                // The naming thread records the names and sends the warning; the event gets
                // the names if they come quickly (no new address to look up).
                if self.namer.send(job) {
                    if !report {
                        return;
                    }
                    if let Ok((stack, culprit)) = named.recv_timeout(self.naming_budget()) {
                        event.stack = stack;
                        event.culprit = culprit;
                    }
                    None
                } else {
                    Some("not named: too many stacks waiting for their names".to_string())
                }
            }
            Sample::None(reason) => Some(reason),
        };
        if !report {
            return;
        }
        if let Some(callback) = &self.recorder.on_hog {
            crate::event::call_on_hog(callback, &event);
        }
        if let (Some(reason), Some(suppressed)) = (reason, warn) {
            warn_stall(&watchdog, &event, suppressed, &reason);
        }
    }

    /// What the stalled thread is doing: its cause, its CPU time since the previous sample of
    /// this stall, and its stack, captured with the signal if it runs its own code, or scanned
    /// if it waits in a system call (which a signal would interrupt).
    ///
    /// A sample between reports waits for the signal's answer no longer than the interval
    /// between checks: a thread the machine hardly runs must not hold up the watchdog's look
    /// at the others (a report waits 250 ms, as it always did).
    #[cfg(target_os = "linux")]
    fn sample(&mut self, slot: &slot::Slot, key: usize, report: bool) -> Taken {
        let Some(target) = slot
            .attachment
            .as_deref()
            .and_then(|attachment| attachment.downcast_ref::<signal::Target>())
        else {
            // Registered before any watchdog existed (cannot happen: only a detector with a
            // watchdog publishes polls); nothing to signal.
            return Taken {
                sample: Sample::None("no signal target".to_string()),
                cause: None,
                cpu_and_wall_ns: None,
            };
        };
        let tid = target.tid();
        let seen = self.activity.read(tid);
        // The thread's clocks now, at the previous sample of this stall, and about
        // PREEMPTION_WINDOW ago.
        let now_ns = self
            .recorder
            .clock
            .delta_as_nanos(0, self.recorder.clock.raw());
        let clocks = self.activity.clocks(tid);
        let (previous, oldest) = match self.stalled.get_mut(&key) {
            Some(stall) => {
                let previous = stall.readings.back().copied();
                let window = PREEMPTION_WINDOW.as_nanos() as u64;
                while stall.readings.len() > 1
                    && stall.readings[1].1.saturating_add(window) <= now_ns
                {
                    stall.readings.pop_front();
                }
                let oldest = stall.readings.front().copied();
                match clocks {
                    Some(clocks) => stall.readings.push_back((clocks, now_ns)),
                    None => stall.readings.clear(),
                }
                (previous, oldest)
            }
            None => (None, None),
        };
        let cpu_and_wall_ns = previous.zip(clocks).map(|((before, then_ns), now)| {
            let wall_ns = now_ns.saturating_sub(then_ns);
            (
                now.cpu_ns.saturating_sub(before.cpu_ns).min(wall_ns),
                wall_ns,
            )
        });
        let preempted = oldest.zip(clocks).is_some_and(|((before, then_ns), now)| {
            stalls::preempted(
                now.cpu_ns.saturating_sub(before.cpu_ns),
                now_ns.saturating_sub(then_ns),
            )
        });
        let taken = |sample, cause| Taken {
            sample,
            cause,
            cpu_and_wall_ns,
        };
        let cause = match seen {
            activity::Activity::Syscall(nr, registers) => {
                let sample = match self.scanner.scan(registers) {
                    Some(raw) => Sample::Stack(raw),
                    None => {
                        let name = activity::syscall_name(nr).unwrap_or("?");
                        Sample::None(format!(
                            "blocked in the system call {name} ({nr}), whose stack could not \
                             be read; not interrupted"
                        ))
                    }
                };
                return taken(sample, Some(stalls::Cause::Syscall(nr)));
            }
            activity::Activity::Unknown => {
                let reason = "going to sleep or waking up; not interrupted for a stack";
                return taken(Sample::None(reason.to_string()), None);
            }
            activity::Activity::User if preempted => Some(stalls::Cause::Preempted),
            activity::Activity::User => Some(stalls::Cause::Cpu),
            // No `/proc`: signal as if it ran its own code (see the guide).
            activity::Activity::Unreadable => None,
        };
        let watchdog = self.watchdog.clone();
        let timeout = match report {
            true => Duration::from_millis(250),
            false => self.interval().min(Duration::from_millis(250)),
        };
        let captured = signal::capture(target, watchdog.signal, timeout);
        // Counted once answered: a thread that has left was asked nothing.
        if !matches!(captured, Err(signal::CaptureError::Gone)) {
            watchdog.requested.fetch_add(1, Ordering::Relaxed);
        }
        self.warn_if_reinstalled();
        match captured {
            Ok(raw) => {
                watchdog.completed.fetch_add(1, Ordering::Relaxed);
                taken(Sample::Stack(raw), cause)
            }
            Err(error) => {
                watchdog.failed.count(&error);
                if error == signal::CaptureError::Displaced {
                    self.warn_displaced();
                }
                taken(Sample::None(error.to_string()), cause)
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sample(&mut self, _slot: &slot::Slot, _key: usize, _report: bool) -> Taken {
        Taken {
            sample: Sample::None(NO_STACK.to_string()),
            cause: None,
            cpu_and_wall_ns: None,
        }
    }

    /// Says once per process that another handler took the watchdog's signal.
    #[cfg(target_os = "linux")]
    fn warn_displaced(&self) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "hogwatch",
                signal = self.watchdog.signal,
                "another handler has replaced the watchdog's on signal {} (a profiler?): stalls \
                 are reported without stacks while it stays; see `Builder::watchdog_signal`",
                self.watchdog.signal,
            );
        }
    }

    /// Says (once per re-installation seen) that the signal's handler had been reset.
    #[cfg(target_os = "linux")]
    fn warn_if_reinstalled(&mut self) {
        let now = signal::reinstalled();
        if now != self.reinstalled {
            self.reinstalled = now;
            tracing::warn!(
                target: "hogwatch",
                signal = self.watchdog.signal,
                "the watchdog's signal {} had been reset to its default action (a profiler \
                 stopping?); hogwatch installed its handler again",
                self.watchdog.signal,
            );
        }
    }
}

/// Whether a stack goes through tokio's `block_in_place` (found by address in the program's
/// symbol table: in a release build where it was inlined into the caller's closure, it is not
/// seen, and the poll is a stall). The table is not waited for: a `fork()` child whose parent
/// was reading it would wait for ever (its watchdog then sees no `block_in_place`).
#[cfg(target_os = "linux")]
fn in_block_in_place(raw: &signal::RawStack) -> bool {
    super::symbols::symbol_table_if_read().is_some_and(|table| {
        raw.ips
            .iter()
            .any(|ip| table.in_block_in_place(ip.saturating_sub(1)))
    })
}
