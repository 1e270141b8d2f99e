//! The process's loaded objects as the unwinder sees them: their code and `.eh_frame` tables
//! in the memory the loader mapped them to (found with `dl_iterate_phdr`), framehop's modules
//! over them, and what the code itself says: where a function starts and whether it keeps a
//! frame pointer, which call instruction a return address follows, whether a function jumps
//! to another (a tail call).

use std::ffi::c_void;
use std::ops::Range;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

use framehop::x86_64::UnwinderX86_64;
use framehop::{ExplicitModuleSectionInfo, Module, MustNotAllocateDuringUnwind, Unwinder};
use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, Pointer, UnwindSection};

/// One loaded object's code and unwind tables, in the memory the loader mapped them to.
struct Object {
    /// Where it is loaded: its addresses as mapped less those its headers state.
    bias: usize,
    /// Its executable segments, as mapped.
    code: Vec<Range<usize>>,
    /// All its loaded segments, as mapped (where a call through memory finds its target).
    loaded: Vec<Range<usize>>,
    eh_frame_hdr: &'static [u8],
    eh_frame_hdr_at: usize,
    eh_frame: &'static [u8],
    eh_frame_at: usize,
}

/// The process's objects, as found at one time: replaced (never freed: a handler may be
/// reading it) when a library is loaded.
pub(super) struct Process {
    pub(super) unwinder: UnwinderX86_64<&'static [u8], MustNotAllocateDuringUnwind>,
    objects: Vec<Object>,
    /// The loader's count of objects ever added when this was built (`dlpi_adds`).
    adds: u64,
    /// The lowest and highest code address of all the objects.
    code_span: (usize, usize),
}

static PROCESS: AtomicPtr<Process> = AtomicPtr::new(std::ptr::null_mut());
static BUILDING: Mutex<()> = Mutex::new(());

/// Reads the loaded objects again if the loader added one since the last read (a library
/// loaded with `dlopen`). Not for the handler.
pub(crate) fn refresh() {
    let adds = loader_adds();
    if current().is_some_and(|process| process.adds == adds) {
        return;
    }
    // One builder at a time; a poisoned lock guards nothing but this section.
    let _building = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    if current().is_some_and(|process| process.adds == adds) {
        return;
    }
    let process = Box::new(build(adds));
    // The previous one is left allocated: a handler may still be walking with it.
    PROCESS.store(Box::into_raw(process), Ordering::Release);
}

pub(super) fn current() -> Option<&'static Process> {
    // SAFETY: a non-null pointer came from Box::into_raw and is never freed.
    unsafe { PROCESS.load(Ordering::Acquire).as_ref() }
}

/// `dlpi_adds` of the first object the loader reports.
fn loader_adds() -> u64 {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid info for the call, and `data` is the AtomicU64
        // `loader_adds` passed in.
        unsafe { (*data.cast::<AtomicU64>()).store((*info).dlpi_adds, Ordering::Relaxed) };
        1
    }
    let adds = AtomicU64::new(0);
    // SAFETY: `first` only reads the info it is given and writes `adds`, which outlives
    // the call.
    unsafe { libc::dl_iterate_phdr(Some(first), (&raw const adds).cast_mut().cast()) };
    adds.load(Ordering::Relaxed)
}

/// Reads every loaded object's program headers.
fn build(adds: u64) -> Process {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: as in `loader_adds`; `data` is the Vec `build` passed in.
        let (info, objects) = unsafe { (&*info, &mut *data.cast::<Vec<Object>>()) };
        if let Some(object) = object(info) {
            objects.push(object);
        }
        0
    }
    let mut objects: Vec<Object> = Vec::new();
    // SAFETY: `each` reads the info the loader gives it and pushes into `objects`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut objects).cast()) };
    let mut unwinder = UnwinderX86_64::new();
    for (index, object) in objects.iter().enumerate() {
        if let Some(module) = module(index, object) {
            unwinder.add_module(module);
        }
    }
    let code = objects.iter().flat_map(|object| object.code.iter());
    let code_span = (
        code.clone().map(|code| code.start).min().unwrap_or(0),
        code.map(|code| code.end).max().unwrap_or(0),
    );
    Process {
        unwinder,
        objects,
        adds,
        code_span,
    }
}

