//! Per-thread slots: which watched poll each thread is in, published so that the watchdog thread
//! can read it without a lock.
//!
//! A slot is a seqlock over three words: the detector's watchdog id, the address of the label's
//! statistics and the clock reading at the start of the poll. Only its own thread writes it (two
//! plain stores of the sequence number around three relaxed stores: no locked instruction), the
//! watchdog reads it and retries if the sequence moved. A thread's slot is allocated and
//! registered the first time it runs a watched poll of a detector with a watchdog, and leaves the
//! registry when the thread exits.
//!
//! The slots belong to the recorder, which publishes every poll here; the watchdog only reads
//! them. What the watchdog needs of each thread to interrupt it (its signal target) is made, on
//! the thread itself when it registers, by the hook the watchdog installs with
//! [`attach_with`], and kept here as an opaque [`Attachment`]: the recorder does not import the
//! watchdog.

use std::any::Any;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// What another subsystem keeps for each registered thread: a value it reads from the slot
/// (`Slot::attachment`), and a guard dropped on the thread as it exits, after its slot left the
/// list.
pub(crate) type Attachment = (Arc<dyn Any + Send + Sync>, Box<dyn Any>);

/// Makes a thread's attachment, on that thread, when it registers.
static ATTACH: OnceLock<fn() -> Attachment> = OnceLock::new();

/// Sets the hook that makes each thread's attachment (the first call wins: the watchdog's).
pub(crate) fn attach_with(attach: fn() -> Attachment) {
    let _ = ATTACH.set(attach);
}

/// What a thread publishes: the poll it is inside, or nothing (all zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    /// The watchdog id of the detector the poll belongs to (0: not in a watched poll).
    pub(crate) detector: u64,
    /// The address of the poll's `Label`, an identity only: never dereferenced.
    pub(crate) label: usize,
    /// Raw `quanta` clock reading at the start of the poll.
    pub(crate) start_raw: u64,
}

/// One thread's slot.
pub(crate) struct Slot {
    seq: AtomicU64,
    detector: AtomicU64,
    label: AtomicUsize,
    start_raw: AtomicU64,
    /// The start of a poll of this thread the watchdog found inside `block_in_place` (0: none):
    /// the thread had handed its worker's queue on, so the poll is no slow poll when it ends
    /// (see [`offloaded`]).
    offloaded_raw: AtomicU64,
    /// The thread's name (or its id if it has none).
    pub(crate) thread_name: Arc<str>,
    /// The thread's storage index (`super::thread`): what identifies it in the records of who
    /// held which thread (`super::delay`).
    pub(crate) thread_index: u64,
    /// What the watchdog attached to the thread (how to interrupt it for its stack).
    pub(crate) attachment: Option<Arc<dyn Any + Send + Sync>>,
}

impl Slot {
    /// Replaces what this thread publishes and returns what it published before. Only the
    /// slot's own thread calls this.
    #[inline]
    fn publish(&self, new: Published) -> Published {
        let seq = self.seq.load(Ordering::Relaxed);
        let old = Published {
            detector: self.detector.load(Ordering::Relaxed),
            label: self.label.load(Ordering::Relaxed),
            start_raw: self.start_raw.load(Ordering::Relaxed),
        };
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.detector.store(new.detector, Ordering::Relaxed);
        self.label.store(new.label, Ordering::Relaxed);
        self.start_raw.store(new.start_raw, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        old
    }

    /// The watchdog found the poll that started at `start_raw` inside `block_in_place`.
    pub(crate) fn offload(&self, start_raw: u64) {
        self.offloaded_raw.store(start_raw, Ordering::Relaxed);
    }

    /// A consistent reading of what the thread publishes, or `None` if it kept changing.
    pub(crate) fn read(&self) -> Option<Published> {
        for _ in 0..8 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let published = Published {
                detector: self.detector.load(Ordering::Relaxed),
                label: self.label.load(Ordering::Relaxed),
                start_raw: self.start_raw.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(published);
            }
        }
        None
    }
}

