//! The watchdog thread's part of the runtime watchdog: samples the busy workers of every
//! watched runtime at each check, and reports the stalls two samples confirm.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[cfg(target_os = "linux")]
use super::activity::{self, Activity};
#[cfg(target_os = "linux")]
use super::parks::Parks;
#[cfg(target_os = "linux")]
use super::table::warn_stall;
use super::table::Watchdog;
#[cfg(target_os = "linux")]
use super::task_names::{
    between_polls, in_body, in_task, scheduler, task_label, waits_in_tokio, Names,
};
use super::workers::Runtimes;
#[cfg(target_os = "linux")]
use super::workers::{target_of, Runtime, Worker};
#[cfg(target_os = "linux")]
use super::{scan, signal, stalls, symbols};
use crate::event::{HogEvent, HogKind};
use crate::recorder::{Held, LabelKind, Recorder};

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
    /// How many times it had left its CPU to wait, where its parks are read, not told.
    switches: Option<u64>,
}

/// The first sample of a possible stall.
#[cfg(target_os = "linux")]
struct Seen {
    at_raw: u64,
    key: Key,
    /// Its stack, named down to the harness (empty: none could be read).
    frames: Vec<symbols::Frame>,
    /// When the poll began at the earliest we can tell: the worker's unpark if this is the
    /// first sample since, else this sample (the one before showed another poll).
    began_raw: u64,
    /// The runtime's workers' busy times at the sample (empty: not readable).
    busy: Vec<Duration>,
    /// The other workers at the sample.
    others: Vec<Other>,
    /// The thread's CPU time at the sample, in nanoseconds (`None`: not readable).
    cpu_ns: Option<u64>,
}

/// A stall reported for a worker, whose later samples are recorded with it.
#[cfg(target_os = "linux")]
struct Reported {
    key: Key,
    /// When its poll began (as for `Seen::began_raw`).
    began_raw: u64,
    label: Arc<str>,
    /// The label's identity, for the delay it inflicts (`Recorder::held`).
    label_address: usize,
    /// The thread's CPU time and the clock at the previous sample, in nanoseconds.
    clock: Option<(u64, u64)>,
}

/// How many thresholds a worker whose sample showed app code outside any task poll is left
/// alone: a worker running `block_on`'s future or `block_in_place` is not signalled twice per
/// threshold. (One caught in tokio's scheduler between two polls is not left alone.)
#[cfg(target_os = "linux")]
const QUIET_THRESHOLDS: u64 = 2;

/// How many thresholds a thread that has never parked and whose sample showed no task poll is
/// left alone: the blocking pool's threads (sampled this seldom, they cost little), or a
/// worker busy since its start.
#[cfg(target_os = "linux")]
const QUIET_UNPARKED_THRESHOLDS: u64 = 8;