/// One object from its program headers: its code, and its unwind tables found through
/// `PT_GNU_EH_FRAME` (the `.eh_frame_hdr` the loader itself uses).
fn object(info: &libc::dl_phdr_info) -> Option<Object> {
    let bias = info.dlpi_addr as usize;
    // SAFETY: the loader's program headers: dlpi_phnum entries at dlpi_phdr.
    let headers =
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let loaded = |header: &&libc::Elf64_Phdr| header.p_type == libc::PT_LOAD;
    let range = |header: &libc::Elf64_Phdr| {
        let start = bias.wrapping_add(header.p_vaddr as usize);
        start..start.wrapping_add(header.p_memsz as usize)
    };
    let code: Vec<Range<usize>> = headers
        .iter()
        .filter(loaded)
        .filter(|header| header.p_flags & libc::PF_X != 0)
        .map(range)
        .collect();
    let all: Vec<Range<usize>> = headers.iter().filter(loaded).map(range).collect();
    let hdr = headers
        .iter()
        .find(|header| header.p_type == libc::PT_GNU_EH_FRAME)?;
    let hdr_range = range(hdr);
    // SAFETY: PT_GNU_EH_FRAME lies inside a loaded segment, mapped for the object's life.
    let eh_frame_hdr: &'static [u8] =
        unsafe { std::slice::from_raw_parts(hdr_range.start as *const u8, hdr_range.len()) };
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_range.start as u64);
    let parsed = EhFrameHdr::new(eh_frame_hdr, LittleEndian)
        .parse(&bases, 8)
        .ok()?;
    let Pointer::Direct(eh_frame_at) = parsed.eh_frame_ptr() else {
        return None;
    };
    let eh_frame_at = eh_frame_at as usize;
    // `.eh_frame` runs to the end of its segment at most (its length is in the section
    // headers, which need not be mapped).
    let segment = headers
        .iter()
        .filter(loaded)
        .map(range)
        .find(|segment| segment.contains(&eh_frame_at))?;
    // SAFETY: from the table's start to the end of the loaded segment that holds it.
    let eh_frame: &'static [u8] =
        unsafe { std::slice::from_raw_parts(eh_frame_at as *const u8, segment.end - eh_frame_at) };
    Some(Object {
        bias,
        code,
        loaded: all,
        eh_frame_hdr,
        eh_frame_hdr_at: hdr_range.start,
        eh_frame,
        eh_frame_at,
    })
}

/// framehop's module for an object: addresses as the object states them (relative to
/// where it is loaded), data in the memory it is mapped to.
fn module(index: usize, object: &Object) -> Option<Module<&'static [u8]>> {
    let start = object.code.iter().map(|code| code.start).min()?;
    let end = object.code.iter().map(|code| code.end).max()?;
    let stated = |at: usize, len: usize| {
        let at = at.checked_sub(object.bias)? as u64;
        Some(at..at + len as u64)
    };
    let first_code = object.code.iter().min_by_key(|code| code.start)?;
    // SAFETY: an executable loaded segment, mapped for the object's life.
    let text: &'static [u8] =
        unsafe { std::slice::from_raw_parts(first_code.start as *const u8, first_code.len()) };
    Some(Module::new(
        format!("object {index}"),
        start as u64..end as u64,
        object.bias as u64,
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: stated(first_code.start, first_code.len()),
            text: Some(text),
            eh_frame_svma: stated(object.eh_frame_at, object.eh_frame.len()),
            eh_frame: Some(object.eh_frame),
            eh_frame_hdr_svma: stated(object.eh_frame_hdr_at, object.eh_frame_hdr.len()),
            eh_frame_hdr: Some(object.eh_frame_hdr),
            ..Default::default()
        },
    ))
}

/// What precedes an address in code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// Not a call instruction: not a return address.
    None,
    /// A direct call to this address.
    Direct(usize),
    /// A call through the pointer at this address (`call *disp32(%rip)`: how Rust calls a
    /// function of another crate, through the global offset table).
    Through(usize),
    /// A call through a register or computed memory: its target is unknown.
    Indirect,
}

impl Process {
    fn object_of(&self, address: usize) -> Option<&Object> {
        self.objects
            .iter()
            .find(|object| object.code.iter().any(|code| code.contains(&address)))
    }

    /// The function `address` is in, as its unwind table entry (FDE) says.
    pub(super) fn function_range(&self, address: usize) -> Option<Range<usize>> {
        let object = self.object_of(address)?;
        let bases = BaseAddresses::default()
            .set_eh_frame_hdr(object.eh_frame_hdr_at as u64)
            .set_eh_frame(object.eh_frame_at as u64);
        let hdr = EhFrameHdr::new(object.eh_frame_hdr, LittleEndian)
            .parse(&bases, 8)
            .ok()?;
        let table = hdr.table()?;
        let eh_frame = EhFrame::new(object.eh_frame, LittleEndian);
        let fde = table
            .fde_for_address(
                &eh_frame,
                &bases,
                address as u64,
                |section, bases, offset| section.cie_from_offset(bases, offset),
            )
            .ok()?;
        let start = fde.initial_address() as usize;
        Some(start..start.saturating_add(fde.len() as usize))
    }

