//! Which storage a thread writes: a slot of its own among the first [`EXCLUSIVE`] threads that
//! poll at once, or one slot all further threads share.
//!
//! A thread takes a slot index the first time it records a poll and gives it back when it exits,
//! so a pool that churns threads (tokio's blocking pool) reuses slots instead of growing. The
//! index is process-wide: every detector's labels keep their per-thread storage at the same
//! index. A slot held by one live thread is written by that thread alone, with plain loads and
//! stores and no locked instruction; the shared slot is written with atomic adds.

use std::cell::Cell;
use std::sync::Mutex;

/// Threads that get a slot of their own. More than the cores of nearly any server runs workers
/// on, few enough that memory stays bounded: see `super::label` for the formula.
pub(crate) const EXCLUSIVE: usize = 64;
/// The index of the slot shared by every thread beyond [`EXCLUSIVE`].
pub(crate) const SHARED: usize = EXCLUSIVE;
/// Slots per label.
pub(crate) const SLOTS: usize = EXCLUSIVE + 1;

const UNASSIGNED: u32 = u32::MAX;

thread_local! {
    /// This thread's slot index, `UNASSIGNED` until its first poll. A `const` `Cell` of a `Copy`
    /// type has no destructor, so it stays readable while other thread-locals are destroyed.
    static INDEX: Cell<u32> = const { Cell::new(UNASSIGNED) };
    /// Gives the index back when the thread exits.
    static LEASE: Lease = const { Lease };
}

/// Free indexes and the next never used one: locked only when a thread starts or ends recording.
static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    next: 0,
});

struct Pool {
    free: Vec<u32>,
    next: u32,
}

struct Lease;

impl Drop for Lease {
    fn drop(&mut self) {
        let index = INDEX.replace(SHARED as u32);
        if (index as usize) < EXCLUSIVE {
            // Whatever this thread still records (other thread-locals' destructors) goes to the
            // shared slot from now on; the next owner of `index` sees every store made before
            // this (the mutex orders them).
            lock().free.push(index);
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A poisoned pool is still consistent: every critical section is a push or a pop.
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The current thread's slot index, and whether the thread has it to itself.
#[inline]
pub(crate) fn current() -> (usize, bool) {
    let index = INDEX.get();
    if index != UNASSIGNED {
        let index = index as usize;
        return (index, index != SHARED);
    }
    assign()
}

#[cold]
#[inline(never)]
fn assign() -> (usize, bool) {
    // Registering the lease's destructor may fail on an exiting thread: share then.
    let leased = LEASE.try_with(|_| ()).is_ok();
    let index = if leased {
        let mut pool = lock();
        match pool.free.pop() {
            Some(index) => index,
            None if (pool.next as usize) < EXCLUSIVE => {
                pool.next += 1;
                pool.next - 1
            }
            None => SHARED as u32,
        }
    } else {
        SHARED as u32
    };
    INDEX.set(index);
    (index as usize, index as usize != SHARED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_threads_never_share_an_exclusive_slot() {
        let (mine, exclusive) = current();
        assert_eq!(current(), (mine, exclusive), "stable within a thread");
        let theirs: Vec<(usize, bool)> = (0..4)
            .map(|_| std::thread::spawn(current))
            .map(|thread| thread.join().unwrap())
            .collect();
        // Each of those threads exited before the next was spawned: they may reuse one slot,
        // but never take this (live) thread's.
        for (index, exclusive) in theirs {
            assert!(!exclusive || index != mine);
        }
    }
}
