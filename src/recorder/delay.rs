//! Who pays for a hog: the delay the lag probe suffered, attributed to the labels whose polls
//! held workers while it waited.
//!
//! The lag probe is a task like any other: woken by the runtime's driver (its timer), it waits in
//! a run queue until a worker polls it. When it runs more than a threshold late, the runtime made
//! every task woken by the driver in that interval (a socket's, a timer's) wait about as long:
//! while one worker is held, tokio's other workers sleep until someone drives the timer and the
//! sockets, and the held worker is that someone. (Measured: canary tasks on 1 and 2 workers suffer
//! within a few percent of the probe's lateness, `tests/inflicted_delay.rs`.)
//!
//! Two bounded records meet here, off the hot path:
//! - **held**: each slow poll (and each stall the runtime watchdog saw) pushes *which label held
//!   which thread from when to when* into a lock-free ring, from the slow-poll path only;
//! - **late**: the probe pushes each late interval (from when it should have run to when it ran).
//!
//! A late interval is attributed once it is [`GRACE`] thresholds and [`GRACE_NS`] old (a stall of
//! an unwrapped task is only known when the watchdog sees it end). Only what held a thread the
//! probe has run on counts: those are its runtime's, and another runtime's slow polls delay
//! nobody there. Each instant of the interval goes to the innermost held interval of each thread
//! covering that instant, shared equally between threads; an instant no
//! held interval covers is *unattributed* (many short polls, unwatched code, the machine). So the
//! attributed and unattributed delay add up to the probe's lateness exactly. A label's figure is
//! the delay a task waiting on the runtime suffered because of it: per waiting task, not summed
//! over tasks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Held intervals kept: at a slow poll every 100 µs (ten thousand a second) the last ~100 ms.
/// Older ones are overwritten; a late interval they would have explained is unattributed.
const RING: usize = 1024;
/// Late intervals waiting to be attributed (the probe adds at most one per wake-up).
const PENDING: usize = 256;
/// A late interval is attributed when it ended this many thresholds ago, plus [`GRACE_NS`]: time
/// for the watchdog to see a stall end (it checks every quarter threshold).
const GRACE: u64 = 2;
const GRACE_NS: u64 = 50_000_000;
/// Threads the probe is known to run on, at most (tokio's workers, a current-thread runtime's
/// one thread): more than `super::thread::EXCLUSIVE` cannot be told apart anyway.
const PROBE_THREADS: usize = super::thread::SLOTS;

/// One slow poll or stall: `label` (an address: `Label`s live as long as the registry) held
/// `thread` (its storage index, `super::thread`) from `start_raw` at least to `end_raw`. A stall the runtime watchdog follows is pushed
/// again at each sample with a later end; the latest counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) label: usize,
    pub(crate) thread: u64,
    pub(crate) start_raw: u64,
    pub(crate) end_raw: u64,
}

/// A ring entry: a seqlock over the four words of a [`Held`].
#[derive(Default)]
struct Entry {
    seq: AtomicU64,
    label: AtomicUsize,
    thread: AtomicU64,
    start_raw: AtomicU64,
    end_raw: AtomicU64,
}

/// The late intervals not attributed yet, and the threads the probe ran on.
struct Pending {
    late: Vec<(u64, u64)>,
    /// The probe's runtime's threads, as far as it has seen them: only what held one of them
    /// made it late. (A detector watching futures on several runtimes measures the probe's; a
    /// slow poll on another runtime's thread delays nobody there.)
    probe_threads: Vec<u64>,
}

/// The ledger a recorder keeps.
pub(crate) struct Delays {
    ring: Box<[Entry]>,
    next: AtomicUsize,
    pending: Mutex<Pending>,
    /// Late time counted, in nanoseconds, cumulative: all of it, and what nobody held.
    delay_ns: AtomicU64,
    unattributed_ns: AtomicU64,
    /// What the last reset saw of the two.
    baseline: Mutex<(u64, u64)>,
}

/// The delay over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DelayWindow {
    pub(crate) delay_ns: u64,
    pub(crate) unattributed_ns: u64,
}

