//! tokio's task hooks (`--cfg tokio_unstable`): every poll of every task, no wrapping.
//!
//! The hooks are the recorder's poll path split in two: `on_before_task_poll` calls
//! `Recorder::begin` (the clock, and with a watchdog the publication of the poll in the thread's
//! slot) and keeps what it returns in a thread-local; `on_after_task_poll` hands it to
//! `Recorder::end`, which records the poll exactly as a watched future's (histogram, busy time,
//! the slow path with its warning and `on_hog` callback), under the task's spawn location.
//!
//! The label of a spawn location is looked up in the registry once; after that a poll finds its
//! `Label` in [`LocationCache`], a fixed open-addressing table keyed by the address of the
//! `&'static Location`, read with one acquire load and no lock. A location that finds no free
//! slot (more than 2,048 spawn locations) is counted under `<other>`, never looked up per poll.
//!
//! With a watchdog (`Builder::watchdog`), a stuck task is thus caught like a stuck handler.
//! `Recorder::end` ends the publication first, before anything that could
//! panic (the `on_hog` callback); a task that panics does not skip it (tokio catches the panic
//! inside the poll, between the hooks). If an after-hook was skipped all the same (a panic
//! unwound out of the scheduler between the hooks), the next before-hook on the thread ends the
//! stale publication before starting its own, so it never comes back as a stall.
//!
//! On a task's last poll tokio calls `on_task_terminate` *inside* the poll, before
//! `on_after_task_poll`; the thread-local notes it and the after-hook counts the task as
//! completed. That last poll is also how an aborted task ends (`abort` schedules it, and the
//! poll drops it), and tokio's hook does not say how the task ended, so returned, panicked and
//! aborted tasks all count as completed. A termination outside the task's own poll is a task
//! still alive when the runtime shut down: it counts as cancelled.

use std::cell::Cell;
use std::panic::Location;
use std::sync::{Arc, OnceLock};

use tokio::runtime::TaskMeta;

use crate::detector::Detector;
use crate::recorder::{Label, LabelKind, Outcome, Recorder, Started};

/// The label prefix of every task label.
pub(crate) const TASK_PREFIX: &str = "task ";
/// The label of tasks spawned from inside tokio's own source.
pub(crate) const TOKIO_INTERNAL_LABEL: &str = "task <tokio internal>";
/// The label of hogwatch's own background tasks (the lag probe, the runtime-metrics sampler).
pub(crate) const HOGWATCH_LABEL: &str = "task <hogwatch>";

/// Slots in the location cache: distinct spawn locations a program polls, with room to spare.
const SLOTS: usize = 2048;
/// Slots tried before giving up on the cache (the location is then counted under `<other>`).
const MAX_PROBES: usize = 64;

/// The poll in flight on this thread, between the before- and after-hooks.
struct InFlight {
    task: Option<tokio::task::Id>,
    /// When it started, and its publication for the watchdog.
    started: Started,
    /// `on_task_terminate` ran for this task during this poll: it is its last.
    terminated: bool,
}

impl InFlight {
    const NONE: Self = Self {
        task: None,
        started: Started::NONE,
        terminated: false,
    };
}

thread_local! {
    static IN_FLIGHT: Cell<InFlight> = const { Cell::new(InFlight::NONE) };
}

impl Detector {
    /// Installs tokio's task-poll hooks on `builder`, so every poll of every task on the runtime
    /// it builds is timed and recorded, labelled by where the task was spawned
    /// (`task src/worker.rs:42`; see [the labels guide](crate::docs::labels)). Slow polls warn and
    /// call [`on_hog`](crate::Builder::on_hog) like a watched future's. Needs `--cfg tokio_unstable`;
    /// without it the method does not exist.
    ///
    /// tokio keeps one callback of each kind: this replaces any `on_before_task_poll`,
    /// `on_after_task_poll` and `on_task_terminate` set on `builder` before, and one set after
    /// replaces hogwatch's.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// let rt = detector.instrument_runtime(builder.enable_all()).build()?;
    /// rt.block_on(async {
    ///     tokio::spawn(async { std::thread::sleep(std::time::Duration::from_millis(20)) })
    ///         .await
    ///         .unwrap();
    /// });
    /// // A task's last poll is recorded just after its `JoinHandle` wakes: shut the runtime down
    /// // (which waits for its workers) before reading the report in a test.
    /// drop(rt);
    /// let report = detector.report();
    /// let task = report.hogs().next().expect("the spawned task hogged");
    /// assert!(task.label.starts_with("task "), "{}", task.label);
    /// assert_eq!(task.kind, hogwatch::LabelKind::Task);
    /// # Ok(()) }
    /// ```
    #[cfg(tokio_unstable)]
    #[cfg_attr(docsrs, doc(cfg(tokio_unstable)))]
    pub fn instrument_runtime<'a>(
        &self,
        builder: &'a mut tokio::runtime::Builder,
    ) -> &'a mut tokio::runtime::Builder {
        install(self.recorder().clone(), builder)
    }
}

