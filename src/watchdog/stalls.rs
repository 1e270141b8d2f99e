//! Per-label stall statistics: how many stalls, the most frequent stacks and culprits, what the
//! blocked thread was doing, in bounded memory.
//!
//! The bound per label: [`TRACKED`] stacks of at most [`MAX_STACK_BYTES`] bytes each (at most
//! [`MAX_DEPTH`] frames of at most [`MAX_NAME_BYTES`] bytes), [`TRACKED`] culprits of at most
//! [`MAX_NAME_BYTES`] bytes, and [`MAX_CAUSES`] cause counters: about 136 KiB at worst.

use crate::report::{CulpritCount, StackCount};

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

/// What a stalled thread was doing when the watchdog looked at it: one per sample (each report
/// of a stall). The raw material of a stall's cause; only its counts are kept for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Running its own code (on a CPU, or runnable): the thread was signalled for its stack.
    Cpu,
    /// Blocked in the system call with this number (see `activity::syscall_name`): not
    /// signalled, since the signal would interrupt the call.
    Syscall(libc::c_long),
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
    /// not fit. (Read by tests only until the report shows causes.)
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn counts(&self) -> (Vec<(Cause, u64)>, u64) {
        let mut counts = self.counts.clone();
        counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        (counts, self.other)
    }
}

/// What the watchdog saw for one label in the current window.
#[derive(Default)]
pub(crate) struct LabelStalls {
    pub(crate) stalls: u64,
    pub(crate) stacks: TopK,
    pub(crate) culprits: TopK,
    /// What the blocked thread was doing, per sample.
    pub(crate) causes: Causes,
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

impl LabelStalls {
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
            .map(|(culprit, count)| CulpritCount { culprit, count })
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
