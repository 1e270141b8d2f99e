//! The watchdog thread's part of the runtime watchdog: samples the busy workers of every
//! watched runtime at each check, and reports the stalls two samples confirm.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::super::activity::{self, Activity};
use super::super::{scan, signal, stalls, symbols, warn_stall, Watchdog};
use super::names::{in_task, task_label, Names};
use super::{target_of, Runtime, Runtimes, Worker};
use crate::event::{HogEvent, HogKind};
use crate::recorder::{LabelKind, Recorder};

/// What one sample of a worker showed, to compare with the next.
#[cfg(target_os = "linux")]
#[derive(Clone, PartialEq, Eq, Debug)]
enum Key {
    /// Running its own code: the tokio task it polls (its id as the signal handler read it; 0
    /// outside a task) and the return addresses from tokio's task harness to the thread's
    /// start, where the scheduler polls the task. The frames above the harness are left out: a
    /// poll on the CPU goes through many functions. Polls of alike tasks have the same
    /// addresses; the task's id tells them apart.
    Stack(u64, Vec<usize>),
    /// In a system call: `/proc/…/syscall` as read (number, arguments, stack and instruction
    /// pointers), and the thread's time slices so far (a thread that never left the call has
    /// had no new one; an identical second call has).
    Syscall(Vec<u8>, u64),
}

#[cfg(target_os = "linux")]
impl Key {
    /// Whether a stall already reported as `self` goes on in a sample that shows `other`: the
    /// same task still polled (a poll on the CPU goes through many functions, whose stacks
    /// differ), or the same system call.
    fn same_stall(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Stack(task, _), Key::Stack(other, _)) if *task != 0 => task == other,
            _ => self == other,
        }
    }
}

/// Another worker of the runtime at a sample, for the busy-time guard (`Sampler::stood_still`).
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
struct Other {
    worker: usize,
    parked: bool,
    unparks: u64,
    cpu_ns: Option<u64>,
}

/// The first sample of a possible stall.
#[cfg(target_os = "linux")]
struct Seen {
    at_raw: u64,
    key: Key,
    stack: Option<signal::RawStack>,
    /// The oldest the poll can be: the worker's unpark if no other poll was seen since, else
    /// the sample before this one.
    earliest_raw: u64,
    /// The runtime's workers' busy times at the sample (empty: not readable).
    busy: Vec<Duration>,
    /// The other workers at the sample.
    others: Vec<Other>,
}

/// How many thresholds a worker whose sample showed no task poll is left alone: a worker
/// running `block_on`'s future or `block_in_place` is not signalled twice per threshold, and one
/// caught between two polls is looked at again soon (a stall there is then confirmed this much
/// later).
#[cfg(target_os = "linux")]
const QUIET_THRESHOLDS: u64 = 2;

/// What the watchdog thread remembers of one worker.
#[cfg(target_os = "linux")]
struct State {
    /// The `running_since` these apply to: a park in between starts over.
    since: u64,
    seen: Option<Seen>,
    /// The stall already reported, so that it is reported once.
    reported: Option<Key>,
    /// A sample showed no task poll (`block_on`'s future, `block_in_place`, the scheduler
    /// between two polls, an idle thread of the blocking pool): the clock reading before which
    /// the thread is left alone (see [`QUIET_THRESHOLDS`]).
    quiet_until: u64,
    generation: u64,
}

#[cfg(target_os = "linux")]
impl State {
    fn new(since: u64, generation: u64) -> Self {
        Self {
            since,
            seen: None,
            reported: None,
            quiet_until: 0,
            generation,
        }
    }
}

/// The watchdog thread's part: samples the watched runtimes' workers each check.
#[cfg(target_os = "linux")]
pub(crate) struct Sampler {
    runtimes: Arc<Runtimes>,
    scratch: Vec<Arc<Runtime>>,
    states: HashMap<usize, State>,
    handles: HashMap<usize, tokio::runtime::Handle>,
    reader: activity::Reader,
    scanner: scan::Scanner,
    names: Names,
    buffer: Vec<u8>,
    generation: u64,
}

#[cfg(not(target_os = "linux"))]
pub(crate) struct Sampler;

#[cfg(not(target_os = "linux"))]
impl Sampler {
    pub(crate) fn new(_runtimes: Arc<Runtimes>) -> Self {
        Sampler
    }

    pub(crate) fn check(&mut self, _: &Recorder, _: &Arc<Watchdog>) {}
}