impl Delays {
    pub(crate) fn new() -> Self {
        Self {
            ring: (0..RING).map(|_| Entry::default()).collect(),
            next: AtomicUsize::new(0),
            pending: Mutex::new(Pending {
                late: Vec::new(),
                probe_threads: Vec::new(),
            }),
            delay_ns: AtomicU64::new(0),
            unattributed_ns: AtomicU64::new(0),
            baseline: Mutex::new((0, 0)),
        }
    }

    /// Records that `held.label` held a thread. Lock-free: a slot another writer is filling at
    /// the same moment (the ring wrapped under it) is skipped, and this interval lost.
    pub(crate) fn held(&self, held: Held) {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % RING;
        let entry = &self.ring[index];
        let seq = entry.seq.load(Ordering::Relaxed);
        if seq % 2 == 1
            || entry
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // The odd sequence before the words (as `slot::Slot::publish` does): a reader that sees
        // any of the new words sees the entry being written.
        std::sync::atomic::fence(Ordering::Release);
        entry.label.store(held.label, Ordering::Relaxed);
        entry.thread.store(held.thread, Ordering::Relaxed);
        entry.start_raw.store(held.start_raw, Ordering::Relaxed);
        entry.end_raw.store(held.end_raw, Ordering::Relaxed);
        entry.seq.store(seq + 2, Ordering::Release);
    }

    /// The probe ran on `thread` (each wake-up says).
    pub(crate) fn probe_ran_on(&self, thread: u64) {
        let mut pending = self.lock();
        if !pending.probe_threads.contains(&thread) && pending.probe_threads.len() < PROBE_THREADS {
            pending.probe_threads.push(thread);
        }
    }

    /// The probe ran `late` (from when it should have to when it did, raw clock readings) more
    /// than a threshold late.
    pub(crate) fn late(&self, late: (u64, u64)) {
        let mut pending = self.lock();
        if pending.late.len() >= PENDING {
            // Bounded whatever happens: the oldest is counted as nobody's.
            let (from, to) = pending.late.remove(0);
            self.count(to.saturating_sub(from), to.saturating_sub(from));
        }
        pending.late.push(late);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every critical section leaves the list whole.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, delay: u64, unattributed: u64) {
        self.delay_ns.fetch_add(delay, Ordering::Relaxed);
        self.unattributed_ns
            .fetch_add(unattributed, Ordering::Relaxed);
    }

    /// Attributes every late interval that ended at least the grace before `now_raw`: `credit`
    /// receives (label address, raw ticks) for each label's share. `ticks_per_ns` converts.
    pub(crate) fn attribute(
        &self,
        now_raw: u64,
        grace_ticks: u64,
        ticks: super::Ticks,
        mut credit: impl FnMut(usize, u64),
    ) {
        let mut pending = self.lock();
        let ripe = pending
            .late
            .iter()
            .take_while(|(_, to)| to.saturating_add(grace_ticks) <= now_raw)
            .count();
        if ripe == 0 {
            return;
        }
        let mut held = self.read_ring();
        let threads = std::mem::take(&mut pending.probe_threads);
        held.retain(|held| threads.contains(&held.thread));
        pending.probe_threads = threads;
        for (from, to) in pending.late.drain(..ripe) {
            let mut nobody = 0;
            for (label, share) in shares(&held, from, to, &mut nobody) {
                credit(label, ticks.ns(share));
            }
            self.count(ticks.ns(to.saturating_sub(from)), ticks.ns(nobody));
        }
    }

    /// Every consistent entry of the ring, for one attribution.
    fn read_ring(&self) -> Vec<Held> {
        let mut held = Vec::new();
        for entry in self.ring.iter() {
            let before = entry.seq.load(Ordering::Acquire);
            if before == 0 || before % 2 == 1 {
                continue;
            }
            let read = Held {
                label: entry.label.load(Ordering::Relaxed),
                thread: entry.thread.load(Ordering::Relaxed),
                start_raw: entry.start_raw.load(Ordering::Relaxed),
                end_raw: entry.end_raw.load(Ordering::Relaxed),
            };
            std::sync::atomic::fence(Ordering::Acquire);
            if entry.seq.load(Ordering::Relaxed) == before {
                held.push(read);
            }
        }
        held
    }

