//! What a thread is doing right now, read from `/proc` without interrupting it: running its own
//! code, or blocked in a system call (which a signal would interrupt: the kernel never restarts
//! `read` on a socket with a timeout, `poll`, `epoll_wait`, `nanosleep`... after a handler).
//!
//! Two files of `/proc/self/task/TID` tell: `syscall` says `running` while the thread is running
//! or runnable (on a CPU or in a run queue: the file does not tell which), `-1 …` when it is
//! stopped in its own code, and the system call's number, arguments, stack pointer and
//! instruction pointer when it is inside one; `stat`'s third field is the scheduler state (`R` running or
//! runnable, `S` and `D` asleep...). Reading them allocates and does I/O: the watchdog thread
//! does it, never the watched one.

use std::io::Read;

/// What a thread was doing when looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activity {
    /// Running or runnable in user space: a signal interrupts only its code.
    User,
    /// Inside the system call with this number, entered with these user registers.
    Syscall(libc::c_long, Registers),
    /// Changing state between the two reads: look again later.
    Unknown,
    /// `/proc` could not be read (not mounted, or the thread is gone).
    Unreadable,
}

/// Where a thread blocked in a system call stands: the user stack pointer and the instruction
/// that made the call (0 when `/proc` does not say), from which its stack can be scanned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Registers {
    pub(crate) sp: usize,
    pub(crate) pc: usize,
    /// The call's first argument: for `futex` the word waited on, for `epoll_wait` the epoll
    /// descriptor (a park of tokio's is told by it, see `sampler`).
    pub(crate) arg0: usize,
}

/// A thread's scheduler clock from `/proc/self/task/TID/schedstat`: its time on a CPU, in
/// nanoseconds since it started. (The file's second field, the time spent waiting in a run
/// queue, grows only when a wait ends: it says nothing of a thread stuck in the queue now.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SchedClocks {
    pub(crate) cpu_ns: u64,
    /// How many times it has been put on a CPU (the file's third field): a thread that never
    /// left a system call has had no new one.
    pub(crate) timeslices: u64,
}

/// Reads threads' activity, reusing its buffers.
#[derive(Default)]
pub(crate) struct Reader {
    path: String,
    buffer: Vec<u8>,
}

impl Reader {
    /// What thread `tid` of this process is doing.
    pub(crate) fn read(&mut self, tid: i32) -> Activity {
        let (syscall, registers) = match self.read_file(tid, "syscall") {
            Some(text) => (parse_syscall(text), parse_registers(text)),
            None => return Activity::Unreadable,
        };
        match syscall {
            Some(nr) if nr >= 0 => Activity::Syscall(nr, registers),
            // `running` or `-1`: on a CPU, or off it in user space. The state must agree: a
            // thread that went to sleep between the two reads is in a system call by now.
            _ => match self.read_file(tid, "stat").and_then(parse_state) {
                Some(b'R') => Activity::User,
                Some(_) => Activity::Unknown,
                None => Activity::Unreadable,
            },
        }
    }

    /// Thread `tid`'s scheduler clock, or `None` if `/proc` does not have them (a kernel
    /// without `CONFIG_SCHED_INFO`, or the thread is gone).
    pub(crate) fn clocks(&mut self, tid: i32) -> Option<SchedClocks> {
        let text = self.read_file(tid, "schedstat")?;
        let mut fields = std::str::from_utf8(text).ok()?.split_ascii_whitespace();
        let cpu_ns = fields.next()?.parse().ok()?;
        let timeslices = fields.nth(1)?.parse().ok()?;
        Some(SchedClocks { cpu_ns, timeslices })
    }