/// What the three hooks of one instrumented runtime share.
struct TaskHooks {
    recorder: Arc<Recorder>,
    cache: LocationCache,
}

impl TaskHooks {
    /// A task's poll begins on this thread: the one place every hooked poll starts.
    ///
    /// A poll still in flight on this thread is one whose after-hook never ran (a panic unwound
    /// out of the scheduler between the hooks) or, rarely, a task poll of another instrumented
    /// runtime this one is nested in (`block_in_place` and `Handle::block_on`). Either way its
    /// publication ends here, restoring what was before it, rather than becoming the new poll's
    /// "previous": a stale entry restored later would look like a poll stuck since long ago. The
    /// price in the nested case is that the outer task is no longer watched once the inner poll
    /// ends (its statistics already skip that poll, see `after_poll`).
    fn before_poll(&self, meta: &TaskMeta<'_>) {
        IN_FLIGHT.replace(InFlight::NONE).started.abandon();
        let label = self.label(meta.spawned_at());
        IN_FLIGHT.set(InFlight {
            task: Some(meta.id()),
            started: self.recorder.begin(label),
            terminated: false,
        });
    }

    /// A task's poll ended on this thread: the one place every hooked poll ends.
    fn after_poll(&self, meta: &TaskMeta<'_>) {
        let in_flight = IN_FLIGHT.replace(InFlight::NONE);
        // Not ours: the hooks were installed while this task was being polled, or a poll nested
        // in another runtime's poll on this thread. Record nothing rather than a wrong duration.
        if in_flight.task != Some(meta.id()) {
            in_flight.started.abandon();
            return;
        }
        let label = self.label(meta.spawned_at());
        self.recorder.end(label, in_flight.started);
        if in_flight.terminated {
            // tokio calls the terminate hook for a returned, panicked or aborted task alike.
            label.writer().end(Outcome::Completed, 0);
        }
    }

    fn terminate(&self, meta: &TaskMeta<'_>) {
        let mut in_flight = IN_FLIGHT.replace(InFlight::NONE);
        let ours = in_flight.task == Some(meta.id());
        in_flight.terminated |= ours;
        IN_FLIGHT.set(in_flight);
        if ours {
            return;
        }
        // Ended outside its own poll: dropped at runtime shutdown. Only locations already polled
        // count: a `spawn_blocking` task also ends here, and is never polled by a worker.
        if let Some(label) = self.cache.find(meta.spawned_at()) {
            label.writer().end(Outcome::Cancelled, 0);
        }
    }

    /// The label of the task spawned at `location`; `<other>` if the cache is full around it.
    #[inline]
    fn label(&self, location: &'static Location<'static>) -> &Label {
        self.cache
            .find_or_insert(location, &self.recorder)
            .unwrap_or_else(|| self.recorder.registry.other())
    }
}

/// Installs the hooks on `builder`. Replaces any `on_before_task_poll`, `on_after_task_poll` and
/// `on_task_terminate` set before (tokio keeps one of each).
fn install(
    recorder: Arc<Recorder>,
    builder: &mut tokio::runtime::Builder,
) -> &mut tokio::runtime::Builder {
    let hooks = Arc::new(TaskHooks {
        recorder,
        cache: LocationCache::new(),
    });
    let before = hooks.clone();
    let after = hooks.clone();
    builder
        .on_before_task_poll(move |meta| before.before_poll(meta))
        .on_after_task_poll(move |meta| after.after_poll(meta))
        .on_task_terminate(move |meta| hooks.terminate(meta))
}

/// The label of a spawn location: `task src/worker.rs:42`. A location in a dependency's source
/// is shortened to `crate-1.2.3/src/file.rs:LINE`; tokio's own tasks are all `task <tokio internal>`,
/// and hogwatch's are `task <hogwatch>`.
pub(crate) fn task_label(location: &Location<'_>) -> String {
    if location.file() == crate::runtime::SPAWN_FILE {
        return HOGWATCH_LABEL.to_string();
    }
    let file = short_file(location.file());
    if is_tokio_source(file) {
        return TOKIO_INTERNAL_LABEL.to_string();
    }
    format!("{TASK_PREFIX}{file}:{}", location.line())
}

