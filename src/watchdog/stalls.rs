//! Per-label stall statistics: how many stalls, the most frequent stacks and culprits, what the
//! blocked thread was doing, in bounded memory.
//!
//! The bound per label: [`TRACKED`] stacks of at most [`MAX_STACK_BYTES`] bytes each (at most
//! [`MAX_DEPTH`] frames of at most [`MAX_NAME_BYTES`] bytes), [`TRACKED`] culprits of at most
//! [`MAX_NAME_BYTES`] bytes, and [`MAX_CAUSES`] cause counters: about 136 KiB at worst.

use crate::report::{CauseCount, CulpritCount, FunctionSamples, StackCount, StallCause};

/// The most frequent keys of a stream, approximately, in at most `capacity` entries
/// ("space-saving": a new key replaces the rarest one and inherits its count, so a key that is
/// really frequent cannot be pushed out by a crowd of rare ones).
#[derive(Debug, Default)]
pub(crate) struct TopK {
    entries: Vec<(String, u64)>,
}

impl TopK {
    pub(crate) fn record(&mut self, key: &str, capacity: usize) {
        if let Some(entry) = self.entries.iter_mut().find(|(k, _)| k == key) {
            entry.1 = entry.1.saturating_add(1);
        } else if self.entries.len() < capacity {
            self.entries.push((key.to_string(), 1));
        } else if let Some(rarest) = self.entries.iter_mut().min_by_key(|(_, count)| *count) {
            *rarest = (key.to_string(), rarest.1.saturating_add(1));
        }
    }

    /// The `n` most frequent, most frequent first.
    pub(crate) fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut sorted = self.entries.clone();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        sorted.truncate(n);
        sorted
    }
}

/// What a stalled thread was doing when the watchdog looked at it: one per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Running its own code: the thread was signalled for its stack.
    Cpu,
    /// In its own code, but it ran for less than a quarter of the time over its recent
    /// samples: runnable, waiting for a CPU (see `preempted`).
    Preempted,
    /// Blocked in the system call with this number (see `activity::syscall_name`): not
    /// signalled, since the signal would interrupt the call.
    Syscall(libc::c_long),
}

/// Whether a thread found in its own code (running or runnable) is really the machine's victim:
/// over the last samples of its stall (about 100 ms, `wall_ns`) it ran for less than a quarter
/// of the time (`cpu_ns`), waiting in the run queue the rest. A thread that merely
/// shares a busy machine (half a CPU) still counts as `cpu`: its own work is what holds the
/// executor. (The run-queue wait of `schedstat` is no help here: the kernel adds a wait to it
/// only when the wait ends, so a thread stuck in the queue shows none.)
pub(crate) fn preempted(cpu_ns: u64, wall_ns: u64) -> bool {
    cpu_ns.saturating_mul(4) < wall_ns
}

impl Cause {
    /// The cause as the report has it, and the system call's name where there is one.
    pub(crate) fn describe(self) -> (StallCause, Option<String>) {
        let Cause::Syscall(nr) = self else {
            return (
                if self == Cause::Cpu {
                    StallCause::Cpu
                } else {
                    StallCause::Preempted
                },
                None,
            );
        };
        #[cfg(target_os = "linux")]
        let name = super::activity::syscall_name(nr);
        #[cfg(not(target_os = "linux"))]
        let name: Option<&str> = None;
        let Some(name) = name else {
            return (StallCause::Syscall, Some(format!("syscall {nr}")));
        };
        let kind = match name {
            "nanosleep" | "clock_nanosleep" | "pause" => StallCause::Sleep,
            "futex" => StallCause::Lock,
            "wait4" | "waitid" => StallCause::Wait,
            "read" | "write" | "readv" | "writev" | "pread64" | "pwrite64" | "open" | "openat"
            | "close" | "fsync" | "fdatasync" | "poll" | "ppoll" | "select" | "pselect6"
            | "epoll_wait" | "epoll_pwait" | "connect" | "accept" | "accept4" | "sendto"
            | "recvfrom" | "sendmsg" | "recvmsg" | "flock" | "sendfile" | "splice" => {
                StallCause::Io
            }
            _ => StallCause::Syscall,
        };
        (kind, Some(name.to_string()))
    }
}

/// How many samples had each cause, in at most [`MAX_CAUSES`] counters (the rest in `other`).
#[derive(Debug, Default)]
pub(crate) struct Causes {
    counts: Vec<(Cause, u64)>,
    other: u64,
}

