//! What the tool knows of the app's tasks, and the [`Report`] it makes of them.
//!
//! console-subscriber sends each task's figures in two streams: `Stats` (polls, busy time,
//! spawn and drop times) in every update, and the poll-time histogram only on request, per task
//! (`WatchTaskDetails`). The state keeps the latest of both per live task; a task that ended is
//! folded into its location's totals once its final histogram is in, so memory follows the live
//! tasks and the spawn locations, not every task the app ever spawned.

use std::collections::HashMap;
use std::sync::Arc;

use console_api::field::{Name, Value};
use console_api::tasks::task_details::PollTimesHistogram;
use console_api::tasks::{DurationHistogram, Stats, TaskDetails, TaskUpdate};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use crate::recorder::{
    clamp_us, index_of as bucket_of, LabelKind, LabelSnapshot, PollHistogram, Snapshot, BUCKETS,
    CUT_MARKER, MAX_LABEL_BYTES,
};
use crate::report::Report;

/// The label of a task whose spawn location console-subscriber did not send.
pub(super) const UNKNOWN_LOCATION: &str = "task <unknown location>";

/// The bucket of a poll of `us` microseconds (clamped to what the buckets hold).
fn index_of(us: u64) -> usize {
    bucket_of(clamp_us(us))
}

/// One task's poll-time histogram, converted to hogwatch's buckets.
#[derive(Debug)]
struct TaskHistogram {
    histogram: PollHistogram,
    slow_polls: u64,
    slow_busy_ns: u64,
}

impl TaskHistogram {
    /// Converts console's histogram (nanoseconds, HdrHistogram V2, values above its maximum
    /// clamped to it and counted as outliers).
    fn from_console(histogram: &DurationHistogram, threshold_ns: u64) -> Option<Self> {
        let hdr: Histogram<u64> = Deserializer::new()
            .deserialize(&mut histogram.raw_histogram.as_slice())
            .ok()?;
        let mut counts = [0u64; BUCKETS];
        let mut slow_polls = 0u64;
        let mut slow_busy_ns = 0u64;
        let mut add = |value_ns: u64, count: u64| {
            if count == 0 {
                return;
            }
            if let Some(bucket) = counts.get_mut(index_of(value_ns / 1_000)) {
                *bucket = bucket.saturating_add(count);
            }
            if value_ns > threshold_ns {
                slow_polls = slow_polls.saturating_add(count);
                slow_busy_ns = slow_busy_ns.saturating_add(value_ns.saturating_mul(count));
            }
        };
        // Outliers were recorded at the histogram's maximum; the longest of them stands for all
        // (an upper bound: console keeps no more).
        let outliers = histogram.high_outliers;
        let clamp_ns = histogram.max_value;
        for value in hdr.iter_recorded() {
            let value_ns = hdr.median_equivalent(value.value_iterated_to());
            let mut count = value.count_at_value();
            if outliers > 0 && hdr.equivalent(value_ns, clamp_ns) {
                let moved = outliers.min(count);
                count -= moved;
                add(histogram.highest_outlier.unwrap_or(clamp_ns), moved);
            }
            add(value_ns, count);
        }
        Some(Self {
            histogram: PollHistogram::from_counts(&counts),
            slow_polls,
            slow_busy_ns,
        })
    }

    /// A stand-in for a task whose histogram has not come yet: every poll at the mean, and only
    /// the slow poll that is certain: one when the mean is over the threshold, since the
    /// longest poll is at least the mean. Exact for a task polled once.
    fn estimate(polls: u64, busy_ns: u64, threshold_ns: u64) -> Self {
        let mean_ns = busy_ns.checked_div(polls).unwrap_or(0);
        let mut counts = [0u64; BUCKETS];
        if polls > 0 {
            counts[index_of(mean_ns / 1_000)] = polls;
        }
        let slow = polls > 0 && mean_ns > threshold_ns;
        Self {
            histogram: PollHistogram::from_counts(&counts),
            slow_polls: u64::from(slow),
            slow_busy_ns: if slow { mean_ns } else { 0 },
        }
    }
}