/// What the watchdog thread remembers of one worker.
#[cfg(target_os = "linux")]
struct State {
    /// The `running_since` these apply to: a park in between starts over.
    since: u64,
    seen: Option<Seen>,
    /// When it was last sampled (0: not since `since`): samples are half a threshold apart.
    sampled_raw: u64,
    /// The stall already reported, so that it is reported once (its later samples are
    /// recorded under its label).
    reported: Option<Reported>,
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
            sampled_raw: 0,
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
    handles: HashMap<u64, tokio::runtime::Handle>,
    reader: activity::Reader,
    scanner: scan::Scanner,
    names: Names,
    /// Each thread's CPU time, read at most once per check (by `Worker` address).
    cpu: HashMap<usize, (u64, Option<u64>)>,
    /// The calls the workers of runtimes `watch_current_runtime` found park in.
    parks: Parks,
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
            cpu: HashMap::new(),
            parks: Parks::default(),
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
            if runtime.found {
                for worker in &workers {
                    self.parks
                        .observe(&mut self.reader, recorder, worker, self.generation);
                }
            }
            for worker in &workers {
                if !runtime.not_the_runtimes(worker) {
                    self.check_worker(recorder, watchdog, runtime, worker, &workers);
                }
            }
            runtime.checks.fetch_add(1, Ordering::Release);
        }
        // A dropped runtime's handle goes with it (it holds the runtime's driver).
        self.handles
            .retain(|key, _| runtimes.iter().any(|runtime| runtime.key() == *key));
        runtimes.clear();
        self.scratch = runtimes;
        let generation = self.generation;
        self.states
            .retain(|_, state| state.generation == generation);
        self.cpu.retain(|_, (at, _)| *at == generation);
        self.parks.retain(generation);
    }

    fn check_worker(
        &mut self,
        recorder: &Recorder,
        watchdog: &Arc<Watchdog>,
        watched: &Runtime,
        worker: &Arc<Worker>,
        workers: &[Arc<Worker>],
    ) {
        let (runtime, found) = (watched.key(), watched.found);
        if worker.gone.load(Ordering::Acquire) {
            return;
        }
        let since = worker.running_since.load(Ordering::Acquire);
        let threshold_ns = watchdog.threshold_ns;
        let now = recorder.clock.raw();
        // Sampled from an eighth of a threshold on (a worker busy for less is left alone), then
        // every half threshold: the first sample of a poll comes at most 3/8 of a threshold
        // after it began (checks are a quarter apart), and the one a threshold later that
        // confirms it at most 1.375 thresholds after (plus the checks' own delays).
        let id = Arc::as_ptr(worker) as usize;
        // A reported stall that ended in a park: its final duration, to the park.
        if let Some(state) = self
            .states
            .get_mut(&id)
            .filter(|state| state.since != since)
        {
            let parked_raw = worker.parked_raw.load(Ordering::Acquire);
            if let Some(reported) = state
                .reported
                .take()
                .filter(|reported| parked_raw > reported.began_raw)
            {
                let running_ns = recorder
                    .clock
                    .delta_as_nanos(reported.began_raw, parked_raw);
                held(recorder, worker, &reported, parked_raw);
                watchdog
                    .lock()
                    .entry(reported.label)
                    .or_default()
                    .ended(running_ns);
            }
        }
        let busy_ns = match since {
            0 => 0,
            since => recorder.clock.delta_as_nanos(since, now),
        };
        if busy_ns < threshold_ns / 8 {
            return;
        }
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
        // Every half threshold (less an eighth: the checks themselves come a little early or
        // late), and at once when the first sample of a possible stall is a threshold old.
        let cadence = state.sampled_raw == 0
            || recorder.clock.delta_as_nanos(state.sampled_raw, now)
                >= threshold_ns / 2 - threshold_ns / 8;
        let confirming = state
            .seen
            .as_ref()
            .is_some_and(|seen| recorder.clock.delta_as_nanos(seen.at_raw, now) >= threshold_ns);
        if !cadence && !confirming {
            return;
        }
        let first_sample = state.sampled_raw == 0;
        state.sampled_raw = now;
        let seen_key = state.seen.as_ref().map(|seen| seen.key.clone());
        let Some(target) = target_of(&worker.slot) else {
            return;
        };
        let activity = self.reader.read(worker.tid);
        let (key, stack, cause) = match activity {
            Activity::User => {
                // The interval between checks: a worker the machine hardly runs must not hold up
                // the watchdog's look at the others. But at least 5 ms: at a threshold of a few
                // milliseconds (the test guard's), a thread that waits that long for a CPU on a
                // busy machine must still be sampled.
                let timeout = Duration::from_nanos(threshold_ns / 4)
                    .clamp(Duration::from_millis(5), Duration::from_millis(250));
                let captured = signal::capture(target, watchdog.signal, timeout);
                // Counted once answered: a thread that has left was asked nothing.
                if !matches!(captured, Err(signal::CaptureError::Gone)) {
                    watchdog.requested.fetch_add(1, Ordering::Relaxed);
                }
                match captured {
                    Ok(raw) => {
                        watchdog.completed.fetch_add(1, Ordering::Relaxed);
                        // The addresses are filled in below, from the names.
                        (
                            Key::Stack(raw.task, Vec::new()),
                            Some(raw),
                            Some(stalls::Cause::Cpu),
                        )
                    }
                    // Exiting (its target detached before its runtime registration said
                    // so): gone from now on.
                    Err(signal::CaptureError::Gone) => {
                        worker.gone.store(true, Ordering::Release);
                        return;
                    }
                    Err(error) => {
                        watchdog.failed.count(&error);
                        return;
                    }
                }
            }
            // Not signalled (the call could fail with `EINTR`): its stack is scanned, once per
            // call it waits in.
            Activity::Syscall(nr, registers) => {
                let Some(key) = self.syscall_key(worker.tid) else {
                    return;
                };
                let stack = match seen_key.as_ref() == Some(&key) {
                    true => None,
                    false => self.scanner.scan(registers),
                };
                (key, stack, Some(stalls::Cause::Syscall(nr)))
            }
            Activity::Unknown | Activity::Unreadable => return,
        };
        let parked_once = worker.parked_once.load(Ordering::Acquire);
        let mut key = key;
        let (in_task, frames) = match &stack {
            Some(raw) => match self.names.frames_to_harness(raw, !(parked_once || found)) {
                Some(named) => {
                    if let (Key::Stack(_, addresses), Some(harness)) = (&mut key, named.harness) {
                        *addresses = raw.ips[harness..].to_vec();
                    }
                    // A thread that never parked may be the blocking pool's, whose
                    // `spawn_blocking` closures run through the same harness: a task only with
                    // a scheduler below it. (A runtime `watch_current_runtime` found registered
                    // only its workers and `block_on`'s thread.)
                    let task = ((in_task(&named.frames)
                        && (parked_once || found || named.scheduler == Some(true)))
                        || (watched.bodies && in_body(&named.frames, &watchdog.prefixes)))
                        && !(matches!(activity, Activity::Syscall(..))
                            && waits_in_tokio(&named.frames, &watchdog.prefixes));
                    (task, named.frames)
                }
                // Nothing can name it yet (no symbol table): sampled again later.
                None => return,
            },
            // The same system call as the first sample, whose stack was looked at then; a call
            // whose stack could not be read counts only for a thread known to be a worker.
            None => (seen_key.as_ref() == Some(&key) || parked_once, Vec::new()),
        };
        let Some(state) = self.states.get_mut(&id) else {
            return;
        };
        if !in_task {
            // A worker of a runtime found by `watch_current_runtime`, parked in tokio: the
            // call it parks in is learnt, and it is parked from now on (see `parks`).
            if let (true, Activity::Syscall(nr, registers)) = (found, activity) {
                if self
                    .parks
                    .learn(worker, nr, registers, &frames, &watchdog.prefixes)
                {
                    worker.parks(now);
                    return;
                }
            }
            // A worker caught in tokio's scheduler between two polls (even one that never
            // parked: the scheduler's frames say it is a worker) runs a task again at once,
            // which may be the stall: it is sampled again at the usual cadence, as one caught in
            // a task is (left alone for two thresholds, a stall that began right after was
            // reported 2.4 thresholds late; for eight, one that never parked had a 400 ms stall
            // go unreported). A worker in app code outside any task (the future given to
            // `block_on`, a `block_in_place` closure, a callback the scheduler calls) is looked
            // at again a few thresholds on. A thread that never parked and shows no scheduler is
            // likely the blocking pool's (tokio starts them with the same callback), which runs
            // no task: it is looked at far less often, but still looked at: a worker kept busy
            // from its start (a task yielding in a loop) never parks either, and must not go
            // unwatched for good.
            let quiet = match (
                between_polls(&frames, &watchdog.prefixes),
                parked_once || found || scheduler(&frames).is_some(),
            ) {
                (true, _) => 0,
                (false, true) => QUIET_THRESHOLDS,
                (false, false) => QUIET_UNPARKED_THRESHOLDS,
            };
            state.quiet_until =
                now.saturating_add(recorder.ticks.of_ns(threshold_ns.saturating_mul(quiet)));
            state.seen = None;
            return;
        }
        // A later sample of the stall already reported: recorded with it.
        if let Some(reported) = state
            .reported
            .as_mut()
            .filter(|reported| reported.key.same_stall(&key))
        {
            let now_ns = recorder.clock.delta_as_nanos(0, now);
            let cpu_ns = self.reader.clocks(worker.tid).map(|clocks| clocks.cpu_ns);
            let cpu_and_wall_ns = reported
                .clock
                .zip(cpu_ns)
                .map(|((before, then_ns), cpu_ns)| {
                    let wall_ns = now_ns.saturating_sub(then_ns);
                    (cpu_ns.saturating_sub(before).min(wall_ns), wall_ns)
                });
            reported.clock = cpu_ns.map(|cpu_ns| (cpu_ns, now_ns));
            held(recorder, worker, reported, now);
            let sample = stalls::Sample {
                first: false,
                running_ns: recorder.clock.delta_as_nanos(reported.began_raw, now),
                cause,
                cpu_and_wall_ns,
                named: (!frames.is_empty())
                    .then(|| symbols::named_stack(&frames, &watchdog.prefixes)),
            };
            let label = reported.label.clone();
            watchdog.samples.fetch_add(1, Ordering::Relaxed);
            watchdog
                .lock()
                .entry(label)
                .or_default()
                .record(&sample, None);
            return;
        }
        let seen = match state.seen.take() {
            Some(seen) if seen.key == key => seen,
            // Another poll (or the first sample): this sample is the first of a possible stall.
            _ => {
                let busy = busy_times(self.handles.get(&runtime));
                let others = self.others(worker, workers, found);
                let cpu_ns = self.reader.clocks(worker.tid).map(|clocks| clocks.cpu_ns);
                if let Some(state) = self.states.get_mut(&id) {
                    state.seen = Some(Seen {
                        at_raw: now,
                        key,
                        frames,
                        began_raw: if first_sample { since } else { now },
                        busy,
                        others,
                        cpu_ns,
                    });
                }
                return;
            }
        };
        // The same poll: a stall once it has been seen a whole threshold apart, and tokio's busy
        // times agree.
        if recorder.clock.delta_as_nanos(seen.at_raw, now) < threshold_ns {
            state.seen = Some(seen);
            return;
        }
        let busy = busy_times(self.handles.get(&runtime));
        let others = self.others(worker, workers, found);
        let cpu_ns = self.reader.clocks(worker.tid).map(|clocks| clocks.cpu_ns);
        let Some(state) = self.states.get_mut(&id) else {
            return;
        };
        // tokio's busy times are its workers', not `block_on`'s thread's.
        let block_on = worker.block_on.load(Ordering::Acquire);
        if !(block_on || stood_still(recorder, &seen, now, &busy, &others, found))
            || starved(recorder, &seen, now, cpu_ns)
        {
            // Busy times moved: polls went on. This sample starts over, with the first
            // sample's stack if this one was not read (the same system call: its stack was
            // read then, and a stall reported without it would be named `task <unknown>`).
            state.seen = Some(Seen {
                at_raw: now,
                key,
                frames: match frames.is_empty() {
                    true => seen.frames,
                    false => frames,
                },
                began_raw: now,
                busy,
                others,
                cpu_ns,
            });
            return;
        }
        let running_ns = recorder.clock.delta_as_nanos(seen.began_raw, now);
        // The latest stack, or the first sample's for a call that went on waiting.
        let frames = if frames.is_empty() {
            seen.frames
        } else {
            frames
        };
        let now_ns = recorder.clock.delta_as_nanos(0, now);
        let clock = self
            .reader
            .clocks(worker.tid)
            .map(|clocks| (clocks.cpu_ns, now_ns));
        let (label, label_address) =
            self.report(recorder, watchdog, worker, frames, cause, running_ns);
        let reported = Reported {
            key,
            began_raw: seen.began_raw,
            label,
            label_address,
            clock,
        };
        held(recorder, worker, &reported, now);
        if let Some(state) = self.states.get_mut(&id) {
            state.reported = Some(reported);
        }
    }

    /// A system-call sample's identity: the call as `/proc` shows it and the thread's time
    /// slices so far.
    fn syscall_key(&mut self, tid: i32) -> Option<Key> {
        let timeslices = self.reader.clocks(tid)?.timeslices;
        Some(Key::Syscall(self.reader.syscall_line(tid)?, timeslices))
    }

    /// The runtime's other workers now, for the busy-time guard (a worker that has not parked
    /// yet is left out: it counts as one that moved its busy time).
    fn others(
        &mut self,
        worker: &Arc<Worker>,
        workers: &[Arc<Worker>],
        parks_read: bool,
    ) -> Vec<Other> {
        workers
            .iter()
            // Only threads that have parked are surely workers: the blocking pool's threads, and
            // the thread that called `watch_runtime` on a multi-thread runtime, never park.
            .filter(|other| {
                !Arc::ptr_eq(other, worker)
                    && !other.gone.load(Ordering::Acquire)
                    && other.parked_once.load(Ordering::Acquire)
                    && !other.block_on.load(Ordering::Acquire)
            })
            .map(|other| {
                let key = Arc::as_ptr(other) as usize;
                let generation = self.generation;
                let cpu_ns = match self.cpu.get(&key) {
                    Some((at, cpu_ns)) if *at == generation => *cpu_ns,
                    _ => {
                        let cpu_ns = self.reader.clocks(other.tid).map(|clocks| clocks.cpu_ns);
                        self.cpu.insert(key, (generation, cpu_ns));
                        cpu_ns
                    }
                };
                Other {
                    worker: key,
                    parked: other.running_since.load(Ordering::Acquire) == 0,
                    unparks: other.unparks.load(Ordering::Acquire),
                    cpu_ns,
                    switches: parks_read
                        .then(|| self.reader.voluntary_switches(other.tid))
                        .flatten(),
                }
            })
            .collect()
    }

    /// Counts and reports one stall, named from its stack; returns its label (name and identity).
    fn report(
        &mut self,
        recorder: &Recorder,
        watchdog: &Arc<Watchdog>,
        worker: &Worker,
        frames: Vec<symbols::Frame>,
        cause: Option<stalls::Cause>,
        running_ns: u64,
    ) -> (Arc<str>, usize) {
        let named = symbols::named_stack(&frames, &watchdog.prefixes);
        let culprit = named.culprit.clone();
        let mut stack: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
        stack.truncate(signal::MAX_FRAMES);
        let label = task_label(&frames, &watchdog.prefixes);
        let label = recorder.registry.get(&label, LabelKind::Task);
        let label_address = Arc::as_ptr(&label) as usize;
        let label = label.name.clone();
        let now_ns = recorder.clock.delta_as_nanos(0, recorder.clock.raw());
        watchdog.stall_count.fetch_add(1, Ordering::Relaxed);
        watchdog.samples.fetch_add(1, Ordering::Relaxed);
        let sample = stalls::Sample {
            first: true,
            running_ns,
            cause,
            cpu_and_wall_ns: None,
            named: (!stack.is_empty()).then_some(named),
        };
        let warn = watchdog
            .lock()
            .entry(label.clone())
            .or_default()
            .record(&sample, Some((now_ns, recorder.warn_interval_ns)));
        let event = HogEvent {
            kind: HogKind::Stall,
            label: label.clone(),
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
        (label, label_address)
    }
}

