//! The stack of a thread blocked in a system call, read without interrupting it.
//!
//! A thread waiting in `read`, `futex` or `nanosleep` is never signalled (the call could fail
//! with `EINTR`), so the handler cannot walk its stack. But the thread is one of ours and does
//! not move while it waits: `/proc/self/task/TID/syscall` gives its user stack pointer and the
//! instruction that made the call, and its stack is memory of this very process. The scanner
//! reads the stack from that pointer up (through `/proc/self/mem`, so a page that goes away
//! meanwhile is an error, not a fault) and keeps each word that is a **return address**: it
//! points into executable code, just after a call instruction. That is how crash reporters
//! walk a stack they have no unwind information for ("stack scanning").
//!
//! A frame can leave a return address behind in a slot it no longer uses: a stale frame, which
//! a scan would list among the real ones. So each return address after a direct call (`call
//! rel32`, `BL`) is checked against the frame inside it: the call's target must be the start
//! of the function that frame is in, that is at or before the inner frame's address and within
//! [`MAX_FUNCTION_BYTES`] of it (in the same mapping; a call into another object goes through
//! a stub and cannot be checked). An address that fails is left out, but is kept as a possible
//! callee for the next ones (the function it called may have jumped on to another by a tail
//! call, and the chain must not break there). An indirect call cannot be checked and is kept.
//! What is left is close to the real chain: a stale address can still slip in after an
//! indirect call. Everything here runs on the watchdog thread.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::activity::Registers;
use super::signal::{RawStack, MAX_FRAMES};
use super::symtab::SymbolTable;

/// The most stack bytes read from the stack pointer up: deep enough for the frames between a
/// watched poll and the system call in a debug build, small enough to read in microseconds.
const SCAN_BYTES: usize = 64 * 1024;

/// How long the list of mappings is trusted before it is read again (libraries loaded later,
/// threads started later have their code and stacks elsewhere).
const MAPS_TTL: Duration = Duration::from_secs(1);

/// Above this many remembered addresses the cache of call sites starts over (bounded memory).
const MAX_CACHED: usize = 65_536;

/// The longest function a direct call is believed to land in (from its start to the address of
/// the frame inside it). Large async state machines reach tens of kilobytes.
const MAX_FUNCTION_BYTES: usize = 256 * 1024;

/// How many kept frames a checked call may reach back over (see `Scanner::scan_checked`).
const BACKTRACK: usize = 8;

/// What precedes an address in code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// Not a call instruction: not a return address.
    None,
    /// A direct call to this address.
    Direct(usize),
    /// A call through a register or memory: its target is unknown.
    Indirect,
}

/// Reads blocked threads' stacks, reusing its buffers.
#[derive(Default)]
pub(crate) struct Scanner {
    mem: Option<File>,
    /// Mapped ranges `(start, end, executable)`, sorted by start.
    maps: Vec<(usize, usize, bool)>,
    maps_read: Option<Instant>,
    /// The call instruction each address follows, if any.
    call_sites: HashMap<usize, Call>,
    buffer: Vec<u8>,
}

impl Scanner {
    /// The stack of a thread blocked in a system call with `registers`: the calling
    /// instruction first, then the return addresses found from the stack pointer up (innermost
    /// first). `None` if the stack cannot be read.
    pub(crate) fn scan(&mut self, registers: Registers) -> Option<RawStack> {
        self.scan_checked(registers, None)
    }