/// One live task (or one that ended and waits for its final histogram).
#[derive(Debug)]
struct Task {
    label: Arc<str>,
    polls: u64,
    busy_ns: u64,
    first_poll_ns: Option<u64>,
    dropped_ns: Option<u64>,
    histogram: Option<TaskHistogram>,
    /// A details request for it is in flight.
    fetching: bool,
    /// A `spawn_blocking` closure (console's `Kind::Blocking`): it runs on the blocking pool,
    /// where blocking is what it is for; never ranked.
    blocking: bool,
    /// When its current poll started, if one is in progress (console's last poll start is later
    /// than its last poll end): a poll that has held its worker for long is a stall now, before
    /// it ends and reaches console's histogram.
    poll_started_ns: Option<u64>,
}

impl Task {
    /// Polls the histogram has not seen yet.
    fn stale(&self) -> bool {
        self.polls > 0
            && self
                .histogram
                .as_ref()
                .is_none_or(|histogram| histogram.histogram.len() < self.polls)
    }
}

/// The figures of one spawn location, summed over its tasks.
#[derive(Clone)]
struct Totals {
    counts: Box<[u64; BUCKETS]>,
    busy_ns: u64,
    slow_polls: u64,
    slow_busy_ns: u64,
    wall_ns: u64,
    completed: u64,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            busy_ns: 0,
            slow_polls: 0,
            slow_busy_ns: 0,
            wall_ns: 0,
            completed: 0,
        }
    }
}

impl Totals {
    fn add(&mut self, task: &Task, estimate: &Option<TaskHistogram>) {
        let Some(histogram) = task.histogram.as_ref().or(estimate.as_ref()) else {
            return;
        };
        for &(index, count) in histogram.histogram.raw() {
            if let Some(bucket) = self.counts.get_mut(usize::from(index)) {
                *bucket = bucket.saturating_add(count);
            }
        }
        self.busy_ns = self.busy_ns.saturating_add(task.busy_ns);
        self.slow_polls = self.slow_polls.saturating_add(histogram.slow_polls);
        self.slow_busy_ns = self.slow_busy_ns.saturating_add(histogram.slow_busy_ns);
        if let (Some(first), Some(dropped)) = (task.first_poll_ns, task.dropped_ns) {
            self.wall_ns = self.wall_ns.saturating_add(dropped.saturating_sub(first));
            self.completed = self.completed.saturating_add(1);
        }
    }
}

/// Figures of the state itself, for the progress line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    /// Tasks alive (or ended, their final histogram not yet in).
    pub(super) live: usize,
    /// Of those, tasks whose poll counts are estimated for want of a histogram.
    pub(super) estimated: usize,
}

/// Everything known of the app's tasks.
pub(super) struct State {
    threshold_ns: u64,
    threshold_us: u64,
    /// Field names of each span metadata, for fields sent by index.
    field_names: HashMap<u64, Vec<String>>,
    tasks: HashMap<u64, Task>,
    ended: HashMap<Arc<str>, Totals>,
    /// The first task name (`tokio::task::Builder::name`) seen at each location.
    names: HashMap<Arc<str>, String>,
    /// The app's clock: the earliest spawn seen and the latest update.
    earliest_ns: Option<u64>,
    latest_ns: u64,
}