    /// Whether the function that starts at `start` sets up a frame pointer: `push rbp; mov
    /// rbp, rsp`, after an `endbr64` where there is one.
    pub(super) fn keeps_frame_pointer(&self, start: usize) -> bool {
        const ENDBR64: [u8; 4] = [0xF3, 0x0F, 0x1E, 0xFA];
        const PROLOGUE: [u8; 4] = [0x55, 0x48, 0x89, 0xE5];
        let Some(code) = self
            .object_of(start)
            .and_then(|object| object.code.iter().find(|code| code.contains(&start)))
        else {
            return false;
        };
        let end = (start + 8).min(code.end);
        // SAFETY: at most 8 bytes from the function's start, inside its executable segment,
        // mapped for the object's life.
        let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, end - start) };
        let bytes = bytes.strip_prefix(&ENDBR64).unwrap_or(bytes);
        bytes.starts_with(&PROLOGUE)
    }

    /// Whether the function that starts at `caller` jumps to `callee` (a tail call: `jmp
    /// rel32`, or `jmp *disp32(%rip)` through the global offset table), read from its code
    /// within the bounds its unwind table entry gives.
    pub(super) fn jumps_to(&self, caller: usize, callee: usize) -> bool {
        const MAX_SCANNED: usize = 64 * 1024;
        let Some(range) = self
            .function_range(caller)
            .filter(|range| range.start == caller)
        else {
            return false;
        };
        let Some(code) = self
            .object_of(caller)
            .and_then(|object| object.code.iter().find(|code| code.contains(&caller)))
        else {
            return false;
        };
        let end = range
            .end
            .min(code.end)
            .min(caller.saturating_add(MAX_SCANNED));
        if end <= caller {
            return false;
        }
        // SAFETY: [caller, end) lies inside one executable segment, mapped for the object's
        // life.
        let bytes = unsafe { std::slice::from_raw_parts(caller as *const u8, end - caller) };
        bytes.windows(6).enumerate().any(|(at, window)| {
            let here = caller + at;
            let rel = |from: usize| {
                i32::from_le_bytes([
                    window[from],
                    window[from + 1],
                    window[from + 2],
                    window[from + 3],
                ]) as isize
            };
            (window[0] == 0xE9 && here.wrapping_add(5).wrapping_add_signed(rel(1)) == callee)
                || (window[0] == 0xFF
                    && window[1] == 0x25
                    && self.read_pointer(here.wrapping_add(6).wrapping_add_signed(rel(2)))
                        == Some(callee))
        })
    }

    /// The call instruction the return address `address` follows, read from the code.
    pub(super) fn call_before(&self, address: usize) -> Call {
        // Most words of a stack are not code addresses: out before any look-up.
        if !(self.code_span.0..self.code_span.1).contains(&address) {
            return Call::None;
        }
        let Some(code) = self
            .object_of(address)
            .and_then(|object| object.code.iter().find(|code| code.contains(&address)))
        else {
            return Call::None;
        };
        if address < code.start + 16 {
            return Call::None;
        }
        let mut before = [0u8; 16];
        // SAFETY: the 16 bytes before `address` lie in the same executable segment, mapped
        // for the object's life.
        unsafe {
            std::ptr::copy_nonoverlapping((address - 16) as *const u8, before.as_mut_ptr(), 16)
        };
        let mut last = [0u8; 8];
        last.copy_from_slice(&before[8..]);
        let call = match call_kind(&last, address) {
            Call::Indirect => loaded_then_called(&before, address).unwrap_or(Call::Indirect),
            call => call,
        };
        match call {
            Call::Through(slot) => self.read_pointer(slot).map_or(Call::Indirect, Call::Direct),
            call => call,
        }
    }

    /// The pointer at `slot`, if it lies in a loaded object's memory.
    fn read_pointer(&self, slot: usize) -> Option<usize> {
        let end = slot.checked_add(8)?;
        self.objects
            .iter()
            .flat_map(|object| object.loaded.iter())
            .find(|segment| segment.start <= slot && end <= segment.end)?;
        // SAFETY: 8 bytes inside a loaded segment, mapped for the object's life.
        Some(unsafe { std::ptr::read_unaligned(slot as *const usize) })
    }
}

