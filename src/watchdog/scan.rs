//! The stack of a thread blocked in a system call, read without interrupting it.
//!
//! A thread waiting in `read`, `futex` or `nanosleep` is never signalled (the call could fail
//! with `EINTR`), so the handler cannot walk its stack. But the thread is one of ours and does
//! not move while it waits: `/proc/self/task/TID/syscall` gives its user stack pointer and the
//! instruction that made the call, and its stack is memory of this very process. The scanner
//! copies the stack from that pointer up (through `/proc/self/mem`, so a page that goes away
//! meanwhile is an error, not a fault) and hands the copy to the exact unwinder (`unwind`),
//! which follows the unwind tables from frame to frame. Nothing is guessed from stray words:
//! a frame left behind by a call that returned is never on the stack it gives. Everything here
//! runs on the watchdog thread.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::activity::Registers;
use super::signal::RawStack;
use super::unwind;

/// The stack bytes first read from the stack pointer up: the frames of a release build's
/// stall, usually. A walk that needs more reads again, up to [`MAX_SCAN_BYTES`].
const SCAN_BYTES: usize = 32 * 1024;

/// The most stack bytes read from the stack pointer up: deep enough for the frames between a
/// watched poll and the system call in a debug build, small enough to read in microseconds.
const MAX_SCAN_BYTES: usize = 256 * 1024;

/// How long the list of mappings is trusted before it is read again (threads started later
/// have their stacks elsewhere).
const MAPS_TTL: Duration = Duration::from_secs(1);

/// Reads blocked threads' stacks, reusing its buffers.
#[derive(Default)]
pub(crate) struct Scanner {
    mem: Option<File>,
    /// Mapped ranges `(start, end)`, sorted by start.
    maps: Vec<(usize, usize)>,
    maps_read: Option<Instant>,
    buffer: Vec<u8>,
    scratch: unwind::Scratch,
}

impl Scanner {
    /// The stack of a thread blocked in a system call with `registers`: the calling
    /// instruction first, then the return addresses the unwind tables lead to (innermost
    /// first). `None` if the stack cannot be read.
    pub(crate) fn scan(&mut self, registers: Registers) -> Option<RawStack> {
        if registers.sp == 0 || registers.pc == 0 {
            return None;
        }
        unwind::refresh();
        self.refresh_maps(MAPS_TTL);
        let stack_end = match self.mapping(registers.sp) {
            Some((_, end)) => end,
            // A thread started since the list was read: its stack is not in it yet. (A stack
            // pointer is always in some mapping, so a miss means the list is out of date.)
            None => {
                self.refresh_maps(Duration::ZERO);
                self.mapping(registers.sp).map(|(_, end)| end)?
            }
        };
        if self.mem.is_none() {
            self.mem = File::open("/proc/self/mem").ok();
        }
        let mem = self.mem.as_ref()?;
        let mut length = (stack_end - registers.sp).min(SCAN_BYTES);
        let copied = loop {
            self.buffer.resize(length, 0);
            let read = read_fully(mem, &mut self.buffer, registers.sp);
            let copied = unwind::unwind_copied(
                registers.pc,
                registers.sp,
                &self.buffer[..read],
                &mut self.scratch,
            );
            let longer = (stack_end - registers.sp).min(MAX_SCAN_BYTES);
            if !copied.beyond_copy || read < length || length >= longer {
                break copied;
            }
            length = longer;
        };
        Some(RawStack {
            pc: registers.pc,
            uncertain_from: copied.uncertain_from,
            ips: copied.ips,
            task: 0,
        })
    }

    /// Reads the list of mappings again if it is older than `ttl`.
    fn refresh_maps(&mut self, ttl: Duration) {
        if self.maps_read.is_some_and(|read| read.elapsed() < ttl) {
            return;
        }
        self.maps_read = Some(Instant::now());
        self.maps.clear();
        let Ok(text) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        for line in text.lines() {
            let Some(range) = line.split_ascii_whitespace().next() else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                self.maps.push((start, end));
            }
        }
        self.maps.sort_unstable();
    }

    /// The mapping that contains `address`.
    fn mapping(&self, address: usize) -> Option<(usize, usize)> {
        let index = self.maps.partition_point(|(start, _)| *start <= address);
        let mapping = *self.maps.get(index.checked_sub(1)?)?;
        (address < mapping.1).then_some(mapping)
    }
}

/// Reads from `offset` into `buffer` until it is full or memory ends; returns the bytes read.
fn read_fully(mem: &File, buffer: &mut [u8], offset: usize) -> usize {
    let mut read = 0;
    while read < buffer.len() {
        match mem.read_at(&mut buffer[read..], (offset + read) as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn wait_on(receive: std::sync::mpsc::Receiver<()>) {
        let _ = receive.recv();
    }

    /// A thread waiting in `wait_on` until told to go on, and its registers in that wait.
    fn waiting_thread() -> (
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
        Registers,
    ) {
        let (send, receive) = std::sync::mpsc::channel();
        let (tid_send, tid_receive) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            tid_send
                .send(std::fs::read_link("/proc/thread-self").unwrap())
                .unwrap();
            wait_on(receive);
        });
        let tid: i32 = tid_receive
            .recv()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let mut reader = super::super::activity::Reader::default();
        let start = Instant::now();
        let registers = loop {
            if let super::super::activity::Activity::Syscall(_, registers) = reader.read(tid) {
                break registers;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "never blocked");
            std::thread::sleep(Duration::from_millis(1));
        };
        (send, waiter, registers)
    }

    /// A thread started after the scanner read the mappings has its stack read at once, not a
    /// second later when the list would be read again anyway.
    #[test]
    fn a_thread_started_after_the_last_scan_is_read() {
        let mut scanner = Scanner::default();
        let (first, first_waiter, registers) = waiting_thread();
        assert!(scanner.scan(registers).is_some());
        // While the first one still waits: the second gets a stack of its own (a thread's stack
        // is reused only after it exits).
        let (second, second_waiter, registers) = waiting_thread();
        let scanned = scanner.scan(registers);
        for (send, waiter) in [(first, first_waiter), (second, second_waiter)] {
            send.send(()).unwrap();
            waiter.join().unwrap();
        }
        assert!(scanned.is_some(), "the new thread's stack was not read");
    }

    #[test]
    fn the_stack_of_a_thread_waiting_on_a_channel_shows_who_waits() {
        let (send, waiter, registers) = waiting_thread();
        let raw = Scanner::default()
            .scan(registers)
            .expect("the stack is read");
        let mut symbolizer = super::super::symbols::Symbolizer::default();
        let names: Vec<String> = symbolizer
            .frames(&raw.ips, raw.pc, raw.uncertain_from)
            .into_iter()
            .map(|frame| frame.name)
            .collect();
        send.send(()).unwrap();
        waiter.join().unwrap();
        assert!(
            names.iter().any(|name| name.contains("wait_on")),
            "{names:#?}"
        );
    }
}