#[cfg(target_os = "linux")]
impl Sampler {
    pub(crate) fn new(runtimes: Arc<Runtimes>) -> Self {
        Self {
            runtimes,
            scratch: Vec::new(),
            states: HashMap::new(),
            handles: HashMap::new(),
            reader: activity::Reader::default(),
            scanner: scan::Scanner::default(),
            names: Names::new(),
            buffer: Vec::new(),
            generation: 0,
        }
    }

    /// One check of every watched runtime's workers.
    pub(crate) fn check(&mut self, recorder: &Recorder, watchdog: &Arc<Watchdog>) {
        self.generation = self.generation.wrapping_add(1);
        let mut runtimes = std::mem::take(&mut self.scratch);
        self.runtimes.snapshot(&mut runtimes);
        for runtime in &runtimes {
            let key = runtime.key();
            if let Some(handle) = runtime
                .handle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
            {
                self.handles.insert(key, handle);
            }
            let workers: Vec<Arc<Worker>> = runtime
                .workers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            if workers
                .iter()
                .all(|worker| worker.gone.load(Ordering::Acquire))
            {
                // A stopped runtime: let its handle go.
                self.handles.remove(&key);
            }
            for worker in &workers {
                self.check_worker(recorder, watchdog, key, worker, &workers);
            }
        }
        runtimes.clear();
        self.scratch = runtimes;
        let generation = self.generation;
        self.states
            .retain(|_, state| state.generation == generation);
    }

    fn check_worker(
        &mut self,
        recorder: &Recorder,
        watchdog: &Arc<Watchdog>,
        runtime: usize,
        worker: &Arc<Worker>,
        workers: &[Arc<Worker>],
    ) {
        if worker.gone.load(Ordering::Acquire) {
            return;
        }
        let since = worker.running_since.load(Ordering::Acquire);
        let threshold_ns = watchdog.threshold_ns;
        let now = recorder.clock.raw();
        // Sampled from half a threshold on; a stall needs a whole one (see `confirmed`).
        let busy_ns = match since {
            0 => 0,
            since => recorder.clock.delta_as_nanos(since, now),
        };
        if busy_ns < threshold_ns / 2 {
            return;
        }
        let id = Arc::as_ptr(worker) as usize;
        let generation = self.generation;
        let state = self
            .states
            .entry(id)
            .or_insert_with(|| State::new(since, generation));
        state.generation = generation;
        if state.since != since {
            *state = State::new(since, generation);
        }
        if now < state.quiet_until {
            return;
        }
        // A watched poll in progress on this thread (`watch`, the layer, the task hooks): that
        // path reports it under its own label.
        if let Some(published) = worker.slot.read() {
            if published.detector == watchdog.id && published.start_raw != 0 {
                state.seen = None;
                return;
            }
        }
        if let Some(seen) = &state.seen {
            if recorder.clock.delta_as_nanos(seen.at_raw, now) < threshold_ns / 2 {
                return;
            }
        }
        let seen_key = state.seen.as_ref().map(|seen| seen.key.clone());
        let Some(target) = target_of(&worker.slot) else {
            return;
        };
        let busy = busy_times(self.handles.get(&runtime));
        let others = self.others(worker, workers);
        let (key, stack, cause) = match self.reader.read(worker.tid) {
            Activity::User => {
                watchdog.requested.fetch_add(1, Ordering::Relaxed);
                match signal::capture(target, watchdog.signal, Duration::from_millis(250)) {
                    Ok(raw) => {
                        watchdog.completed.fetch_add(1, Ordering::Relaxed);
                        // The key is made below, from the names.
                        (
                            Key::Stack(raw.task, Vec::new()),
                            Some(raw),
                            Some(stalls::Cause::Cpu),
                        )
                    }
                    Err(error) => {
                        watchdog.failed.count(&error);
                        return;
                    }
                }
            }
            // Never signalled (the call could fail with `EINTR`): its stack is scanned, once
            // per call it waits in.
            Activity::Syscall(nr, registers) => {
                let Some(key) = syscall_key(&mut self.buffer, worker.tid) else {
                    return;
                };
                let stack = match seen_key.as_ref() == Some(&key) {
                    true => None,
                    false => self.scanner.scan_checked(registers, self.names.table()),
                };
                (key, stack, Some(stalls::Cause::Syscall(nr)))
            }
            Activity::Unknown | Activity::Unreadable => return,
        };
        let mut key = key;
        let in_task = match &stack {
            Some(raw) => match self.names.frames_to_harness(raw) {
                Some(named) => {
                    if let (Key::Stack(_, addresses), Some(harness)) = (&mut key, named.harness) {
                        *addresses = raw.ips[harness..].to_vec();
                    }
                    in_task(&named.frames)
                }
                // Nothing can name it yet (no symbol table): sampled again later.
                None => return,
            },
            // The same system call as the first sample, whose stack was looked at then; a call
            // whose stack could not be read counts only for a thread known to be a worker.
            None => seen_key.as_ref() == Some(&key) || worker.parked_once.load(Ordering::Acquire),
        };
        let Some(state) = self.states.get_mut(&id) else {
            return;
        };
        if !in_task {
            // A worker caught between two polls runs tasks again at once: it is looked at again
            // a few thresholds on. A thread that never parked (the blocking pool's: tokio starts
            // them with the same callback) runs no task: it is left alone until it parks.
            state.quiet_until = match worker.parked_once.load(Ordering::Acquire) {
                true => now.saturating_add(
                    recorder
                        .ticks
                        .of_ns(threshold_ns.saturating_mul(QUIET_THRESHOLDS)),
                ),
                false => u64::MAX,
            };
            state.seen = None;
            return;
        }
        let confirmed = match &state.seen {
            // The same poll, not yet a threshold long: wait, keeping the first sample.
            Some(seen) if seen.key == key && busy_ns < threshold_ns => return,
            Some(seen) if seen.key == key => stood_still(recorder, seen, now, &busy, &others),
            _ => false,
        };
        if !confirmed {
            // Another poll, or workers' busy times moved: this sample is the new first one.
            let earliest_raw = state.seen.as_ref().map_or(since, |seen| seen.at_raw);
            state.seen = Some(Seen {
                at_raw: now,
                key,
                stack,
                earliest_raw,
                busy,
                others,
            });
            return;
        }
        if state
            .reported
            .as_ref()
            .is_some_and(|reported| reported.same_stall(&key))
        {
            return;
        }
        state.reported = Some(key);
        let Some(seen) = state.seen.take() else {
            return;
        };
        let running_ns = recorder.clock.delta_as_nanos(seen.earliest_raw, now);
        // The latest stack, or the first sample's for a call that went on waiting.
        let stack = stack.or(seen.stack);
        self.report(recorder, watchdog, worker, stack, cause, running_ns);
    }