/// A call through a register just loaded from a known place, as a debug build calls
/// another crate's function: `mov disp32(%rip), %reg` then `call *%reg`, ending at `address`
/// (the 16 bytes before it in `before`).
pub(crate) fn loaded_then_called(before: &[u8; 16], address: usize) -> Option<Call> {
    // `call *%reg`: FF D0+r, or 41 FF D0+r for r8-r15; the `mov` before it: 48 8B, or 4C 8B
    // for r8-r15, then a ModRM byte 00 reg 101 (RIP-relative) and the displacement.
    let (call_length, extended) = match before {
        [.., 0x41, 0xFF, r] if r & 0xF8 == 0xD0 => (3, true),
        [.., 0xFF, r] if r & 0xF8 == 0xD0 => (2, false),
        _ => return None,
    };
    let register = before[15] & 7;
    let mov = &before[16 - call_length - 7..16 - call_length];
    let rex = if extended { 0x4C } else { 0x48 };
    if mov[0] != rex || mov[1] != 0x8B || mov[2] != 0x05 | register << 3 {
        return None;
    }
    let offset = i32::from_le_bytes([mov[3], mov[4], mov[5], mov[6]]);
    // RIP-relative to the end of the `mov`, which is where the call begins.
    let after_mov = address - call_length;
    Some(Call::Through(
        after_mov.wrapping_add_signed(offset as isize),
    ))
}

/// The call instruction the 8 bytes before `address` end with, if any.
pub(crate) fn call_kind(before: &[u8; 8], address: usize) -> Call {
    // `call rel32`: E8 and four bytes, relative to the next instruction.
    if before[3] == 0xE8 {
        let offset = i32::from_le_bytes([before[4], before[5], before[6], before[7]]);
        return Call::Direct(address.wrapping_add_signed(offset as isize));
    }
    // `call *disp32(%rip)` (FF 15 and four bytes): through a pointer at a known place.
    if before[2] == 0xFF && before[3] == 0x15 {
        let offset = i32::from_le_bytes([before[4], before[5], before[6], before[7]]);
        return Call::Through(address.wrapping_add_signed(offset as isize));
    }
    // `call r/m` (FF /2): FF, a ModRM byte whose reg field is 2, then 0 to 5 bytes of SIB
    // and displacement; at most 7 bytes in all (a REX prefix before FF changes nothing).
    let indirect = (1..=6).any(|at| {
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
    });
    match indirect {
        true => Call::Indirect,
        false => Call::None,
    }
}

#[cfg(test)]
mod tests {
    use super::{call_kind, loaded_then_called, Call};

    #[test]
    fn a_call_through_a_register_loaded_from_the_got_is_read() {
        // mov 0x10(%rip),%rax ; call *%rax   (ends at 0x1010: the mov's operand is 0x100e+0x10)
        let mut before = [0x90u8; 16];
        before[7..].copy_from_slice(&[0x48, 0x8B, 0x05, 0x10, 0, 0, 0, 0xFF, 0xD0]);
        assert_eq!(
            loaded_then_called(&before, 0x1010),
            Some(Call::Through(0x100e + 0x10))
        );
        // mov 0x20(%rip),%r11 ; call *%r11
        let mut before = [0x90u8; 16];
        before[6..].copy_from_slice(&[0x4C, 0x8B, 0x1D, 0x20, 0, 0, 0, 0x41, 0xFF, 0xD3]);
        assert_eq!(
            loaded_then_called(&before, 0x1010),
            Some(Call::Through(0x100d + 0x20))
        );
        // A register loaded with another one, or from elsewhere, is not followed.
        let mut before = [0x90u8; 16];
        before[7..].copy_from_slice(&[0x48, 0x8B, 0x0D, 0x10, 0, 0, 0, 0xFF, 0xD0]);
        assert_eq!(loaded_then_called(&before, 0x1010), None);
    }

    #[test]
    fn call_instructions_are_recognised() {
        // call rel32, to 0x1000 + 0x10 - 0x20
        assert_eq!(
            call_kind(&[0, 0, 0, 0xE8, 0xE0, 0xFF, 0xFF, 0xFF], 0x1010),
            Call::Direct(0x1010 - 0x20)
        );
        let indirect = |bytes: [u8; 8]| call_kind(&bytes, 0x1010) == Call::Indirect;
        // call *%rax (FF D0)
        assert!(indirect([0, 0, 0, 0, 0, 0, 0xFF, 0xD0]));
        // call *0x10(%rbx) (FF 53 10)
        assert!(indirect([0, 0, 0, 0, 0, 0xFF, 0x53, 0x10]));
        // call *disp32(%rip) (FF 15 + 4): through the pointer at 0x1010 + 0x04030201
        assert_eq!(
            call_kind(&[0, 0, 0xFF, 0x15, 1, 2, 3, 4], 0x1010),
            Call::Through(0x1010 + 0x0403_0201)
        );
        // call *disp32(%rsp) with SIB (FF 94 24 + 4)
        assert!(indirect([0, 0xFF, 0x94, 0x24, 1, 2, 3, 4]));
        // jmp *%rax (FF E0) and plain data are not calls
        assert_eq!(
            call_kind(&[0, 0, 0, 0, 0, 0, 0xFF, 0xE0], 0x1010),
            Call::None
        );
        assert_eq!(call_kind(&[0x90; 8], 0x1010), Call::None);
    }
}
