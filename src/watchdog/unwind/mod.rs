//! The exact unwinder: a thread's chain of return addresses from its registers, by the unwind
//! tables of the code it runs (`.eh_frame`, which every Linux object carries, even built with
//! `debug = false` or stripped), with [framehop](https://docs.rs/framehop).
//!
//! One unwinder serves both ways a stack is taken:
//! - **In the signal handler** ([`unwind_interrupted`]): from the registers the kernel saved in
//!   the signal context, reading the interrupted thread's own stack between its stack pointer
//!   and the top of its stack. No libgcc, no lock, no allocation: the tables are located once,
//!   before any signal ([`prepare`]), in the memory the loader mapped them to; framehop's rule
//!   cache and DWARF evaluation space are preallocated and claimed with an atomic flag.
//! - **For a thread blocked in a system call** ([`unwind_copied`]), which is never signalled:
//!   from the stack pointer and instruction pointer `/proc/self/task/TID/syscall` gives, over a
//!   copy of its stack. `/proc` gives no frame pointer (`rbp`), which the tables need for the
//!   frames of code built with frame pointers (Rust's standard library:
//!   `std::thread::sleep` starts with `push rbp; mov rbp, rsp`, so its frame's address is
//!   `rbp + 16`). The unwinder first takes it from where the tables prove a callee saved it;
//!   where no callee did, it tries each place on the stack where that frame could have saved
//!   its caller's return address, innermost first, and takes the first whose return address
//!   follows a **direct call to the start of the very function the frame is in** (the start
//!   is the one the unwind tables give the function). A return address left behind by a
//!   call that returned cannot pass that test unless it came from a call of the same
//!   function from the same place. Only if no direct call fits does it take a place that
//!   follows an indirect call (whose target cannot be checked): the frames from there on are
//!   marked uncertain. It never takes a word only because it looks like a return address.
//!
//! What can still be uncertain: frames past a frame-pointer frame reached through an indirect
//! call, in a stack read from `/proc` (marked), and frames of code that has no unwind tables
//! (hand-written assembly without CFI, JIT code), which framehop walks by frame pointers.
//! Libraries loaded after the watchdog started are found at the next sample; one unloaded
//! (`dlclose`) while a signal is being handled is not supported.
//!
//! Only x86_64 is unwound this way; elsewhere a stack is the interrupted instruction alone.
#![allow(unsafe_code)]

#[cfg(not(target_arch = "x86_64"))]
pub(crate) use fallback::*;

/// The most frames one stack records (innermost first).
pub(crate) const MAX_FRAMES: usize = 128;

/// Where one unwound stack ends up: return addresses after the first instruction pointer.
pub(crate) trait Sink {
    /// Takes the next address (innermost first); `false` when full.
    fn push(&mut self, address: usize) -> bool;
}

impl Sink for Vec<usize> {
    fn push(&mut self, address: usize) -> bool {
        Vec::push(self, address);
        self.len() < MAX_FRAMES
    }
}

/// A stack unwound from a copy: its addresses (innermost first, the instruction pointer
/// first) and the index of the first frame that is not certain (`ips.len()` if all are).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Copied {
    pub(crate) ips: Vec<usize>,
    pub(crate) uncertain_from: usize,
    /// The walk asked for memory past the end of the copy: a longer copy may go further.
    pub(crate) beyond_copy: bool,
}

#[cfg(not(target_arch = "x86_64"))]
mod fallback {
    use super::{Copied, Sink};
    use std::ffi::c_void;

    /// Nothing to prepare on this architecture.
    pub(crate) fn prepare() {}

    /// Looks for libraries loaded since [`prepare`]: none on this architecture.
    pub(crate) fn refresh() {}

    /// The interrupted instruction alone.
    pub(crate) fn unwind_interrupted(
        pc: usize,
        _context: *const c_void,
        _stack_top: usize,
        sink: &mut impl Sink,
    ) {
        sink.push(pc);
    }

    /// The unwinder's working memory for stacks read from `/proc`: none here.
    #[derive(Default)]
    pub(crate) struct Scratch;

    /// The instruction that made the call alone.
    pub(crate) fn unwind_copied(pc: usize, _sp: usize, _stack: &[u8], _: &mut Scratch) -> Copied {
        Copied {
            ips: vec![pc],
            uncertain_from: 1,
            beyond_copy: false,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod objects;
#[cfg(target_arch = "x86_64")]
mod walk;

#[cfg(target_arch = "x86_64")]
pub(crate) use objects::refresh;
#[cfg(target_arch = "x86_64")]
pub(crate) use walk::{prepare, unwind_copied, unwind_interrupted, Scratch};