    /// How many times thread `tid` has left a CPU of its own accord (to wait: a worker parking),
    /// from `/proc/…/status`; `None` if unreadable.
    pub(crate) fn voluntary_switches(&mut self, tid: i32) -> Option<u64> {
        let text = std::str::from_utf8(self.read_file(tid, "status")?).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))?
            .trim()
            .parse()
            .ok()
    }

    /// Thread `tid`'s `/proc/…/syscall` line as it is (the call's number, arguments, stack and
    /// instruction pointers), to tell one call from another.
    pub(crate) fn syscall_line(&mut self, tid: i32) -> Option<Vec<u8>> {
        self.read_file(tid, "syscall").map(<[u8]>::to_vec)
    }

    fn read_file(&mut self, tid: i32, name: &str) -> Option<&[u8]> {
        use std::fmt::Write;
        self.path.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.path, "/proc/self/task/{tid}/{name}");
        self.buffer.clear();
        std::fs::File::open(&self.path)
            .and_then(|mut file| file.read_to_end(&mut self.buffer))
            .ok()?;
        Some(&self.buffer)
    }
}

/// The system call number from `/proc/…/syscall` (`-1`: in user space), or `None` for `running`.
fn parse_syscall(text: &[u8]) -> Option<libc::c_long> {
    let first = text.split(|byte| byte.is_ascii_whitespace()).next()?;
    std::str::from_utf8(first).ok()?.parse().ok()
}

/// The user stack pointer and instruction pointer, the last two fields of `/proc/…/syscall`
/// for a thread in a system call (`nr arg1 … arg6 sp pc`); zero where absent.
fn parse_registers(text: &[u8]) -> Registers {
    let Ok(text) = std::str::from_utf8(text) else {
        return Registers::default();
    };
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    let hex = |field: Option<&&str>| {
        field
            .and_then(|field| field.strip_prefix("0x"))
            .and_then(|digits| usize::from_str_radix(digits, 16).ok())
            .unwrap_or(0)
    };
    if fields.len() < 9 {
        return Registers::default();
    }
    Registers {
        sp: hex(fields.get(7)),
        pc: hex(fields.get(8)),
        arg0: hex(fields.get(1)),
    }
}

/// The state letter of `/proc/…/stat`: the field after the command name, which is in parentheses
/// and may itself contain `)`.
fn parse_state(text: &[u8]) -> Option<u8> {
    let close = text.iter().rposition(|byte| *byte == b')')?;
    text.get(close + 2).copied()
}