    /// [`scan`](Self::scan), checking direct calls against the program's symbol table where it
    /// knows the function a frame is in: the call must be to that function's very start, not
    /// anywhere in the [`MAX_FUNCTION_BYTES`] before it. In a debug build the program's functions
    /// lie close together, and a stale return address passed the looser check often enough to
    /// lead the chain astray (the runtime watchdog names the task from this stack).
    pub(crate) fn scan_checked(
        &mut self,
        registers: Registers,
        table: Option<&SymbolTable>,
    ) -> Option<RawStack> {
        if registers.sp == 0 || registers.pc == 0 {
            return None;
        }
        self.refresh_maps(MAPS_TTL);
        let stack_end = match self.mapping(registers.sp) {
            Some((_, end, _)) => end,
            // A thread started since the list was read: its stack is not in it yet. (A stack
            // pointer is always in some mapping, so a miss means the list is out of date.)
            None => {
                self.refresh_maps(Duration::ZERO);
                self.mapping(registers.sp).map(|(_, end, _)| end)?
            }
        };
        let length = (stack_end - registers.sp).min(SCAN_BYTES);
        if self.mem.is_none() {
            self.mem = File::open("/proc/self/mem").ok();
        }
        let mem = self.mem.as_ref()?;
        self.buffer.resize(length, 0);
        let read = read_fully(mem, &mut self.buffer, registers.sp);
        let word = std::mem::size_of::<usize>();
        let mut ips = vec![registers.pc];
        let words: Vec<usize> = self.buffer[..read - read % word]
            .chunks_exact(word)
            .map(|bytes| {
                // chunks_exact gives slices of exactly `word` bytes.
                let mut array = [0u8; std::mem::size_of::<usize>()];
                array.copy_from_slice(bytes);
                usize::from_ne_bytes(array)
            })
            .collect();
        // The addresses a next frame may have called into: the last frame kept, and the
        // candidates left out since.
        let mut callees = vec![registers.pc];
        for address in words {
            if ips.len() >= MAX_FRAMES {
                break;
            }
            let fits = match self.call_before(address) {
                Call::None => continue,
                Call::Indirect => true,
                Call::Direct(target) => {
                    callees
                        .iter()
                        .any(|callee| self.calls_into(target, *callee, table))
                        || table.is_some_and(|table| {
                            // Checked exactly, a call into a frame kept before the last one
                            // says the frames kept since were stale (a chain left behind by
                            // calls that returned, through an indirect call, which cannot be
                            // checked): they are dropped. Never back to the first address,
                            // the interrupted instruction rather than a return address.
                            let inner = ips.len().saturating_sub(BACKTRACK).max(1)..ips.len();
                            let back = inner.rev().skip(1).find(|at| {
                                table.start_of(ips[*at].saturating_sub(1)) == Some(target)
                            });
                            if let Some(at) = back {
                                ips.truncate(at + 1);
                            }
                            back.is_some()
                        })
                }
            };
            if fits {
                ips.push(address);
                callees.clear();
            }
            if callees.len() < 16 {
                callees.push(address);
            }
        }
        Some(RawStack {
            pc: registers.pc,
            ips,
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
            let mut fields = line.split_ascii_whitespace();
            let (Some(range), Some(permissions)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            self.maps
                .push((start, end, permissions.as_bytes().get(2) == Some(&b'x')));
        }
        self.maps.sort_unstable();
        // Code may have moved (a library unloaded and another loaded in its place).
        self.call_sites.clear();
    }

    /// The mapping that contains `address`.
    fn mapping(&self, address: usize) -> Option<(usize, usize, bool)> {
        let index = self.maps.partition_point(|(start, _, _)| *start <= address);
        let mapping = *self.maps.get(index.checked_sub(1)?)?;
        (address < mapping.1).then_some(mapping)
    }

    /// Whether a direct call to `target` may have led to `callee`: the call cannot be checked
    /// if they lie in different mappings (a call through a stub into another object), and
    /// otherwise `callee` must be in the function that starts at `target`.
    fn calls_into(&self, target: usize, callee: usize, table: Option<&SymbolTable>) -> bool {
        // A return address may lie just past its function's end (a call that never returns).
        if let Some(start) = table.and_then(|table| table.start_of(callee.saturating_sub(1))) {
            return target == start;
        }
        match (self.mapping(target), self.mapping(callee)) {
            (Some(a), Some(b)) if a == b => {
                target <= callee && callee - target <= MAX_FUNCTION_BYTES
            }
            _ => true,
        }
    }

    /// The call instruction just before `address`, if it points into code.
    fn call_before(&mut self, address: usize) -> Call {
        if !self
            .mapping(address)
            .is_some_and(|(start, _, executable)| executable && address >= start + 8)
        {
            return Call::None;
        }
        if let Some(known) = self.call_sites.get(&address) {
            return *known;
        }
        let mut before = [0u8; 8];
        let call = match self
            .mem
            .as_ref()
            .map(|mem| mem.read_exact_at(&mut before, (address - 8) as u64))
        {
            Some(Ok(())) => call_kind(&before, address),
            _ => Call::None,
        };
        if self.call_sites.len() >= MAX_CACHED {
            self.call_sites.clear();
        }
        self.call_sites.insert(address, call);
        call
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

/// The call instruction the 8 bytes before `address` end with, if any.
#[cfg(target_arch = "x86_64")]
fn call_kind(before: &[u8; 8], address: usize) -> Call {
    // `call rel32`: E8 and four bytes, relative to the next instruction.
    if before[3] == 0xE8 {
        let offset = i32::from_le_bytes([before[4], before[5], before[6], before[7]]);
        return Call::Direct(address.wrapping_add_signed(offset as isize));
    }
    if follows_call(before) {
        Call::Indirect
    } else {
        Call::None
    }
}

/// Whether the 8 bytes before an address end with an indirect call instruction.
#[cfg(target_arch = "x86_64")]
fn follows_call(before: &[u8; 8]) -> bool {
    // `call r/m` (FF /2): FF, a ModRM byte whose reg field is 2, then 0 to 5 bytes of SIB and
    // displacement; at most 7 bytes in all (a REX prefix before FF changes nothing here).
    (1..=6).any(|at| {
        before[at] == 0xFF && (before[at + 1] >> 3) & 7 == 2 && {
            let modrm = before[at + 1];
            let mode = modrm >> 6;
            let rm = modrm & 7;
            let sib = usize::from(mode != 3 && rm == 4);
            let displacement = match mode {
                0 if rm == 5 => 4,
                1 => 1,
                2 => 4,
                _ => 0,
            };
            at + 2 + sib + displacement == 8
        }
    })
}

/// The call instruction the 8 bytes before `address` end with, if any.
#[cfg(target_arch = "aarch64")]
fn call_kind(before: &[u8; 8], address: usize) -> Call {
    let instruction = u32::from_le_bytes([before[4], before[5], before[6], before[7]]);
    if instruction & 0xFC00_0000 == 0x9400_0000 {
        // BL imm26: a signed offset in instructions from the BL itself.
        let offset = (((instruction & 0x03FF_FFFF) << 6) as i32 >> 6) as isize * 4;
        Call::Direct(address.wrapping_sub(4).wrapping_add_signed(offset))
    } else if instruction & 0xFFFF_FC1F == 0xD63F_0000 {
        Call::Indirect
    } else {
        Call::None
    }
}

/// The call instruction before an address (unknown on this architecture: none).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn call_kind(_before: &[u8; 8], _address: usize) -> Call {
    Call::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn call_instructions_are_recognised() {
        // call rel32, to 0x1000 + 0x10 - 0x20
        assert_eq!(
            call_kind(&[0, 0, 0, 0xE8, 0xE0, 0xFF, 0xFF, 0xFF], 0x1010),
            Call::Direct(0x1010 - 0x20)
        );
        assert_eq!(
            call_kind(&[0, 0, 0, 0, 0, 0, 0xFF, 0xD0], 0x1010),
            Call::Indirect
        );
        assert_eq!(call_kind(&[0x90; 8], 0x1010), Call::None);
        // call *%rax (FF D0)
        assert!(follows_call(&[0, 0, 0, 0, 0, 0, 0xFF, 0xD0]));
        // call *0x10(%rbx) (FF 53 10)
        assert!(follows_call(&[0, 0, 0, 0, 0, 0xFF, 0x53, 0x10]));
        // call *disp32(%rip) (FF 15 + 4)
        assert!(follows_call(&[0, 0, 0xFF, 0x15, 1, 2, 3, 4]));
        // call *disp32(%rsp) with SIB (FF 94 24 + 4)
        assert!(follows_call(&[0, 0xFF, 0x94, 0x24, 1, 2, 3, 4]));
        // jmp *%rax (FF E0) and plain data are not calls
        assert!(!follows_call(&[0, 0, 0, 0, 0, 0, 0xFF, 0xE0]));
        assert!(!follows_call(&[0x90; 8]));
    }

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
            .frames(&raw.ips, raw.pc)
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