/// Nanoseconds of a protobuf `Timestamp` or `Duration` (seconds and nanoseconds); `None` for a
/// negative one, which console-subscriber never sends.
fn nanos(seconds: i64, nanos: i32) -> Option<u64> {
    let seconds = u64::try_from(seconds).ok()?;
    let nanos = u64::try_from(nanos).ok()?;
    Some(seconds.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// `task FILE:LINE`, as hogwatch's task hooks label a task, capped like every label.
fn label_of(location: Option<&console_api::Location>) -> Arc<str> {
    let Some(location) = location else {
        return UNKNOWN_LOCATION.into();
    };
    let Some(file) = location.file.as_deref() else {
        return UNKNOWN_LOCATION.into();
    };
    let mut label = match location.line {
        Some(line) => format!("task {file}:{line}"),
        None => format!("task {file}"),
    };
    if label.len() > MAX_LABEL_BYTES {
        let mut end = MAX_LABEL_BYTES - CUT_MARKER.len();
        while !label.is_char_boundary(end) {
            end -= 1;
        }
        label.truncate(end);
        label.push_str(CUT_MARKER);
    }
    label.into()
}

impl State {
    pub(super) fn new(threshold_ns: u64) -> Self {
        Self {
            threshold_ns,
            threshold_us: threshold_ns / 1_000,
            field_names: HashMap::new(),
            tasks: HashMap::new(),
            ended: HashMap::new(),
            names: HashMap::new(),
            earliest_ns: None,
            latest_ns: 0,
        }
    }

    /// Takes in one update of the `WatchUpdates` stream.
    pub(super) fn update(&mut self, update: console_api::instrument::Update) {
        if let Some(now) = update.now.and_then(|now| nanos(now.seconds, now.nanos)) {
            self.latest_ns = self.latest_ns.max(now);
        }
        for new in update.new_metadata.into_iter().flat_map(|m| m.metadata) {
            if let (Some(id), Some(metadata)) = (new.id, new.metadata) {
                self.field_names.insert(id.id, metadata.field_names);
            }
        }
        if let Some(tasks) = update.task_update {
            self.task_update(tasks);
        }
    }

    fn task_update(&mut self, update: TaskUpdate) {
        for task in update.new_tasks {
            let Some(id) = task.id else { continue };
            let label = label_of(task.location.as_ref());
            let blocking = task.kind == console_api::tasks::task::Kind::Blocking as i32
                || self.field(&task.fields, "kind").as_deref() == Some("blocking");
            if !self.names.contains_key(&label) {
                if let Some(name) = self.task_name(&task.fields) {
                    self.names.insert(label.clone(), name);
                }
            }
            self.tasks.entry(id.id).or_insert_with(|| Task {
                label,
                polls: 0,
                busy_ns: 0,
                first_poll_ns: None,
                dropped_ns: None,
                histogram: None,
                fetching: false,
                blocking,
                poll_started_ns: None,
            });
        }
        for (id, stats) in update.stats_update {
            self.stats(id, &stats);
        }
    }

    /// The task's `task.name` field.
    fn task_name(&self, fields: &[console_api::Field]) -> Option<String> {
        self.field(fields, "task.name")
    }

    /// The value of the task's field `wanted`, resolving names sent as an index into its
    /// metadata.
    fn field(&self, fields: &[console_api::Field], wanted: &str) -> Option<String> {
        fields.iter().find_map(|field| {
            let name = match field.name.as_ref()? {
                Name::StrName(name) => name.as_str(),
                Name::NameIdx(index) => self
                    .field_names
                    .get(&field.metadata_id.as_ref()?.id)?
                    .get(usize::try_from(*index).ok()?)?
                    .as_str(),
            };
            (name == wanted).then(|| match field.value.as_ref() {
                Some(Value::StrVal(text) | Value::DebugVal(text)) => text.clone(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            })
        })
    }

    fn stats(&mut self, id: u64, stats: &Stats) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if let Some(created) = stats.created_at.and_then(|t| nanos(t.seconds, t.nanos)) {
            self.earliest_ns = Some(self.earliest_ns.map_or(created, |e| e.min(created)));
        }
        if let Some(poll_stats) = &stats.poll_stats {
            task.polls = poll_stats.polls;
            task.busy_ns = poll_stats
                .busy_time
                .and_then(|busy| nanos(busy.seconds, busy.nanos))
                .unwrap_or(0);
            task.first_poll_ns = poll_stats
                .first_poll
                .and_then(|t| nanos(t.seconds, t.nanos));
            let started = poll_stats
                .last_poll_started
                .and_then(|t| nanos(t.seconds, t.nanos));
            let ended = poll_stats
                .last_poll_ended
                .and_then(|t| nanos(t.seconds, t.nanos));
            task.poll_started_ns =
                started.filter(|started| ended.is_none_or(|ended| ended < *started));
        }
        task.dropped_ns = stats.dropped_at.and_then(|t| nanos(t.seconds, t.nanos));
        self.fold_if_final(id);
    }

    /// Folds a task that ended into its location's totals once nothing more can come for it.
    fn fold_if_final(&mut self, id: u64) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        // A histogram that lags the final stats is fetched again (`take_stale`) before folding.
        if task.dropped_ns.is_none() || task.fetching || task.stale() {
            return;
        }
        if let Some(task) = self.tasks.remove(&id) {
            if !task.blocking {
                self.ended
                    .entry(task.label.clone())
                    .or_default()
                    .add(&task, &None);
            }
        }
    }

    /// Up to `limit` tasks whose histograms lag their poll counts, those that could hold a
    /// slow poll (busy time over the threshold) first; they are marked as being fetched. With
    /// `refresh` false, only tasks that have no histogram yet or ended: a task polled all the
    /// time would otherwise be asked for on every update, and each answer costs the app's
    /// aggregator a serialised histogram.
    pub(super) fn take_stale(&mut self, limit: usize, refresh: bool) -> Vec<u64> {
        let threshold_ns = self.threshold_ns;
        let mut stale: Vec<(bool, u64, u64)> = self
            .tasks
            .iter()
            .filter(|(_, task)| {
                !task.fetching
                    && !task.blocking
                    && task.stale()
                    && (refresh || task.histogram.is_none() || task.dropped_ns.is_some())
            })
            .map(|(&id, task)| (task.busy_ns >= threshold_ns, task.busy_ns, id))
            .collect();
        stale.sort_unstable_by(|a, b| b.cmp(a));
        stale.truncate(limit);
        stale
            .into_iter()
            .map(|(_, _, id)| {
                if let Some(task) = self.tasks.get_mut(&id) {
                    task.fetching = true;
                }
                id
            })
            .collect()
    }

    /// Takes in the answer to a details request: the histogram, or `None` when console had none
    /// (the task is gone from its retention, or the request failed).
    pub(super) fn details(&mut self, id: u64, details: Option<TaskDetails>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.fetching = false;
        let histogram = details
            .and_then(|details| details.poll_times_histogram)
            .and_then(|histogram| match histogram {
                PollTimesHistogram::Histogram(histogram) => {
                    TaskHistogram::from_console(&histogram, self.threshold_ns)
                }
                // Pre-0.1.9 console-subscribers; no outlier data, and long gone.
                PollTimesHistogram::LegacyHistogram(_) => None,
            });
        let failed = histogram.is_none();
        if let Some(histogram) = histogram {
            task.histogram = Some(histogram);
        }
        if failed && task.dropped_ns.is_some() {
            // Nothing more will come for it: fold it with what is known.
            if let Some(task) = self.tasks.remove(&id).filter(|task| !task.blocking) {
                let estimate = (task.histogram.is_none())
                    .then(|| TaskHistogram::estimate(task.polls, task.busy_ns, self.threshold_ns));
                self.ended
                    .entry(task.label.clone())
                    .or_default()
                    .add(&task, &estimate);
            }
            return;
        }
        self.fold_if_final(id);
    }

    /// The name of a task spawned at `label`, if it had one.
    pub(super) fn name(&self, label: &str) -> Option<&str> {
        self.names.get(label).map(String::as_str)
    }

    /// How many tasks are tracked, and how many of them are estimated.
    pub(super) fn counts(&self) -> Counts {
        Counts {
            live: self.tasks.len(),
            estimated: self
                .tasks
                .values()
                .filter(|task| task.polls > 0 && task.histogram.is_none())
                .count(),
        }
    }

    /// The report of everything seen: one `task FILE:LINE` entry per spawn location.
    pub(super) fn report(&self) -> Report {
        let mut totals = self.ended.clone();
        // Polls in progress for longer than the threshold, by location: (stalls, longest).
        let mut stalled: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        for task in self.tasks.values().filter(|task| !task.blocking) {
            if let Some(started) = task.poll_started_ns {
                let running_ns = self.latest_ns.saturating_sub(started);
                if running_ns >= self.threshold_ns {
                    let (stalls, longest) = stalled.entry(task.label.clone()).or_default();
                    *stalls += 1;
                    *longest = (*longest).max(running_ns);
                }
            }
            // Polls a fetched histogram has not caught up with are left out rather than guessed:
            // the next fetch brings them.
            let estimate = task
                .histogram
                .is_none()
                .then(|| TaskHistogram::estimate(task.polls, task.busy_ns, self.threshold_ns));
            totals
                .entry(task.label.clone())
                .or_default()
                .add(task, &estimate);
        }
        let labels = totals
            .into_iter()
            .map(|(name, totals)| LabelSnapshot {
                name,
                kind: LabelKind::Task,
                histogram: PollHistogram::from_counts(&totals.counts),
                busy_ns: totals.busy_ns,
                slow_polls: totals.slow_polls,
                slow_busy_ns: totals.slow_busy_ns,
                wall_ns: totals.wall_ns,
                completed: totals.completed,
                cancelled: 0,
                panicked: 0,
                requests: 0,
                responses: [0; 5],
                // console measures each task's own scheduling delay, not who caused it.
                inflicted_ns: 0,
            })
            .collect();
        let window_us = self.earliest_ns.map_or(0, |earliest| {
            self.latest_ns.saturating_sub(earliest) / 1_000
        });
        Report::new(
            self.threshold_us,
            Snapshot {
                labels,
                folded: 0,
                window_us,
                delay_us: 0,
                unattributed_delay_us: 0,
            },
            |entries| {
                // A poll still in progress is a stall, its time so far held in a slow poll (the
                // ranking's first key): a task stuck in its first poll ranks, and is listed at
                // all, before console has counted a single poll of it.
                for entry in entries.iter_mut() {
                    if let Some(&(stalls, longest_ns)) = stalled.get(entry.label.as_str()) {
                        entry.stalls = stalls;
                        entry.longest_stall_us = longest_ns / 1_000;
                        entry.slow_busy_us = entry.slow_busy_us.saturating_add(longest_ns / 1_000);
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use console_api::field::{Name, Value};
    use console_api::tasks::{Stats, Task, TaskUpdate};
    use console_api::{Field, Id, Location, PollStats};
    use prost_types::{Duration as ProtoDuration, Timestamp};

    use super::State;

    fn at(ms: i64) -> Timestamp {
        Timestamp {
            seconds: ms / 1_000,
            nanos: ((ms % 1_000) * 1_000_000) as i32,
        }
    }

    /// A task spawned at `line` with console's `kind` field, and its stats: `polls` polls that
    /// ended, each `poll_ms` long, the last of them (or one still going) started at
    /// `last_started_ms`; the app's clock at `now_ms`. (Each argument is one field of console's
    /// messages, named at the call.)
    #[allow(clippy::too_many_arguments)]
    fn update(
        id: u64,
        line: u32,
        kind: &str,
        polls: u64,
        poll_ms: i64,
        last_started_ms: i64,
        in_progress: bool,
        now_ms: i64,
    ) -> console_api::instrument::Update {
        let task = Task {
            id: Some(Id { id }),
            location: Some(Location {
                file: Some("src/app.rs".to_string()),
                line: Some(line),
                ..Default::default()
            }),
            fields: vec![Field {
                name: Some(Name::StrName("kind".to_string())),
                value: Some(Value::DebugVal(kind.to_string())),
                metadata_id: None,
            }],
            ..Default::default()
        };
        let last_ended = match in_progress {
            true => (polls > 0).then(|| at(last_started_ms - 1)),
            false => Some(at(last_started_ms + poll_ms)),
        };
        let busy_ms = poll_ms * polls as i64;
        let stats = Stats {
            poll_stats: Some(PollStats {
                polls,
                first_poll: Some(at(0)),
                last_poll_started: Some(at(last_started_ms)),
                last_poll_ended: last_ended,
                busy_time: Some(ProtoDuration {
                    seconds: busy_ms / 1_000,
                    nanos: ((busy_ms % 1_000) * 1_000_000) as i32,
                }),
            }),
            created_at: Some(at(0)),
            ..Default::default()
        };
        console_api::instrument::Update {
            now: Some(at(now_ms)),
            task_update: Some(TaskUpdate {
                new_tasks: vec![task],
                stats_update: [(id, stats)].into_iter().collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_poll_in_progress_is_a_stall_and_blocking_pool_tasks_are_never_ranked() {
        let mut state = State::new(20_000_000);
        // A task stuck in its first poll for 2 s: no poll has ended.
        state.update(update(1, 10, "task", 0, 0, 1_000, true, 3_000));
        // spawn_blocking closures: two 5 s polls that ended, and one going on for 2 s.
        state.update(update(2, 20, "blocking", 2, 5_000, 10_000, false, 16_000));
        state.update(update(3, 21, "blocking", 0, 0, 14_000, true, 16_000));
        // A task whose 100 ms poll ended: a slow poll, no stall.
        state.update(update(4, 30, "task", 1, 100, 15_000, false, 16_000));
        let report = state.report();
        let text = report.to_text();
        let labels: Vec<&str> = report.entries.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(
            labels,
            ["task src/app.rs:10", "task src/app.rs:30"],
            "{text}"
        );
        let stuck = &report.entries[0];
        assert_eq!(stuck.stalls, 1, "{text}");
        // Stuck since 1 s, the app's clock now at 16 s.
        assert_eq!(stuck.longest_stall_us, 15_000_000, "{text}");
        assert_eq!(report.entries[1].stalls, 0, "{text}");
        assert_eq!(report.entries[1].slow_polls, 1, "{text}");
    }
}