    /// The window's delay, in nanoseconds; with `reset`, a new window starts.
    pub(crate) fn window(&self, reset: bool) -> DelayWindow {
        let now = (
            self.delay_ns.load(Ordering::Relaxed),
            self.unattributed_ns.load(Ordering::Relaxed),
        );
        let mut baseline = self
            .baseline
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = DelayWindow {
            delay_ns: now.0.wrapping_sub(baseline.0),
            unattributed_ns: now.1.wrapping_sub(baseline.1),
        };
        if reset {
            *baseline = now;
        }
        window
    }
}

/// How long after it ended a late interval is attributed, in nanoseconds.
pub(crate) fn grace_ns(threshold_ns: u64) -> u64 {
    threshold_ns.saturating_mul(GRACE).saturating_add(GRACE_NS)
}

/// Each label's share of the late interval `from..to` (raw ticks), and in `nobody` the time no
/// held interval covers. An instant covered on several threads is shared equally between them;
/// on one thread it goes to the innermost interval covering it (a watched future's poll inside
/// its task's poll: the future's label). A stall pushed at several samples counts to its latest
/// end.
fn shares(held: &[Held], from: u64, to: u64, nobody: &mut u64) -> Vec<(usize, u64)> {
    let mut overlapping: Vec<Held> = held
        .iter()
        .filter(|held| held.start_raw < to && held.end_raw > from)
        .copied()
        .collect();
    // The same stall pushed at several samples: keep the latest end.
    overlapping.sort_by_key(|held| {
        (
            held.thread,
            held.start_raw,
            held.label,
            std::cmp::Reverse(held.end_raw),
        )
    });
    overlapping.dedup_by(|later, earlier| {
        later.thread == earlier.thread
            && later.start_raw == earlier.start_raw
            && later.label == earlier.label
    });
    let mut cuts: Vec<u64> = vec![from, to];
    for held in &overlapping {
        cuts.extend([held.start_raw.max(from), held.end_raw.min(to)]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut shares: Vec<(usize, u64)> = Vec::new();
    let mut innermost: Vec<Held> = Vec::new();
    for piece in cuts.windows(2) {
        let (start, end) = (piece[0], piece[1]);
        innermost.clear();
        for held in overlapping
            .iter()
            .filter(|held| held.start_raw <= start && held.end_raw >= end)
        {
            match innermost.iter_mut().find(|kept| kept.thread == held.thread) {
                Some(kept) if length(held) < length(kept) => *kept = *held,
                Some(_) => {}
                None => innermost.push(*held),
            }
        }
        let span = end - start;
        if innermost.is_empty() {
            *nobody += span;
            continue;
        }
        let count = innermost.len() as u64;
        for (index, held) in innermost.iter().enumerate() {
            // The remainder of an uneven split goes to the first, so the shares add up.
            let share = span / count + if index == 0 { span % count } else { 0 };
            match shares.iter_mut().find(|(label, _)| *label == held.label) {
                Some((_, total)) => *total += share,
                None => shares.push((held.label, share)),
            }
        }
    }
    shares
}

fn length(held: &Held) -> u64 {
    held.end_raw.saturating_sub(held.start_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(label: usize, thread: u64, start_raw: u64, end_raw: u64) -> Held {
        Held {
            label,
            thread,
            start_raw,
            end_raw,
        }
    }

    #[test]
    fn a_late_interval_goes_to_what_held_it_and_the_rest_to_nobody() {
        let mut nobody = 0;
        let shares = shares(
            &[held(1, 0, 50, 200), held(2, 0, 0, 40)],
            100,
            300,
            &mut nobody,
        );
        assert_eq!(shares, vec![(1, 100)]);
        assert_eq!(nobody, 100);
    }

    #[test]
    fn two_threads_holding_at_once_share_and_the_innermost_wins_on_one() {
        let mut nobody = 0;
        // Thread 0: a task poll 0..400 with a watched future's poll 100..300 inside it.
        // Thread 1: another label 200..400.
        let held = [
            held(1, 0, 0, 400),
            held(2, 0, 100, 300),
            held(3, 1, 200, 400),
        ];
        let mut shares = shares(&held, 0, 400, &mut nobody);
        shares.sort_unstable();
        // 0..100: 1 alone; 100..200: 2 alone; 200..300: 2 and 3; 300..400: 1 and 3.
        assert_eq!(shares, vec![(1, 150), (2, 150), (3, 100)]);
        assert_eq!(nobody, 0);
        assert_eq!(shares.iter().map(|(_, ns)| ns).sum::<u64>(), 400);
    }

    #[test]
    fn a_stall_pushed_at_each_sample_counts_once_to_its_latest_end() {
        let mut nobody = 0;
        let held = [held(7, 9, 10, 30), held(7, 9, 10, 60), held(7, 9, 10, 45)];
        assert_eq!(shares(&held, 0, 100, &mut nobody), vec![(7, 50)]);
        assert_eq!(nobody, 50);
    }

    #[test]
    fn only_what_held_a_thread_of_the_probes_runtime_is_charged() {
        let delays = Delays::new();
        let ticks = super::super::Ticks::of(&quanta::Clock::new());
        // Thread 1 is the probe's runtime's; thread 2 another runtime's, blocking at the time.
        delays.probe_ran_on(1);
        delays.held(held(10, 1, 0, 50));
        delays.held(held(20, 2, 0, 100));
        delays.late((0, 100));
        let mut credited = Vec::new();
        delays.attribute(u64::MAX, 0, ticks, |label, ns| credited.push((label, ns)));
        assert_eq!(credited, vec![(10, ticks.ns(50))]);
        let window = delays.window(false);
        assert_eq!(window.unattributed_ns, ticks.ns(50));
    }

    #[test]
    fn entries_read_while_writers_wrap_the_ring_are_whole() {
        let delays = std::sync::Arc::new(Delays::new());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..3u64)
            .map(|writer| {
                let (delays, stop, written) = (delays.clone(), stop.clone(), written.clone());
                std::thread::spawn(move || {
                    let mut n = writer << 40;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        delays.held(held(n as usize, n, n, n + 1));
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Reading starts once the writers have wrapped the ring twice: on a loaded machine they
        // once had not written at all when 2,000 reads of an empty ring were over.
        let started = std::time::Instant::now();
        while written.load(Ordering::Relaxed) < 2 * RING as u64 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "no writes"
            );
            std::thread::yield_now();
        }
        let before = written.load(Ordering::Relaxed);
        let mut read = 0;
        let mut rounds = 0;
        // 2,000 reads at least, and until the writers have written meanwhile (on a loaded
        // machine a reader may run alone for a while).
        while rounds < 2_000 || written.load(Ordering::Relaxed) == before {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "no writes"
            );
            rounds += 1;
            for entry in delays.read_ring() {
                let n = entry.start_raw;
                assert_eq!(
                    (entry.label as u64, entry.thread, entry.end_raw),
                    (n, n, n + 1)
                );
                read += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        writers
            .into_iter()
            .for_each(|writer| writer.join().unwrap());
        assert!(read > 0);
    }

    #[test]
    fn the_ring_keeps_the_latest_and_attribution_waits_for_the_grace() {
        let delays = Delays::new();
        let ticks = super::super::Ticks::of(&quanta::Clock::new());
        for index in 0..RING as u64 + 10 {
            delays.held(held(index as usize, 0, index * 10, index * 10 + 5));
        }
        let ring = delays.read_ring();
        assert_eq!(ring.len(), RING);
        assert!(
            ring.iter().all(|held| held.label >= 10),
            "the oldest were overwritten"
        );
        let late_from = (RING as u64 + 5) * 10;
        delays.probe_ran_on(0);
        delays.late((late_from, late_from + 5));
        let mut credited = Vec::new();
        delays.attribute(late_from + 100, 1_000, ticks, |label, ns| {
            credited.push((label, ns))
        });
        assert!(credited.is_empty(), "not ripe yet");
        delays.attribute(late_from + 5 + 1_000, 1_000, ticks, |label, ns| {
            credited.push((label, ns))
        });
        assert_eq!(credited.len(), 1);
        assert_eq!(credited[0].0, RING + 5);
        assert_eq!(delays.window(true).unattributed_ns, 0);
        assert_eq!(delays.window(false), DelayWindow::default(), "a new window");
    }
}