impl Causes {
    pub(crate) fn record(&mut self, cause: Cause) {
        if let Some(entry) = self.counts.iter_mut().find(|(c, _)| *c == cause) {
            entry.1 = entry.1.saturating_add(1);
        } else if self.counts.len() < MAX_CAUSES {
            self.counts.push((cause, 1));
        } else {
            self.other = self.other.saturating_add(1);
        }
    }

    /// Each cause with its sample count, most frequent first, and the samples whose cause did
    /// not fit.
    pub(crate) fn counts(&self) -> (Vec<(Cause, u64)>, u64) {
        let mut counts = self.counts.clone();
        counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        (counts, self.other)
    }

    /// For the report: most frequent first, the samples that did not fit as `syscall`
    /// `"other"`.
    pub(crate) fn report(&self) -> Vec<CauseCount> {
        let (counts, other) = self.counts();
        let mut report: Vec<CauseCount> = counts
            .into_iter()
            .map(|(cause, count)| {
                let (cause, syscall) = cause.describe();
                CauseCount {
                    cause,
                    syscall,
                    count,
                }
            })
            .collect();
        if other > 0 {
            report.push(CauseCount {
                cause: StallCause::Syscall,
                syscall: Some("other".to_string()),
                count: other,
            });
            report.sort_by_key(|cause| std::cmp::Reverse(cause.count));
        }
        report
    }
}

/// The sampled profile of a label's stalls, per function, like cProfile's table: how many
/// samples had the function as the innermost frame outside the runtime (`self`: the code the
/// thread was running, or that called into the library it waits in) and how many had it
/// anywhere on the stack inside the poll (`total`). At most [`TRACKED_FUNCTIONS`] functions
/// (space-saving on `total`, like [`TopK`]).
#[derive(Debug, Default)]
pub(crate) struct Functions {
    /// `(function, self samples, total samples)`.
    entries: Vec<(String, u64, u64)>,
}

impl Functions {
    /// Records one sample's stack: `culprit` is its self function, `stack` the frames inside
    /// the poll that are not the runtime's (innermost first).
    pub(crate) fn record(&mut self, culprit: Option<&str>, stack: &[String]) {
        let mut seen: Vec<&str> = Vec::new();
        for frame in stack {
            if !seen.contains(&frame.as_str()) {
                seen.push(frame);
            }
        }
        if let Some(culprit) = culprit {
            if !seen.contains(&culprit) {
                seen.push(culprit);
            }
        }
        for function in seen {
            let own = u64::from(Some(function) == culprit);
            if let Some(entry) = self.entries.iter_mut().find(|(f, _, _)| f == function) {
                entry.1 = entry.1.saturating_add(own);
                entry.2 = entry.2.saturating_add(1);
            } else if self.entries.len() < TRACKED_FUNCTIONS {
                self.entries.push((function.to_string(), own, 1));
            } else if let Some(rarest) = self.entries.iter_mut().min_by_key(|(_, _, total)| *total)
            {
                *rarest = (
                    function.to_string(),
                    rarest.1.saturating_add(own),
                    rarest.2.saturating_add(1),
                );
            }
        }
    }

    /// The table for the report, by self samples then total samples, at most [`SHOWN_FUNCTIONS`]
    /// rows; percentages of `samples`, the label's samples.
    pub(crate) fn report(&self, samples: u64) -> Vec<FunctionSamples> {
        let mut sorted = self.entries.clone();
        sorted.sort_by(|a, b| (b.1, b.2).cmp(&(a.1, a.2)).then_with(|| a.0.cmp(&b.0)));
        sorted.truncate(SHOWN_FUNCTIONS);
        let percent = |count: u64| {
            if samples == 0 {
                0.0
            } else {
                (count as f64 * 1000.0 / samples as f64).round() / 10.0
            }
        };
        sorted
            .into_iter()
            // A function that took a rarer one's place inherited its counts (space-saving),
            // which may overstate it: never above the samples there were.
            .map(|(function, own, total)| (function, own.min(samples), total.min(samples)))
            .map(|(function, own, total)| FunctionSamples {
                self_percent: percent(own),
                total_percent: percent(total),
                function,
                self_samples: own,
                total_samples: total,
            })
            .collect()
    }
}

