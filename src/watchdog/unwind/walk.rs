//! The walk itself: in the signal handler from the interrupted registers, or over a blocked
//! thread's copied stack with its frame pointer recovered (see the parent module).

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64};
use framehop::{FrameAddress, MustNotAllocateDuringUnwind, Unwinder};

use super::objects::{current, refresh, Call, Process};
use super::{Copied, Sink};

type Cache = CacheX86_64<MustNotAllocateDuringUnwind>;

/// The unwinder's working memory for stacks read from `/proc` (framehop's rule cache and
/// DWARF evaluation space), kept by the watchdog thread that reads them.
pub(crate) struct Scratch(Box<Cache>);

impl Default for Scratch {
    fn default() -> Self {
        Self(Box::new(Cache::new_in()))
    }
}

/// How many signal handlers can unwind at once (one per watchdog capturing); a handler that
/// finds none free records the interrupted instruction alone.
const CACHES: usize = 4;

/// The most bytes above a frame's stack pointer searched for its saved frame pointer.
const MAX_FRAME_BYTES: usize = 64 * 1024;

struct CacheSlot {
    busy: AtomicBool,
    cache: UnsafeCell<Cache>,
}

// SAFETY: the cache inside is only touched by whoever set `busy` from false to true, until
// it clears it again: one user at a time.
unsafe impl Sync for CacheSlot {}

static POOL: OnceLock<Box<[CacheSlot]>> = OnceLock::new();

/// Finds the loaded objects' unwind tables and allocates the handlers' caches. Call it
/// before any signal is sent (it takes the loader's lock and allocates).
pub(crate) fn prepare() {
    POOL.get_or_init(|| {
        (0..CACHES)
            .map(|_| CacheSlot {
                busy: AtomicBool::new(false),
                cache: UnsafeCell::new(Cache::new_in()),
            })
            .collect()
    });
    refresh();
}

/// Unwinds the thread the signal interrupted, from the registers saved in `context`,
/// reading its stack only between its stack pointer and `stack_top` (the top of the
/// thread's stack). Runs in the signal handler: no lock, no allocation. Pushes the interrupted
/// instruction, then each return address.
pub(crate) fn unwind_interrupted(
    pc: usize,
    context: *const c_void,
    stack_top: usize,
    sink: &mut impl Sink,
) {
    if !sink.push(pc) || context.is_null() {
        return;
    }
    let (Some(process), Some(pool)) = (current(), POOL.get()) else {
        return;
    };
    let Some(slot) = pool.iter().find(|slot| {
        slot.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }) else {
        return;
    };
    let context = context.cast::<libc::ucontext_t>();
    // SAFETY: an SA_SIGINFO handler's third argument is a valid ucontext_t for the
    // handler's duration; the indices are within gregs.
    let (sp, bp) = unsafe {
        let gregs = &(*context).uc_mcontext.gregs;
        (
            gregs[libc::REG_RSP as usize] as usize,
            gregs[libc::REG_RBP as usize] as usize,
        )
    };
    let top = stack_top;
    let mut read = |address: u64| -> Result<u64, ()> {
        let address = address as usize;
        // Only the interrupted thread's live stack: mapped from its stack pointer up.
        if address < sp || address.checked_add(8).is_none_or(|end| end > top) || top == 0 {
            return Err(());
        }
        // SAFETY: an aligned-or-not 8-byte read inside [sp, top) of the interrupted
        // thread's stack, which is mapped and does not move while the thread is stopped
        // in this handler.
        Ok(unsafe { std::ptr::read_unaligned(address as *const u64) })
    };
    // SAFETY: `busy` was set by us just now: this cache is ours until we clear it.
    let cache = unsafe { &mut *slot.cache.get() };
    let mut regs = UnwindRegsX86_64::new(pc as u64, sp as u64, bp as u64);
    let mut address = FrameAddress::InstructionPointer(pc as u64);
    while let Ok(Some(next)) = process
        .unwinder
        .unwind_frame(address, &mut regs, cache, &mut read)
    {
        let Some(next_address) = FrameAddress::from_return_address(next) else {
            break;
        };
        if !sink.push(next as usize) {
            break;
        }
        address = next_address;
    }
    slot.busy.store(false, Ordering::Release);
}