/// The reported stall held `worker` at least until `until_raw`: what the lag probe's delays are
/// attributed to (pushed again at each sample, the latest end counting).
#[cfg(target_os = "linux")]
fn held(recorder: &Recorder, worker: &Worker, reported: &Reported, until_raw: u64) {
    recorder.held(Held {
        label: reported.label_address,
        thread: worker.slot.thread_index,
        start_raw: reported.began_raw,
        end_raw: until_raw,
    });
}

/// Whether a worker whose two samples match stood still in between: tokio's stable worker
/// metrics publish a worker's busy time only between polls (every 61 polls by default, and when
/// it parks), so a worker running many short polls moves it, and a stalled one does not. tokio
/// does not say which worker is which thread, so this counts: more busy times must have stood
/// still than there are other workers that may have left theirs alone. A worker that parked
/// between the samples published its busy time then and moved it; one parked at both samples
/// and never unparked in between did not; one that unparked since may not have published yet,
/// unless it unparked twice (it parked, and published, in between: counted as idle, such a
/// worker restarted a stalled worker's confirmation); one that ran all along moved it unless it
/// got less than half the time on a CPU (preempted on a busy machine, blocked in a system call).
/// Without the metrics (no 64-bit atomics) the samples decide alone.
///
/// With `parks_read` (a runtime `watch_current_runtime` found, whose workers' parks are read at
/// each check, not told by tokio's callbacks), a worker may park and unpark many times between
/// two checks unseen: one seen parked at both samples and never running in between stood still
/// only if its CPU time did too (else it ran, and parked again, publishing), and one seen
/// unparked once and running since is counted as one that ran all along (it moved its busy time
/// if it had half the time on a CPU). (A worker serving short requests is mostly found parked:
/// taken for idle, it started every confirmation of a stall beside it over, and a stall in
/// mini-redis under load went unreported.) Whether it left its CPU to wait in between (its
/// voluntary context switches) says it parked, however few of its parks the checks saw.
#[cfg(target_os = "linux")]
fn stood_still(
    recorder: &Recorder,
    seen: &Seen,
    now: u64,
    busy: &[Duration],
    others: &[Other],
    parks_read: bool,
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
        // Where parks are read, a worker that left its CPU to wait since the first sample
        // parked in between, unseen or not, and published its busy time then.
        if parks_read
            && before
                .switches
                .zip(after.switches)
                .is_some_and(|(before, after)| after > before)
        {
            return false;
        }
        let unparks = after.unparks.wrapping_sub(before.unparks);
        let unparked = unparks != 0;
        // Its CPU time between the samples.
        let ran_ns = before
            .cpu_ns
            .zip(after.cpu_ns)
            .map(|(before, after)| after.saturating_sub(before));
        match (before.parked, after.parked) {
            (true, true) if parks_read => !unparked && ran_ns.is_none_or(|ran| ran == 0),
            (true, true) => !unparked,
            (false, true) => false,
            (true, false) if parks_read && ran_ns.is_some_and(|ran| ran >= span_ns / 2) => false,
            (true, false) => unparks < 2,
            (false, false) if unparked => false,
            (false, false) => ran_ns.is_none_or(|ran| ran < span_ns / 2),
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

/// Whether a thread whose two samples caught it in its own code (not in a system call) ran on a
/// CPU for less than an eighth of the time between them: it was runnable but waiting for a CPU
/// (a machine far busier than its cores), which holds its poll but is no stall of its code. A
/// stall on a busy machine gets its share of a CPU, which is more (a third with six threads
/// running on two cores).
#[cfg(target_os = "linux")]
fn starved(recorder: &Recorder, seen: &Seen, now: u64, cpu_ns: Option<u64>) -> bool {
    let (Key::Stack(..), Some(before), Some(after)) = (&seen.key, seen.cpu_ns, cpu_ns) else {
        return false;
    };
    let wall_ns = recorder.clock.delta_as_nanos(seen.at_raw, now);
    after.saturating_sub(before).saturating_mul(8) < wall_ns
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn other(worker: usize, parked: bool, unparks: u64) -> Other {
        Other {
            worker,
            parked,
            unparks,
            cpu_ns: None,
            switches: None,
        }
    }

    fn recorder() -> Recorder {
        Recorder::new(crate::recorder::Config {
            threshold: Duration::from_millis(10),
            max_labels: 16,
            warn_interval: Duration::from_secs(1),
            on_hog: None,
            watchdog_id: 0,
        })
    }

    /// A first sample with two workers' busy times, the other worker (1) as `before`.
    fn seen(before: Other) -> Seen {
        Seen {
            at_raw: 0,
            key: Key::Syscall(Vec::new(), 0),
            frames: Vec::new(),
            began_raw: 0,
            busy: vec![Duration::from_millis(10), Duration::from_millis(20)],
            others: vec![before],
            cpu_ns: None,
        }
    }

    /// The sampled worker (busy time 10 ms) stands still while the other one, parked at the
    /// first sample and running at the second, moved its busy time: it parked (and published)
    /// in between only if it unparked twice.
    #[test]
    fn a_worker_that_parked_in_between_explains_its_own_busy_time() {
        let recorder = recorder();
        let now = recorder.clock.raw();
        let moved = [Duration::from_millis(10), Duration::from_millis(25)];
        // Unparked twice: it parked in between, its busy time moved, the stall stands.
        let first = seen(other(1, true, 3));
        assert!(stood_still(
            &recorder,
            &first,
            now,
            &moved,
            &[other(1, false, 5)],
            false,
        ));
        // Unparked once and running since: it may not have published, so the moved busy time
        // may be the sampled worker's: no stall yet.
        assert!(!stood_still(
            &recorder,
            &first,
            now,
            &moved,
            &[other(1, false, 4)],
            false,
        ));
        // The sampled worker's busy time moved too: never a stall.
        let both = [Duration::from_millis(12), Duration::from_millis(25)];
        assert!(!stood_still(
            &recorder,
            &first,
            now,
            &both,
            &[other(1, false, 5)],
            false,
        ));
    }

    /// A worker whose parks are read at each check (`watch_current_runtime`), seen parked at
    /// both samples and never running in between, moved its busy time if its CPU time moved: it
    /// ran and parked again between two checks. Told by tokio's callbacks, parked at both
    /// samples and never unparked means idle, whatever its CPU time (the driver's wake-ups).
    #[test]
    fn a_worker_seen_parked_twice_ran_in_between_if_its_cpu_time_moved() {
        let recorder = recorder();
        let now = recorder.clock.raw();
        let moved = [Duration::from_millis(10), Duration::from_millis(25)];
        let at = |cpu_ns| Other {
            cpu_ns: Some(cpu_ns),
            ..other(1, true, 3)
        };
        let first = seen(at(1_000_000));
        // It ran: the moved busy time is its own, the sampled worker's stood still: a stall.
        assert!(stood_still(
            &recorder,
            &first,
            now,
            &moved,
            &[at(9_000_000)],
            true
        ));
        // It did not: the moved busy time may be the sampled worker's.
        assert!(!stood_still(
            &recorder,
            &first,
            now,
            &moved,
            &[at(1_000_000)],
            true
        ));
        // Its CPU time unknown: as before, it may have been idle.
        assert!(!stood_still(
            &recorder,
            &seen(other(1, true, 3)),
            now,
            &moved,
            &[other(1, true, 3)],
            true
        ));
        // Seen unparked once and running since, with half the time on a CPU: it ran, as one
        // running all along did (told by the callbacks, it may not have published yet).
        let running = Other {
            cpu_ns: Some(60_000_000),
            ..other(1, false, 4)
        };
        let half = recorder.ticks.of_ns(100_000_000);
        assert!(stood_still(
            &recorder,
            &first,
            half,
            &moved,
            std::slice::from_ref(&running),
            true
        ));
        assert!(!stood_still(
            &recorder,
            &first,
            half,
            &moved,
            std::slice::from_ref(&running),
            false
        ));
        // Seen unparked once, with little CPU time, but it left its CPU to wait in between: it
        // parked, and published.
        let light = |cpu_ns, switches| Other {
            cpu_ns: Some(cpu_ns),
            switches: Some(switches),
            ..other(1, false, 4)
        };
        let parked_before = seen(Other {
            switches: Some(100),
            ..at(1_000_000)
        });
        assert!(stood_still(
            &recorder,
            &parked_before,
            half,
            &moved,
            &[light(9_000_000, 180)],
            true
        ));
        assert!(!stood_still(
            &recorder,
            &parked_before,
            half,
            &moved,
            &[light(9_000_000, 100)],
            true
        ));
        // Parks told by the callbacks: never unparked is idle.
        assert!(!stood_still(
            &recorder,
            &first,
            now,
            &moved,
            &[at(9_000_000)],
            false
        ));
    }
}