/// What the watchdog saw for one label in the current window.
#[derive(Default)]
pub(crate) struct LabelStalls {
    pub(crate) stalls: u64,
    pub(crate) stacks: TopK,
    pub(crate) culprits: TopK,
    /// Each culprit with the app's frame that called it, as `culprit` NUL `caller`.
    callers: TopK,
    /// Samples taken (each look at a stalled thread: at least one per stall).
    pub(crate) samples: u64,
    /// What the blocked thread was doing, per sample.
    pub(crate) causes: Causes,
    /// The sampled profile, per function.
    pub(crate) functions: Functions,
    /// The stalled threads' CPU time between samples, summed (nanoseconds).
    pub(crate) cpu_ns: u64,
    /// The time between those samples, summed (nanoseconds).
    pub(crate) sampled_ns: u64,
    /// The longest a stall had run at one of its samples (nanoseconds).
    pub(crate) longest_ns: u64,
    /// Stall warnings have their own rate limit: a slow-poll warning must not hide the stack.
    pub(crate) warn_limiter: crate::event::RateLimiter,
}

/// Distinct stacks (and culprits) tracked per label.
pub(crate) const TRACKED: usize = 32;
/// Stacks (and culprits) shown per label in a report.
pub(crate) const SHOWN: usize = 8;
/// The longest frame name kept (longer ones are cut at a character boundary and end in `…`).
pub(crate) const MAX_NAME_BYTES: usize = 256;
/// The most frames of a stack kept inside the poll (the innermost ones).
pub(crate) const MAX_DEPTH: usize = 64;
/// The longest folded stack kept (outermost frames are dropped first).
pub(crate) const MAX_STACK_BYTES: usize = 4096;
/// Distinct causes counted per label.
pub(crate) const MAX_CAUSES: usize = 16;
/// Functions tracked per label in the sampled profile.
pub(crate) const TRACKED_FUNCTIONS: usize = 64;
/// Functions shown per label in a report's table.
pub(crate) const SHOWN_FUNCTIONS: usize = 20;

/// `name` cut to at most [`MAX_NAME_BYTES`] bytes, at a character boundary, ending in `…` if
/// cut.
pub(crate) fn cap_name(mut name: String) -> String {
    const MARK: &str = "…";
    if name.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES - MARK.len();
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        name.push_str(MARK);
    }
    name
}

/// One look at a stalled thread, as every source records it: a wrapped poll's sample (`watch`,
/// the layer, the task hooks) and a runtime worker's (`watch_runtime`) alike.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    /// The first sample of this stall: it counts the stall.
    pub(crate) first: bool,
    /// How long the poll had been running at this sample.
    pub(crate) running_ns: u64,
    /// What the thread was doing (`None`: it was changing state, or `/proc` is unreadable).
    pub(crate) cause: Option<Cause>,
    /// The thread's CPU time and the wall time since the stall's previous sample.
    pub(crate) cpu_and_wall_ns: Option<(u64, u64)>,
    /// Its stack, named (`None`: none could be had).
    pub(crate) named: Option<NamedStack>,
}

/// What a sample's named stack adds to the record (built by `symbols::named_stack`).
#[derive(Clone, Debug, Default)]
pub(crate) struct NamedStack {
    /// The frames inside the poll, folded root first.
    pub(crate) folded: String,
    /// The innermost frame outside the runtime.
    pub(crate) culprit: Option<String>,
    /// The app's frame that led to the culprit.
    pub(crate) called_from: Option<String>,
    /// The frames inside the poll that are not the runtime's, innermost first.
    pub(crate) own: Vec<String>,
}

impl LabelStalls {
    /// Records one sample: the one step every source takes, under one lock of the table.
    /// With `warn_at` (now and the warning interval, in nanoseconds), also asks the label's
    /// rate limit for a warning: `Some(suppressed)` if one may be sent.
    pub(crate) fn record(&mut self, sample: &Sample, warn_at: Option<(u64, u64)>) -> Option<u64> {
        if sample.first {
            self.stalls = self.stalls.saturating_add(1);
        }
        self.samples = self.samples.saturating_add(1);
        self.longest_ns = self.longest_ns.max(sample.running_ns);
        if let Some(cause) = sample.cause {
            self.causes.record(cause);
        }
        if let Some((cpu_ns, wall_ns)) = sample.cpu_and_wall_ns {
            self.cpu_ns = self.cpu_ns.saturating_add(cpu_ns);
            self.sampled_ns = self.sampled_ns.saturating_add(wall_ns);
        }
        if let Some(named) = &sample.named {
            self.record_names(named);
        }
        warn_at.and_then(|(now_ns, interval_ns)| self.warn_limiter.try_acquire(now_ns, interval_ns))
    }

    /// What a sample's named stack adds: its stack, culprit and caller, and the function table.
    /// The wrapped path's naming thread calls it on its own, after the sample was recorded.
    pub(crate) fn record_names(&mut self, named: &NamedStack) {
        if !named.folded.is_empty() {
            self.stacks.record(&named.folded, TRACKED);
        }
        if let Some(culprit) = &named.culprit {
            self.culprits.record(culprit, TRACKED);
            if let Some(caller) = &named.called_from {
                self.callers
                    .record(&format!("{culprit}\0{caller}"), TRACKED);
            }
        }
        self.functions.record(named.culprit.as_deref(), &named.own);
    }