/// A blocked thread's stack, from the stack pointer `sp` and instruction pointer `pc` of
/// its system call, over `stack`, a copy of its memory from `sp` up. Not for the handler.
pub(crate) fn unwind_copied(pc: usize, sp: usize, stack: &[u8], scratch: &mut Scratch) -> Copied {
    let cache = &mut *scratch.0;
    let mut copied = Copied {
        ips: vec![pc],
        uncertain_from: usize::MAX,
        beyond_copy: false,
    };
    let Some(process) = current() else {
        copied.uncertain_from = copied.ips.len();
        return copied;
    };
    let mut beyond_copy = false;
    let mut read = |address: u64| -> Result<u64, ()> {
        let offset = (address as usize).checked_sub(sp).ok_or(())?;
        let Some(bytes) = stack.get(offset..offset.checked_add(8).ok_or(())?) else {
            beyond_copy = true;
            return Err(());
        };
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(word))
    };
    // 0 stands for "not known": no frame pointer of a live frame is 0, and a rule that
    // needs it then fails (framehop refuses a frame at `0 + 16`, below the stack pointer),
    // which is where `recover` steps in.
    let mut regs = UnwindRegsX86_64::new(pc as u64, sp as u64, 0);
    let mut address = FrameAddress::InstructionPointer(pc as u64);
    while copied.ips.len() < super::MAX_FRAMES {
        let before = regs;
        let mut after = before;
        let step = process
            .unwinder
            .unwind_frame(address, &mut after, cache, &mut read);
        let next = match step {
            Ok(Some(next)) if after.sp() > before.sp() => Some((next, after)),
            // With the frame pointer unknown, framehop's frame-pointer rule reads `bp == 0`
            // as the end of the stack (Ok(None)) or fails: recover it either way.
            _ if before.bp() == 0 => match recover(process, address, before, &mut read, cache) {
                Some((next, after, certain)) => {
                    if !certain && copied.uncertain_from == usize::MAX {
                        copied.uncertain_from = copied.ips.len();
                    }
                    Some((next, after))
                }
                None => None,
            },
            _ => None,
        };
        let Some((next, after)) = next else {
            break;
        };
        let Some(next_address) = FrameAddress::from_return_address(next) else {
            break;
        };
        copied.ips.push(next as usize);
        regs = after;
        address = next_address;
    }
    if copied.uncertain_from == usize::MAX {
        copied.uncertain_from = copied.ips.len();
    }
    copied.beyond_copy = beyond_copy;
    copied
}

/// The step out of the frame at `address` whose rule needs the frame pointer `/proc` did
/// not give: the first place on the stack (innermost first) where that frame can have
/// saved its caller's frame pointer and return address, such that the return address
/// follows a direct call to the start of the frame's function (certain), or else follows
/// an indirect call and the walk goes on from there (uncertain).
fn recover<R: FnMut(u64) -> Result<u64, ()>>(
    process: &Process,
    address: FrameAddress,
    regs: UnwindRegsX86_64,
    read: &mut R,
    cache: &mut Cache,
) -> Option<(u64, UnwindRegsX86_64, bool)> {
    let function = process
        .function_range(address.address_for_lookup() as usize)
        .map(|range| range.start);
    // Only a function that keeps a frame pointer needs one (its rule reads `rbp`); any
    // other frame's walk ended or failed for a reason of its own (the thread's start).
    if !function.is_some_and(|function| process.keeps_frame_pointer(function)) {
        return None;
    }
    let function = function?;
    let sp = regs.sp();
    let mut indirect = None;
    // Places followed by a direct call elsewhere, for the tail-call pass.
    let mut elsewhere: Vec<(u64, u64, usize)> = Vec::new();
    // The step with `bp` as the frame pointer, if it leads to `return_address`.
    let mut confirm = |bp: u64, return_address: u64, read: &mut R| {
        let mut after = regs;
        after.set_bp(bp);
        match process
            .unwinder
            .unwind_frame(address, &mut after, cache, read)
        {
            Ok(Some(next)) if next == return_address => Some((next, after)),
            _ => None,
        }
    };
    for offset in (0..MAX_FRAME_BYTES as u64).step_by(8) {
        let bp = sp + offset;
        let Ok(return_address) = read(bp + 8) else {
            break;
        };
        match process.call_before(return_address as usize) {
            Call::None => {}
            Call::Direct(target) if target == function => {
                if let Some((next, after)) = confirm(bp, return_address, read) {
                    return Some((next, after, true));
                }
            }
            Call::Direct(target) => elsewhere.push((bp, return_address, target)),
            Call::Indirect | Call::Through(_) => {
                indirect = indirect.or(Some(bp));
            }
        }
    }
    // A call to a function that tail-calls the frame's own (`jmp` to it): the caller called
    // a function that left no frame of its own. Read from code, so only where no direct
    // call to the function itself was found.
    for (bp, return_address, target) in elsewhere {
        if process.jumps_to(target, function) {
            if let Some((next, after)) = confirm(bp, return_address, read) {
                return Some((next, after, true));
            }
        }
    }
    let bp = indirect?;
    let mut after = regs;
    after.set_bp(bp);
    match process
        .unwinder
        .unwind_frame(address, &mut after, cache, read)
    {
        Ok(Some(next)) => Some((next, after, false)),
        _ => None,
    }
}