/// Drops the `…/.cargo/registry/src/<index>/` prefix of a dependency's file.
fn short_file(file: &str) -> &str {
    for marker in ["/registry/src/", "\\registry\\src\\"] {
        if let Some(position) = file.find(marker) {
            let rest = &file[position + marker.len()..];
            if let Some(separator) = rest.find(['/', '\\']) {
                return &rest[separator + 1..];
            }
        }
    }
    file
}

/// `tokio-1.54.1/src/…`, as `short_file` leaves a file of the tokio crate.
fn is_tokio_source(file: &str) -> bool {
    file.strip_prefix("tokio-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Spawn location → statistics, without a lock: a fixed table of write-once slots, probed
/// linearly from the hash of the location's address. A slot is filled once (the registry lookup
/// runs then) and never changes, so a reader needs one acquire load per slot it looks at.
struct LocationCache {
    slots: Box<[Slot]>,
}

/// A location's address and its statistics, written once.
type Slot = OnceLock<(usize, Arc<Label>)>;

impl LocationCache {
    fn new() -> Self {
        Self::with_slots(SLOTS)
    }

    fn with_slots(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1)).map(|_| OnceLock::new()).collect(),
        }
    }

    fn key(location: &'static Location<'static>) -> usize {
        std::ptr::from_ref(location) as usize
    }

    fn home(&self, key: usize) -> usize {
        // Fibonacci hashing of the address (whose low bits are alignment).
        let hash = (key as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (hash >> 32) as usize % self.slots.len()
    }

    /// The statistics of `location` if a poll already filled its slot.
    fn find(&self, location: &'static Location<'static>) -> Option<&Label> {
        let key = Self::key(location);
        let home = self.home(key);
        for probe in 0..MAX_PROBES.min(self.slots.len()) {
            match self.slots[(home + probe) % self.slots.len()].get() {
                Some((slot_key, stats)) if *slot_key == key => return Some(stats),
                Some(_) => {}
                // Slots fill in probe order and are never emptied: the key is not further on.
                None => return None,
            }
        }
        None
    }

    /// The label of `location`, filling a slot (one registry lookup) the first time; `None`
    /// only when every slot it may use holds another location.
    #[inline]
    fn find_or_insert(
        &self,
        location: &'static Location<'static>,
        recorder: &Recorder,
    ) -> Option<&Label> {
        let key = Self::key(location);
        let home = self.home(key);
        for probe in 0..MAX_PROBES.min(self.slots.len()) {
            let slot = &self.slots[(home + probe) % self.slots.len()];
            let (slot_key, stats) = match slot.get() {
                Some(filled) => filled,
                None => slot.get_or_init(|| {
                    let label = recorder
                        .registry
                        .get(&task_label(location), LabelKind::Task);
                    (key, label)
                }),
            };
            // Another thread may have filled the slot with another location first.
            if *slot_key == key {
                return Some(stats);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_and_tokio_is_folded() {
        let here = Location::caller();
        assert_eq!(
            task_label(here),
            format!("task {}:{}", file!(), here.line())
        );
        assert_eq!(
            short_file("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/axum-0.8.9/src/serve/mod.rs"),
            "axum-0.8.9/src/serve/mod.rs"
        );
        assert!(is_tokio_source(short_file(
            "/home/me/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/fs/mod.rs"
        )));
        assert!(!is_tokio_source(
            "tokio-util-0.7.16/src/task/spawn_pinned.rs"
        ));
        assert!(!is_tokio_source("src/tokio-1.rs"));
    }

    /// A spawn location that finds the cache full is counted under `<other>`: it never gets a
    /// registry entry of its own, so no poll of it allocates its label or takes the lock.
    #[test]
    fn a_location_past_a_full_cache_is_counted_under_other() {
        let recorder = crate::recorder::for_tests();
        let hooks = TaskHooks {
            recorder: recorder.clone(),
            cache: LocationCache::with_slots(1),
        };
        let first: &'static Location<'static> = Location::caller();
        let second: &'static Location<'static> = Location::caller();
        assert_eq!(&*hooks.label(first).name, task_label(first));
        let folded = hooks.label(second);
        assert!(std::ptr::eq(folded, &**recorder.registry.other()));
        let (snapshots, _) = recorder.registry.snapshot(false, recorder.ticks);
        assert!(
            snapshots
                .iter()
                .all(|label| *label.name != task_label(second)),
            "the second location got a label of its own"
        );
    }

    #[test]
    fn cache_finds_what_it_filled() {
        let recorder = crate::recorder::for_tests();
        let cache = LocationCache::new();
        let here: &'static Location<'static> = Location::caller();
        assert!(cache.find(here).is_none());
        let stats = cache.find_or_insert(here, &recorder).unwrap();
        assert_eq!(&*stats.name, task_label(here));
        assert!(std::ptr::eq(cache.find(here).unwrap(), stats));
    }
}