    /// The runtime's other workers now, for the busy-time guard (a worker that has not parked
    /// yet is left out: it counts as one that moved its busy time).
    fn others(&mut self, worker: &Arc<Worker>, workers: &[Arc<Worker>]) -> Vec<Other> {
        workers
            .iter()
            // Only threads that have parked are surely workers: the blocking pool's threads, and
            // the thread that called `watch_runtime` on a multi-thread runtime, never park.
            .filter(|other| {
                !Arc::ptr_eq(other, worker)
                    && !other.gone.load(Ordering::Acquire)
                    && other.parked_once.load(Ordering::Acquire)
            })
            .map(|other| Other {
                worker: Arc::as_ptr(other) as usize,
                parked: other.running_since.load(Ordering::Acquire) == 0,
                unparks: other.unparks.load(Ordering::Acquire),
                cpu_ns: cpu_ns(&mut self.buffer, other.tid),
            })
            .collect()
    }

    /// Counts and reports one stall, named from its stack.
    fn report(
        &mut self,
        recorder: &Recorder,
        watchdog: &Arc<Watchdog>,
        worker: &Worker,
        raw: Option<signal::RawStack>,
        cause: Option<stalls::Cause>,
        running_ns: u64,
    ) {
        let frames = raw
            .as_ref()
            .and_then(|raw| self.names.frames_to_harness(raw))
            .unwrap_or_default()
            .frames;
        let culprit = symbols::culprit(&frames, &watchdog.prefixes);
        let mut stack: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
        stack.truncate(signal::MAX_FRAMES);
        let label = task_label(&frames, &watchdog.prefixes);
        let label = recorder.registry.get(&label, LabelKind::Task).name.clone();
        let now_ns = recorder.clock.delta_as_nanos(0, recorder.clock.raw());
        watchdog.stall_count.fetch_add(1, Ordering::Relaxed);
        let warn = {
            let mut table = watchdog.lock();
            let entry = table.entry(label.clone()).or_default();
            entry.stalls = entry.stalls.saturating_add(1);
            if let Some(cause) = cause {
                entry.causes.record(cause);
            }
            if !stack.is_empty() {
                let folded = symbols::fold(symbols::within_poll(&stack));
                entry.stacks.record(&folded, stalls::TRACKED);
            }
            if let Some(culprit) = &culprit {
                entry.culprits.record(culprit, stalls::TRACKED);
            }
            entry
                .warn_limiter
                .try_acquire(now_ns, recorder.warn_interval_ns)
        };
        let event = HogEvent {
            kind: HogKind::Stall,
            label,
            duration: Duration::from_nanos(running_ns),
            threshold: Duration::from_nanos(watchdog.threshold_ns),
            thread: Some(worker.slot.thread_name.clone()),
            stack,
            culprit,
        };
        if let Some(callback) = &recorder.on_hog {
            crate::event::call_on_hog(callback, &event);
        }
        if let Some(suppressed) = warn {
            let text = if event.stack.is_empty() {
                match cause {
                    Some(stalls::Cause::Syscall(nr)) => format!(
                        "blocked in the system call {} ({nr}), whose stack could not be read; \
                         not interrupted",
                        activity::syscall_name(nr).unwrap_or("?")
                    ),
                    _ => "no stack".to_string(),
                }
            } else {
                event.stack.join("\n  ")
            };
            warn_stall(watchdog, &event, suppressed, &text);
        }
    }
}