/// Every registered slot: locked when a thread registers or leaves, and by the watchdog once per
/// check to copy the list, never on the hot path.
static SLOTS: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// The current thread's registration, dropped when the thread exits.
struct Local {
    slot: Arc<Slot>,
    /// Dropped after the slot left the list (fields drop after `Drop::drop`).
    _guard: Option<Box<dyn Any>>,
}

impl Local {
    fn register() -> Self {
        let current = std::thread::current();
        let thread_name: Arc<str> = match current.name() {
            Some(name) => Arc::from(name),
            None => Arc::from(format!("{:?}", current.id())),
        };
        let (attachment, guard) = match ATTACH.get() {
            Some(attach) => {
                let (attachment, guard) = attach();
                (Some(attachment), Some(guard))
            }
            None => (None, None),
        };
        let slot = Arc::new(Slot {
            seq: AtomicU64::new(0),
            detector: AtomicU64::new(0),
            label: AtomicUsize::new(0),
            start_raw: AtomicU64::new(0),
            offloaded_raw: AtomicU64::new(0),
            thread_name,
            thread_index: super::thread::current().0 as u64,
            attachment,
        });
        lock().push(slot.clone());
        Self {
            slot,
            _guard: guard,
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        lock().retain(|slot| !Arc::ptr_eq(slot, &self.slot));
        // `_guard` drops next: the watchdog's waits for a capture in flight before the thread
        // goes.
    }
}

/// Taken before [`SLOTS`] and released after it, by every user of the list and by the fork
/// handlers around a `fork()`: while the forking thread holds it, no other thread is inside the
/// list's lock, so the child never inherits that lock held by a thread it does not have. (A
/// `std` mutex cannot be released by the fork handlers; this flag can.)
static GATE: AtomicBool = AtomicBool::new(false);

fn enter_gate() {
    while GATE
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
}

/// The slot list, locked. Fields drop in order: the mutex first, then the gate, so a fork that
/// waited for the gate finds the mutex free.
struct Locked {
    guard: MutexGuard<'static, Vec<Arc<Slot>>>,
    _gate: Gate,
}

/// Holds [`GATE`]; releases it when dropped.
struct Gate;

impl Drop for Gate {
    fn drop(&mut self) {
        GATE.store(false, Ordering::Release);
    }
}

impl std::ops::Deref for Locked {
    type Target = Vec<Arc<Slot>>;
    fn deref(&self) -> &Self::Target {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.guard
    }
}

fn lock() -> Locked {
    enter_gate();
    let gate = Gate;
    // A poisoned lock only means a thread panicked while holding it; the list is still whole.
    Locked {
        guard: SLOTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        _gate: gate,
    }
}

/// Before a fork (in the forking thread): waits until no thread uses the list, and keeps it so.
pub(crate) fn fork_prepare() {
    enter_gate();
}

/// After a fork, in parent and child: the list is free again.
pub(crate) fn fork_done() {
    GATE.store(false, Ordering::Release);
}

thread_local! {
    static LOCAL: Local = Local::register();
}

/// Publishes that the current thread started a poll; returns what to restore when it ends, or
/// `None` if the thread is exiting (its slot is gone).
#[inline]
pub(crate) fn poll_started(detector: u64, label: usize, start_raw: u64) -> Option<Published> {
    LOCAL
        .try_with(|local| {
            local.slot.publish(Published {
                detector,
                label,
                start_raw,
            })
        })
        .ok()
}

/// Publishes that the current thread's poll ended, restoring what `poll_started` returned (an
/// enclosing poll, or nothing).
#[inline]
pub(crate) fn poll_ended(previous: Published) {
    let _ = LOCAL.try_with(|local| local.slot.publish(previous));
}

/// Whether the watchdog found the current thread's poll that started at `start_raw` inside
/// `block_in_place` (off the hot path: only a slow poll asks).
pub(crate) fn offloaded(start_raw: u64) -> bool {
    start_raw != 0
        && LOCAL
            .try_with(|local| local.slot.offloaded_raw.load(Ordering::Relaxed) == start_raw)
            .unwrap_or(false)
}

/// Copies the registered slots into `into` (reusing its allocation).
pub(crate) fn snapshot(into: &mut Vec<Arc<Slot>>) {
    into.clear();
    into.extend(lock().iter().cloned());
}