    /// A stall that ran for `running_ns` in all has ended (seen after its last sample).
    pub(crate) fn ended(&mut self, running_ns: u64) {
        self.longest_ns = self.longest_ns.max(running_ns);
    }

    pub(crate) fn top_stacks(&self) -> Vec<StackCount> {
        self.stacks
            .top(SHOWN)
            .into_iter()
            .map(|(stack, count)| StackCount { stack, count })
            .collect()
    }

    pub(crate) fn top_culprits(&self) -> Vec<CulpritCount> {
        self.culprits
            .top(SHOWN)
            .into_iter()
            .map(|(culprit, count)| {
                // The most frequent caller of this culprit (`top` sorts by count).
                let called_from = self.callers.top(TRACKED).into_iter().find_map(|(key, _)| {
                    let (of, caller) = key.split_once('\0')?;
                    (of == culprit).then(|| caller.to_string())
                });
                CulpritCount {
                    culprit,
                    count,
                    called_from,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_capped_at_a_char_boundary() {
        assert_eq!(cap_name("short".into()), "short");
        let long = "é".repeat(200);
        let capped = cap_name(long);
        assert!(capped.len() <= MAX_NAME_BYTES, "{}", capped.len());
        assert!(capped.ends_with('…'));
        assert!(capped.starts_with("éé"));
    }

    #[test]
    fn causes_are_counted_in_bounded_memory() {
        let mut causes = Causes::default();
        causes.record(Cause::Cpu);
        for nr in 0..100 {
            causes.record(Cause::Syscall(nr));
        }
        causes.record(Cause::Cpu);
        let (counts, other) = causes.counts();
        assert_eq!(counts.len(), MAX_CAUSES);
        assert_eq!(counts[0], (Cause::Cpu, 2));
        assert_eq!(other, 100 - (MAX_CAUSES as u64 - 1));
        let report = causes.report();
        assert_eq!(report.iter().map(|c| c.count).sum::<u64>(), 102);
        assert!(report.windows(2).all(|w| w[0].count >= w[1].count));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn system_calls_are_grouped_into_causes() {
        let kind = |nr| Cause::Syscall(nr).describe();
        assert_eq!(kind(libc::SYS_clock_nanosleep).0, "sleep");
        assert_eq!(kind(libc::SYS_futex).0, "lock");
        assert_eq!(
            kind(libc::SYS_recvfrom),
            (StallCause::Io, Some("recvfrom".to_string()))
        );
        assert_eq!(kind(libc::SYS_waitid).0, "wait");
        assert_eq!(kind(libc::SYS_getrandom).0, "syscall");
        assert_eq!(
            kind(100_000),
            (StallCause::Syscall, Some("syscall 100000".to_string()))
        );
        assert_eq!(Cause::Cpu.describe(), (StallCause::Cpu, None));
        assert!(preempted(10, 41) && !preempted(10, 40) && !preempted(0, 0));
    }

    #[test]
    fn the_function_table_counts_self_and_total_once_per_sample() {
        let mut functions = Functions::default();
        let stack = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        for _ in 0..3 {
            functions.record(
                Some("app::leaf"),
                &stack(&["app::leaf", "app::mid", "app::leaf"]),
            );
        }
        functions.record(Some("app::mid"), &stack(&["app::mid"]));
        let table = functions.report(8);
        assert_eq!(table[0].function, "app::leaf");
        assert_eq!((table[0].self_samples, table[0].total_samples), (3, 3));
        assert_eq!(table[0].self_percent, 37.5);
        assert_eq!(table[1].function, "app::mid");
        assert_eq!((table[1].self_samples, table[1].total_samples), (1, 4));
        assert_eq!(table[1].total_percent, 50.0);
        for i in 0..1_000 {
            functions.record(Some(&format!("rare{i}")), &[]);
        }
        assert!(functions.entries.len() <= TRACKED_FUNCTIONS);
    }

    #[test]
    fn a_frequent_key_survives_a_crowd_of_rare_ones() {
        let mut top = TopK::default();
        for i in 0..1_000 {
            top.record("hot", 4);
            top.record(&format!("rare-{i}"), 4);
        }
        assert!(top.entries.len() <= 4);
        assert_eq!(top.top(1)[0], ("hot".to_string(), 1_000));
    }
}