/// The name of system call `nr` on this architecture, for the common ones.
pub(crate) fn syscall_name(nr: libc::c_long) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: &[(libc::c_long, &str)] = &[
        (libc::SYS_poll, "poll"),
        (libc::SYS_select, "select"),
        (libc::SYS_epoll_wait, "epoll_wait"),
        (libc::SYS_open, "open"),
        (libc::SYS_wait4, "wait4"),
        (libc::SYS_pause, "pause"),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const ARCH: &[(libc::c_long, &str)] = &[];
    const COMMON: &[(libc::c_long, &str)] = &[
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_readv, "readv"),
        (libc::SYS_writev, "writev"),
        (libc::SYS_pread64, "pread64"),
        (libc::SYS_pwrite64, "pwrite64"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_close, "close"),
        (libc::SYS_fsync, "fsync"),
        (libc::SYS_fdatasync, "fdatasync"),
        (libc::SYS_ppoll, "ppoll"),
        (libc::SYS_pselect6, "pselect6"),
        (libc::SYS_epoll_pwait, "epoll_pwait"),
        (libc::SYS_nanosleep, "nanosleep"),
        (libc::SYS_clock_nanosleep, "clock_nanosleep"),
        (libc::SYS_futex, "futex"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_accept, "accept"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_sendto, "sendto"),
        (libc::SYS_recvfrom, "recvfrom"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_recvmsg, "recvmsg"),
        (libc::SYS_waitid, "waitid"),
        (libc::SYS_flock, "flock"),
        (libc::SYS_fcntl, "fcntl"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_sched_yield, "sched_yield"),
        (libc::SYS_getrandom, "getrandom"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_munmap, "munmap"),
        (libc::SYS_madvise, "madvise"),
        (libc::SYS_mprotect, "mprotect"),
        (libc::SYS_mremap, "mremap"),
        (libc::SYS_brk, "brk"),
        (libc::SYS_sendfile, "sendfile"),
        (libc::SYS_splice, "splice"),
    ];
    ARCH.iter()
        .chain(COMMON)
        .find(|(number, _)| *number == nr)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    #[test]
    fn the_files_are_parsed() {
        assert_eq!(parse_syscall(b"running\n"), None);
        assert_eq!(parse_syscall(b"-1 0x7ffc 0x55aa\n"), Some(-1));
        assert_eq!(
            parse_syscall(b"0 0x3 0x7f 0x20000 0 0 0 0x7ffc 0x7f\n"),
            Some(0)
        );
        assert_eq!(
            parse_registers(b"0 0x3 0x7f 0x20000 0 0 0 0x7ffc 0x7f01\n"),
            Registers {
                sp: 0x7ffc,
                pc: 0x7f01,
                arg0: 3,
            }
        );
        assert_eq!(parse_registers(b"running\n"), Registers::default());
        assert_eq!(parse_state(b"42 (a) b) c) S 1 2 3"), Some(b'S'));
        assert_eq!(parse_state(b"42 (worker) R 1"), Some(b'R'));
        assert_eq!(parse_state(b"garbage"), None);
        assert_eq!(syscall_name(libc::SYS_read), Some("read"));
        assert_eq!(syscall_name(libc::SYS_futex), Some("futex"));
        assert_eq!(syscall_name(100_000), None);
    }

    /// Looks at `tid` until `wanted` holds (5 s at most), returning what was seen last.
    fn watch(tid: i32, wanted: impl Fn(Activity) -> bool) -> Activity {
        let mut reader = Reader::default();
        let start = Instant::now();
        loop {
            let seen = reader.read(tid);
            if wanted(seen) || start.elapsed() > Duration::from_secs(5) {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_spinning_thread_is_in_user_space_and_a_reading_one_in_read() {
        let (send, receive) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let spinner = std::thread::spawn(move || {
            send.send(std::fs::read_link("/proc/thread-self").unwrap())
                .unwrap();
            let mut acc = 0u64;
            while !flag.load(Ordering::Relaxed) {
                acc = std::hint::black_box(acc.wrapping_add(1));
            }
        });
        let tid = tid_of(&receive.recv().unwrap());
        assert_eq!(watch(tid, |seen| seen == Activity::User), Activity::User);
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();

        let (reader_end, writer_end) = std::os::unix::net::UnixStream::pair().unwrap();
        let (send, receive) = mpsc::channel();
        let blocked = std::thread::spawn(move || {
            send.send(std::fs::read_link("/proc/thread-self").unwrap())
                .unwrap();
            let mut byte = [0u8; 1];
            (&reader_end).read_exact(&mut byte).unwrap();
        });
        let tid = tid_of(&receive.recv().unwrap());
        let read = libc::SYS_read;
        let recv = libc::SYS_recvfrom;
        let in_read = |seen: Activity| {
            matches!(seen, Activity::Syscall(nr, registers)
                if (nr == read || nr == recv) && registers.sp != 0 && registers.pc != 0)
        };
        let seen = watch(tid, in_read);
        assert!(in_read(seen), "{seen:?}");
        let clocks = Reader::default()
            .clocks(tid)
            .expect("schedstat is readable");
        assert!(clocks.cpu_ns > 0, "{clocks:?}");
        std::io::Write::write_all(&mut &writer_end, b"x").unwrap();
        blocked.join().unwrap();
        assert_eq!(Reader::default().read(i32::MAX), Activity::Unreadable);
    }

    /// The thread id at the end of `/proc/thread-self`'s target (`PID/task/TID`).
    fn tid_of(path: &std::path::Path) -> i32 {
        path.file_name().unwrap().to_str().unwrap().parse().unwrap()
    }
}
