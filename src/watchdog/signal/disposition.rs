//! Which handler the signal reaches: which signals may be used, installing hogwatch's handler
//! once per process (and putting it back over a default disposition a profiler left), and
//! passing a signal that is not ours to the handler installed before.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};

use super::{fork_child, fork_parent, fork_prepare, handler, CaptureError, FULL_UNWIND, SIGNALS};

/// Whether `signal` can be used to interrupt threads: one meant for profiling or for the
/// program's own use, whose default action nobody relies on. Fault signals, `SIGINT`, `SIGTERM`
/// and the like are refused, and so are the real-time signals glibc keeps for itself (below
/// `SIGRTMIN()`).
pub(crate) fn usable(signal: c_int) -> bool {
    let own_use = [libc::SIGPROF, libc::SIGVTALRM, libc::SIGUSR1, libc::SIGUSR2];
    (own_use.contains(&signal) || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal))
        && usize::try_from(signal).is_ok_and(|index| index < SIGNALS)
}

/// The handler that was installed before ours, per signal (0: none, `SIG_DFL` or `SIG_IGN`).
pub(super) static PREVIOUS: [AtomicUsize; SIGNALS] = [const { AtomicUsize::new(0) }; SIGNALS];
/// Whether that previous handler takes three arguments (`SA_SIGINFO`).
static PREVIOUS_SIGINFO: [AtomicBool; SIGNALS] = [const { AtomicBool::new(false) }; SIGNALS];

/// Installs the handler for `signal`, once per process; it stays installed (a signal still in
/// flight must never meet the default action, which for `SIGPROF` ends the process).
///
/// # Errors
///
/// The `sigaction` error, if the kernel refuses the handler.
pub(crate) fn install(signal: c_int) -> std::io::Result<()> {
    static INSTALLED: Mutex<u128> = Mutex::new(0);
    static WARMED_UP: OnceLock<bool> = OnceLock::new();
    let index = usize::try_from(signal)
        .ok()
        .filter(|index| *index < SIGNALS && usable(signal))
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let full = *WARMED_UP.get_or_init(|| {
        // Locate the unwind tables and allocate the handlers' caches here, never in a handler.
        super::super::unwind::prepare();
        cfg!(target_arch = "x86_64")
    });
    FULL_UNWIND.store(full, Ordering::Relaxed);
    // A poisoned lock only means a thread panicked while holding it; the bit set is still valid.
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if *installed & (1 << index) != 0 {
        return Ok(());
    }
    static AT_FORK: Once = Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: the three handlers are extern "C" fns without arguments that stay valid for
        // the life of the process; see each one for what it may do at that point of a fork.
        // Registration fails only without memory, and then the child is merely less safe.
        let _ = unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child))
        };
    });
    let mut previous = zeroed_action();
    // SAFETY: `signal` is catchable (checked by `usable`), both pointers are valid for the call,
    // and `handler` is an extern "C" fn of the SA_SIGINFO shape, async-signal-safe as described
    // in the module docs.
    if unsafe { libc::sigaction(signal, &our_action(), &mut previous) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let chained = previous.sa_sigaction;
    if chained != libc::SIG_DFL && chained != libc::SIG_IGN {
        PREVIOUS_SIGINFO[index].store(previous.sa_flags & libc::SA_SIGINFO != 0, Ordering::Relaxed);
        PREVIOUS[index].store(chained, Ordering::Release);
    }
    *installed |= 1 << index;
    Ok(())
}

pub(super) fn zeroed_action() -> libc::sigaction {
    // SAFETY: an all-zero sigaction is a valid value of this plain C struct.
    unsafe { std::mem::zeroed() }
}

/// The address of [`handler`], as `sigaction` reports it.
pub(super) fn handler_address() -> usize {
    handler as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize
}

/// hogwatch's disposition: [`handler`] with `SA_SIGINFO` and `SA_RESTART` (system calls it
/// interrupts restart where the kernel allows). Not `SA_ONSTACK`: the unwinder needs more room
/// than the few kilobytes of an alternate signal stack (Rust gives each thread one for stack
/// overflows), so the handler runs on the thread's own stack, below the frames it reads, and
/// unwinds only with [`HEADROOM`] to spare there.
pub(super) fn our_action() -> libc::sigaction {
    let mut action = zeroed_action();
    action.sa_sigaction = handler_address();
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset_t inside `action`, which we own.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    action
}

/// How many times [`capture`] found the signal's disposition reset to the default (or ignored)
/// and installed the handler again.
static REINSTALLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times the handler was installed again since the process started (see [`capture`]).
pub(crate) fn reinstalled() -> u64 {
    REINSTALLED.load(Ordering::Relaxed)
}

/// Checks that `signal` still reaches [`handler`], re-installing it over a default or ignored
/// disposition (what a profiler leaves when it stops). Another handler is left alone.
pub(super) fn ensure_ours(signal: c_int) -> Result<(), CaptureError> {
    let mut current = zeroed_action();
    // SAFETY: a null new action only reads the current one into `current`, which we own.
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } != 0 {
        return Err(CaptureError::Displaced);
    }
    if current.sa_sigaction == handler_address() {
        return Ok(());
    }
    if current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN {
        return Err(CaptureError::Displaced);
    }
    // Whatever we chained to before has given up the signal: there is no one to pass it on to.
    if let Some(index) = usize::try_from(signal)
        .ok()
        .filter(|index| *index < SIGNALS)
    {
        PREVIOUS[index].store(0, Ordering::Release);
    }
    let mut replaced = zeroed_action();
    // SAFETY: as in `install`; `signal` was accepted by `install` before, so it is catchable.
    if unsafe { libc::sigaction(signal, &our_action(), &mut replaced) } != 0 {
        return Err(CaptureError::Displaced);
    }
    REINSTALLED.fetch_add(1, Ordering::Relaxed);
    // Someone else's handler may have come in between our two calls: put it back.
    if replaced.sa_sigaction != libc::SIG_DFL && replaced.sa_sigaction != libc::SIG_IGN {
        // SAFETY: `replaced` is the disposition the kernel just handed us, valid as it was.
        unsafe { libc::sigaction(signal, &replaced, std::ptr::null_mut()) };
        return Err(CaptureError::Displaced);
    }
    Ok(())
}

/// Calls the handler that was installed before ours, if there was a real one.
///
/// # Safety
///
/// Must be called from the signal handler for `signal`, with the arguments the kernel passed.
pub(super) unsafe fn chain(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let Some(index) = usize::try_from(signal)
        .ok()
        .filter(|index| *index < SIGNALS)
    else {
        return;
    };
    let previous = PREVIOUS[index].load(Ordering::Acquire);
    if previous == 0 {
        return;
    }
    if PREVIOUS_SIGINFO[index].load(Ordering::Relaxed) {
        // SAFETY: `previous` was the sa_sigaction of a handler installed with SA_SIGINFO, so it
        // is a function of this shape; the caller passes the kernel's own arguments.
        unsafe {
            let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                std::mem::transmute(previous);
            f(signal, info, context);
        }
    } else {
        // SAFETY: without SA_SIGINFO, sa_sigaction holds a one-argument sa_handler.
        unsafe {
            let f: extern "C" fn(c_int) = std::mem::transmute(previous);
            f(signal);
        }
    }
}