/// Whether a worker whose two samples match stood still in between: tokio's stable worker
/// metrics publish a worker's busy time only between polls (every 61 polls by default, and when
/// it parks), so a worker running many short polls moves it, and a stalled one does not. tokio
/// does not say which worker is which thread, so this counts: more busy times must have stood
/// still than there are other workers that may have left theirs alone. A worker that parked
/// between the samples published its busy time then and moved it; one parked at both samples
/// and never unparked in between did not; one that unparked since may not have published yet;
/// one that ran all along moved it unless it got less than half the time on a CPU (preempted
/// on a busy machine, blocked in a system call). Without the metrics (no 64-bit atomics) the
/// samples decide alone.
#[cfg(target_os = "linux")]
fn stood_still(
    recorder: &Recorder,
    seen: &Seen,
    now: u64,
    busy: &[Duration],
    others: &[Other],
) -> bool {
    if seen.busy.is_empty() || busy.is_empty() || seen.busy.len() != busy.len() {
        return true;
    }
    let span_ns = recorder.clock.delta_as_nanos(seen.at_raw, now);
    let may_have_stood_still = |after: &&Other| {
        let Some(before) = seen
            .others
            .iter()
            .find(|before| before.worker == after.worker)
        else {
            // Started since.
            return true;
        };
        let unparked = before.unparks != after.unparks;
        match (before.parked, after.parked) {
            (true, true) => !unparked,
            (false, true) => false,
            (true, false) => true,
            (false, false) if unparked => false,
            (false, false) => match (before.cpu_ns, after.cpu_ns) {
                (Some(before), Some(after)) => after.saturating_sub(before) < span_ns / 2,
                _ => true,
            },
        }
    };
    let idle = others.iter().filter(may_have_stood_still).count();
    let still = seen
        .busy
        .iter()
        .zip(busy)
        .filter(|(before, after)| before == after)
        .count();
    still > idle
}

/// The CPU time a thread has had so far (`/proc/…/schedstat`, first field, in nanoseconds).
#[cfg(target_os = "linux")]
fn cpu_ns(buffer: &mut Vec<u8>, tid: i32) -> Option<u64> {
    let schedstat = read_proc(buffer, tid, "schedstat")?;
    std::str::from_utf8(&schedstat)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A system-call sample's identity: the call (number, arguments, stack and instruction
/// pointers) and the thread's time slices so far.
#[cfg(target_os = "linux")]
fn syscall_key(buffer: &mut Vec<u8>, tid: i32) -> Option<Key> {
    let schedstat = read_proc(buffer, tid, "schedstat")?;
    let slices: u64 = std::str::from_utf8(&schedstat)
        .ok()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    let line = read_proc(buffer, tid, "syscall")?;
    Some(Key::Syscall(line, slices))
}

#[cfg(target_os = "linux")]
fn read_proc(buffer: &mut Vec<u8>, tid: i32, name: &str) -> Option<Vec<u8>> {
    buffer.clear();
    std::fs::File::open(format!("/proc/self/task/{tid}/{name}"))
        .and_then(|mut file| file.read_to_end(buffer))
        .ok()?;
    Some(buffer.clone())
}

/// Each worker's busy time, from tokio's stable metrics (empty if not readable here).
#[cfg(target_os = "linux")]
fn busy_times(handle: Option<&tokio::runtime::Handle>) -> Vec<Duration> {
    #[cfg(target_has_atomic = "64")]
    if let Some(handle) = handle {
        let metrics = handle.metrics();
        return (0..metrics.num_workers())
            .map(|worker| metrics.worker_total_busy_duration(worker))
            .collect();
    }
    let _ = handle;
    Vec::new()
}
