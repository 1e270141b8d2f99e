//! Function names from the executable's own ELF symbol table (`.symtab`), for naming a stalled
//! task soon after the detector starts.
//!
//! `backtrace`'s first lookup parses all the debug information of the program (and of libc's
//! separate debug files): hundreds of milliseconds in a debug build, longer than the runtime
//! watchdog may take to name a stall that starts right away. The symbol table holds every
//! function's mangled name, address and size, which is all a label needs (no inlined frames, no
//! file or line), and loads in milliseconds (27 ms for the lib test binary in a debug build,
//! against 80 ms for backtrace's first lookup there and 220 ms more for its first in libc): only
//! the ELF header, the section headers, `.symtab` and `.strtab` are read from the file, never its
//! code or debug sections.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use object::elf;
use object::read::elf::{FileHeader, SectionHeader, Sym};
use object::{Endianness, FileKind, ReadCache, SectionIndex};

/// One function of the table: 16 bytes on a 64-bit target.
#[derive(Clone, Copy, Debug)]
struct Function {
    /// The run-time address of its first instruction.
    start: usize,
    /// Its length in bytes.
    size: u32,
    /// Where its mangled name starts in `SymbolTable::names` (NUL-terminated there).
    name: u32,
}

impl Function {
    fn contains(&self, ip: usize) -> bool {
        ip >= self.start && ip - self.start < self.size as usize
    }
}

/// A function's addresses: `(start, end)`.
type Range = (usize, usize);

/// Function names from the program's own ELF symbol table: no debug information is read, so it
/// loads in milliseconds where `backtrace`'s first lookup takes hundreds in a debug build.
pub(crate) struct SymbolTable {
    /// Sorted by `start`, one per start address.
    functions: Vec<Function>,
    /// The functions of tokio's schedulers (`true`) and of its blocking pool (`false`), as
    /// `(start, end, scheduler)` sorted by start: what runs below a task harness tells an async
    /// task's poll from a `spawn_blocking` closure's (kept when the names are let go).
    tokio: Vec<(usize, usize, bool)>,
    /// tokio's `block_in_place` functions (each instance of the generic ones), as `(start,
    /// end)` sorted by start: a thread inside one has handed its worker's queue to another
    /// thread, and blocks no task.
    block_in_place: Vec<Range>,
    /// The mangled names of `functions` only (not all of `.strtab`, which also names data, files
    /// and sections), each followed by a NUL. Demangled on demand: most are never asked for.
    names: Vec<u8>,
}

impl SymbolTable {
    /// Reads /proc/self/exe's `.symtab` (function symbols: STT_FUNC, nonzero size) and the load
    /// bias of the executable; None if there is none (stripped binary, not ELF, unreadable).
    ///
    /// Also None when hogwatch itself is not part of the executable (it was linked into a shared
    /// library): the table could name none of the futures hogwatch watches then.
    pub(crate) fn load() -> Option<Self> {
        let table = Self::parse(File::open("/proc/self/exe").ok()?, entry_point()?)?;
        // The check that the table and the bias describe the code that runs: a function of
        // this crate must be found at its own address, as a function starting there.
        let here = Self::load as fn() -> Option<Self> as usize;
        match table.function(here) {
            Some(function) if function.start == here => Some(table),
            _ => None,
        }
    }

    /// The demangled name (same text as `format!("{:#}", backtrace_symbol.name())`, i.e.
    /// rustc-demangle's alternate form without hash, e.g. `my_app::refresh::{{closure}}`,
    /// `tokio::runtime::task::harness::Harness<T,S>::poll`) of the function containing `ip`,
    /// or None if `ip` is not inside a function of the executable (e.g. in libc).
    ///
    /// `ip` is taken as `backtrace::resolve` takes it: the caller subtracts 1 from a return
    /// address (as `backtrace::resolve_frame` does), which may be just past its function's end.
    pub(crate) fn name(&self, ip: usize) -> Option<String> {
        let function = self.function(ip)?;
        let rest = self.names.get(function.name as usize..)?;
        let mangled = CStr::from_bytes_until_nul(rest).ok()?.to_bytes();
        // As backtrace's `SymbolName` does: demangle what is UTF-8 and Rust-mangled, show
        // anything else (C functions) as it is.
        Some(match std::str::from_utf8(mangled) {
            Ok(text) => match rustc_demangle::try_demangle(text) {
                Ok(demangled) => without_clone_suffix(format!("{demangled:#}")),
                Err(_) => text.to_string(),
            },
            Err(_) => String::from_utf8_lossy(mangled).into_owned(),
        })
    }

    /// Whether `ip` is in a function of one of tokio's schedulers (`Some(true)`), of its
    /// blocking pool (`Some(false)`), or neither (`None`).
    pub(crate) fn tokio_scheduler(&self, ip: usize) -> Option<bool> {
        let after = self.tokio.partition_point(|(start, _, _)| *start <= ip);
        let (_, end, scheduler) = *self.tokio.get(after.checked_sub(1)?)?;
        (ip < end).then_some(scheduler)
    }

    fn function(&self, ip: usize) -> Option<&Function> {
        let after = self
            .functions
            .partition_point(|function| function.start <= ip);
        let function = self.functions.get(after.checked_sub(1)?)?;
        function.contains(ip).then_some(function)
    }

    /// The table of the ELF executable read from `file`, whose entry point the kernel put at
    /// `entry` (which gives the load bias).
    fn parse<R: Read + Seek>(file: R, entry: usize) -> Option<Self> {
        // Reads only the byte ranges asked for: a debug executable is hundreds of megabytes,
        // mostly debug information.
        let cache = ReadCache::new(file);
        match FileKind::parse(&cache).ok()? {
            FileKind::Elf64 => Self::parse_elf::<elf::FileHeader64<Endianness>, R>(cache, entry),
            FileKind::Elf32 => Self::parse_elf::<elf::FileHeader32<Endianness>, R>(cache, entry),
            _ => None,
        }
    }

    fn parse_elf<Elf: FileHeader<Endian = Endianness>, R: Read + Seek>(
        cache: ReadCache<R>,
        entry: usize,
    ) -> Option<Self> {
        let (endian, bias, symtab, strtab) = {
            let header = Elf::parse(&cache).ok()?;
            let endian = header.endian().ok()?;
            // The load bias: where the code is minus where the file says it is. The kernel
            // reports where it put the entry point (`AT_ENTRY`), the header says where it is in
            // the file. Unlike matching the executable's mapping in /proc/self/maps, this
            // compares no paths or inode numbers, which overlay file systems (containers) can
            // show differently there than `stat` does.
            let bias = (entry as u64).wrapping_sub(header.e_entry(endian).into());
            let sections = header.sections(endian, &cache).ok()?;
            let symtab = sections
                .iter()
                .find(|section| section.sh_type(endian) == elf::SHT_SYMTAB)?;
            let strtab = sections
                .section(SectionIndex(symtab.sh_link(endian) as usize))
                .ok()?;
            if strtab.sh_type(endian) != elf::SHT_STRTAB {
                return None;
            }
            (
                endian,
                bias,
                symtab.file_range(endian)?,
                strtab.file_range(endian)?,
            )
        };
        // The two tables are read into zeroed buffers rather than through the cache, which
        // fills its buffers byte by byte: that alone took 7 ms of a 22 ms load in a debug
        // build (dependencies unoptimised), for the 3.5 MB of the lib test binary.
        let mut file = cache.into_inner();
        let symtab = read_at(&mut file, symtab)?;
        let strtab = read_at(&mut file, strtab)?;
        let symbols: &[Elf::Sym] = object::pod::slice_from_all_bytes(&symtab).ok()?;

        let mut functions = Vec::new();
        let mut names = Vec::new();
        for symbol in symbols {
            let size: u64 = symbol.st_size(endian).into();
            if symbol.st_type() != elf::STT_FUNC || size == 0 || symbol.is_undefined(endian) {
                continue;
            }
            let (Ok(size), Ok(name)) = (u32::try_from(size), u32::try_from(names.len())) else {
                continue;
            };
            let Some(mangled) = strtab
                .get(symbol.st_name(endian) as usize..)
                .and_then(|rest| CStr::from_bytes_until_nul(rest).ok())
            else {
                continue;
            };
            let value: u64 = symbol.st_value(endian).into();
            let Ok(start) = usize::try_from(value.wrapping_add(bias)) else {
                continue;
            };
            names.extend_from_slice(mangled.to_bytes_with_nul());
            functions.push(Function { start, size, name });
        }
        if functions.is_empty() {
            return None;
        }
        functions.sort_unstable_by_key(|function| function.start);
        // Aliases share a start address: keep one, with the longest size, so that a lookup
        // has one entry to look at.
        functions.dedup_by(|next, kept| {
            let alias = next.start == kept.start;
            if alias {
                kept.size = kept.size.max(next.size);
            }
            alias
        });
        functions.shrink_to_fit();
        names.shrink_to_fit();
        let mut table = Self {
            functions,
            tokio: Vec::new(),
            block_in_place: Vec::new(),
            names,
        };
        (table.tokio, table.block_in_place) = table.tokio_functions();
        Some(table)
    }

    /// The functions of tokio's schedulers and blocking pool (see `tokio`), told apart by their
    /// mangled names (demangling every name that mentions tokio took 40 ms in a debug build).
    /// Also tokio's `block_in_place` functions (see `block_in_place`), by the same names.
    fn tokio_functions(&self) -> (Vec<(usize, usize, bool)>, Vec<Range>) {
        let mut found = Vec::new();
        let mut block_in_place = Vec::new();
        for function in &self.functions {
            let Some(rest) = self.names.get(function.name as usize..) else {
                continue;
            };
            let Ok(mangled) = CStr::from_bytes_until_nul(rest) else {
                continue;
            };
            let range = (
                function.start,
                function.start.saturating_add(function.size as usize),
            );
            if is_block_in_place(mangled.to_bytes()) {
                block_in_place.push(range);
            }
            let Some(scheduler) = tokio_part(mangled.to_bytes()) else {
                continue;
            };
            found.push((range.0, range.1, scheduler));
        }
        found.shrink_to_fit();
        block_in_place.shrink_to_fit();
        (found, block_in_place)
    }

    /// Whether `ip` is in one of tokio's `block_in_place` functions.
    pub(crate) fn in_block_in_place(&self, ip: usize) -> bool {
        let after = self
            .block_in_place
            .partition_point(|(start, _)| *start <= ip);
        after
            .checked_sub(1)
            .and_then(|at| self.block_in_place.get(at))
            .is_some_and(|(_, end)| ip < *end)
    }
}

/// The `size` bytes at `offset` of `file`, if it has them.
/// Whether a mangled name is tokio's `block_in_place` (`tokio::task::blocking::block_in_place`,
/// the multi-thread scheduler's, any instance): both manglings spell identifiers with their
/// length in front (`5tokio`, `14block_in_place`).
fn is_block_in_place(mangled: &[u8]) -> bool {
    let has = |part: &[u8]| mangled.windows(part.len()).any(|window| window == part);
    (mangled.starts_with(b"_ZN") || mangled.starts_with(b"_R"))
        && has(b"5tokio")
        && has(b"14block_in_place")
}

/// Whether a mangled name is a function of tokio's schedulers (`Some(true)`) or of its blocking
/// pool (`Some(false)`): a path under `tokio::runtime::scheduler` or `tokio::runtime::blocking`,
/// or a method of a type there (`<tokio::runtime::blocking::pool::Inner>::run`). Legacy
/// mangling (rustc's default) is read as it is; v0 mangling is demangled.
fn tokio_part(mangled: &[u8]) -> Option<bool> {
    let legacy = mangled.strip_prefix(b"_ZN").map(|rest| {
        // `<Type as Trait>::method` starts with the length of `_<Type as Trait>` and `_$LT$`.
        let digits = rest.iter().take_while(|byte| byte.is_ascii_digit()).count();
        match rest[digits..].strip_prefix(b"_$LT$") {
            Some(path) => (path, true),
            None => (rest, false),
        }
    });
    match legacy {
        Some((path, true)) if path.starts_with(b"tokio..runtime..scheduler..") => Some(true),
        Some((path, true)) if path.starts_with(b"tokio..runtime..blocking..") => Some(false),
        Some((path, false)) if path.starts_with(b"5tokio7runtime9scheduler") => Some(true),
        Some((path, false)) if path.starts_with(b"5tokio7runtime8blocking") => Some(false),
        Some(_) => None,
        // Not Rust (a C function), or Rust's v0 mangling (`_R`), which is demangled.
        None if !mangled.starts_with(b"_R") => None,
        None => {
            let text = std::str::from_utf8(mangled).ok()?;
            let name = format!("{:#}", rustc_demangle::try_demangle(text).ok()?);
            let name = name.trim_start_matches('<');
            if name.starts_with("tokio::runtime::scheduler::") {
                Some(true)
            } else if name.starts_with("tokio::runtime::blocking::") {
                Some(false)
            } else {
                None
            }
        }
    }
}

/// `name` without the suffix LLVM gives a function it cloned or split (`poll.2692`,
/// `foo.llvm.1234`, `bar.cold`): the same source function.
fn without_clone_suffix(mut name: String) -> String {
    loop {
        let Some(dot) = name.rfind('.') else {
            return name;
        };
        let suffix = &name[dot + 1..];
        let clone = !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
            || suffix == "llvm"
            || suffix == "cold";
        // Only after the last path segment (never inside `<…>` or a path).
        if !clone || name[dot..].contains("::") || name[dot..].contains('>') {
            return name;
        }
        name.truncate(dot);
    }
}

fn read_at<R: Read + Seek>(file: &mut R, (offset, size): (u64, u64)) -> Option<Vec<u8>> {
    let len = file.seek(SeekFrom::End(0)).ok()?;
    if offset.checked_add(size)? > len {
        return None;
    }
    let mut bytes = vec![0; usize::try_from(size).ok()?];
    file.seek(SeekFrom::Start(offset)).ok()?;
    file.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

/// Where the kernel mapped the executable's entry point (`AT_ENTRY` of the auxiliary vector,
/// read from /proc/self/auxv: native-endian pairs of words, ending with `AT_NULL`).
fn entry_point() -> Option<usize> {
    const WORD: usize = std::mem::size_of::<usize>();
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    let word = |bytes: &[u8]| Some(usize::from_ne_bytes(bytes.try_into().ok()?));
    auxv.chunks_exact(2 * WORD)
        .map(|pair| Some((word(&pair[..WORD])?, word(&pair[WORD..])?)))
        .map_while(|pair| pair.filter(|(key, _)| *key != libc::AT_NULL as usize))
        .find(|(key, _)| *key == libc::AT_ENTRY as usize)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;
    use std::io::Cursor;
    use std::time::Instant;

    #[inline(never)]
    fn that_fn_name() -> u64 {
        black_box(7u64).wrapping_mul(black_box(3))
    }

    #[inline(never)]
    fn generic<T: Default + Copy>() -> T {
        black_box(T::default())
    }

    struct Holder<T>(T);

    impl<T: Copy> Holder<T> {
        #[inline(never)]
        fn get(&self) -> T {
            black_box(self.0)
        }
    }

    /// The address of an instruction inside a closure's own body: the return address of the
    /// call it makes to `caller_ip`, less 1 (so inside the call instruction).
    #[inline(never)]
    fn closure_ip() -> usize {
        let closure = |_: ()| black_box(caller_ip()) - 1;
        closure(())
    }

    /// The return address of this function's call (the instruction after the call in its caller).
    #[inline(never)]
    fn caller_ip() -> usize {
        let mut frames = Vec::new();
        backtrace::trace(|frame| {
            frames.push(frame.ip() as usize);
            frames.len() < 8
        });
        // Frames: backtrace's own (`trace` and what it calls), this function, its caller.
        let here = caller_ip as fn() -> usize as usize;
        let table = SymbolTable::load().expect("the test binary has a symbol table");
        let mine = frames
            .iter()
            .position(|ip| {
                table
                    .function(ip.wrapping_sub(1))
                    .is_some_and(|f| f.start == here)
            })
            .expect("caller_ip is on its own stack");
        frames[mine + 1]
    }

    /// Addresses a few bytes into functions of this crate of each kind a stall's label names.
    fn known_addresses() -> Vec<(&'static str, usize)> {
        vec![
            ("that_fn_name", that_fn_name as fn() -> u64 as usize + 4),
            ("generic::<u32>", generic::<u32> as fn() -> u32 as usize + 4),
            (
                "Holder::<u8>::get",
                Holder::<u8>::get as fn(&Holder<u8>) -> u8 as usize + 4,
            ),
            ("closure", closure_ip()),
            (
                "SymbolTable::load",
                SymbolTable::load as fn() -> Option<SymbolTable> as usize + 4,
            ),
            (
                "SymbolTable::name",
                SymbolTable::name as fn(&SymbolTable, usize) -> Option<String> as usize + 4,
            ),
            (
                "symbols::fold",
                super::super::symbols::fold as fn(&[String]) -> String as usize + 4,
            ),
        ]
    }

    #[test]
    fn names_functions_of_the_test_binary() {
        let table = SymbolTable::load().expect("the test binary has a symbol table");
        let name = |ip: usize| {
            table
                .name(ip)
                .unwrap_or_else(|| panic!("no name for {ip:#x}"))
        };
        let module = module_path!();

        let start = that_fn_name as fn() -> u64 as usize;
        assert_eq!(name(start), format!("{module}::that_fn_name"));
        assert_eq!(name(start + 4), format!("{module}::that_fn_name"));

        // Legacy mangling names a generic function without its arguments, v0 with them.
        let generic = name(generic::<u32> as fn() -> u32 as usize + 4);
        assert!(
            generic.starts_with(&format!("{module}::generic")),
            "{generic}"
        );
        let get = name(Holder::<u8>::get as fn(&Holder<u8>) -> u8 as usize + 4);
        assert!(
            get.contains(&format!("{module}::Holder<")) && get.ends_with(">::get"),
            "{get}"
        );
        // `{{closure}}` in legacy mangling, `{closure#0}` in v0. A release build inlines the
        // closure into its function (then there is no closure to name).
        let closure = name(closure_ip());
        assert!(
            !cfg!(debug_assertions) && closure == format!("{module}::closure_ip")
                || closure.starts_with(&format!("{module}::closure_ip::{{"))
                    && closure.contains("closure"),
            "{closure}"
        );
    }

    #[test]
    fn an_address_outside_the_executable_has_no_name() {
        let table = SymbolTable::load().expect("the test binary has a symbol table");
        // In libc, a shared library: not the executable's code.
        assert_eq!(
            table.name(libc::clock_nanosleep as *const () as usize + 4),
            None
        );
        // Not code at all.
        assert_eq!(table.name(0), None);
        assert_eq!(table.name(usize::MAX), None);
        let on_stack = 0u64;
        assert_eq!(table.name(&on_stack as *const u64 as usize), None);
    }

    #[test]
    fn agrees_with_backtrace() {
        // Run alone, this is the process's first backtrace lookup, whose time is printed:
        // `cargo test --lib symtab::tests::agrees_with_backtrace -- --exact --nocapture`.
        let started = Instant::now();
        let table = SymbolTable::load().expect("the test binary has a symbol table");
        let loaded = started.elapsed();
        let heap =
            table.functions.capacity() * std::mem::size_of::<Function>() + table.names.capacity();
        println!(
            "symtab: load {loaded:?}, {} functions, {heap} bytes ({} of names)",
            table.functions.len(),
            table.names.capacity()
        );

        let addresses = known_addresses();
        let mut first_lookup = None;
        for (what, ip) in addresses {
            let started = Instant::now();
            let mut names = Vec::new();
            backtrace::resolve(ip as *mut std::ffi::c_void, |symbol| {
                names.push(symbol.name().map(|name| format!("{name:#}")));
            });
            first_lookup.get_or_insert(started.elapsed());
            // Inlined frames come first; the function the address is in is the last.
            let outermost = names.pop().flatten();
            assert!(outermost.is_some(), "backtrace has no name for {what}");
            assert_eq!(table.name(ip), outermost, "{what} at {ip:#x}");
        }
        // What naming a stack that is in libc adds: its separate debug information.
        let started = Instant::now();
        backtrace::resolve(libc::clock_nanosleep as *mut std::ffi::c_void, |_| {});
        println!(
            "symtab: first backtrace::resolve {first_lookup:?}, then one in libc {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn clone_suffixes_are_left_out() {
        for (name, bare) in [
            (
                "<a::RouteFuture<E> as core::future::Future>::poll.2692",
                "<a::RouteFuture<E> as core::future::Future>::poll",
            ),
            ("my_app::handler.llvm.12345", "my_app::handler"),
            ("my_app::slow_path.cold", "my_app::slow_path"),
            ("my_app::handler", "my_app::handler"),
            (
                "<f64 as core::fmt::Display>::fmt",
                "<f64 as core::fmt::Display>::fmt",
            ),
        ] {
            assert_eq!(without_clone_suffix(name.to_string()), bare);
        }
    }

    #[test]
    fn bad_input_gives_none() {
        let entry = entry_point().expect("the auxiliary vector has AT_ENTRY");
        assert!(SymbolTable::parse(Cursor::new(b"not an ELF file".to_vec()), entry).is_none());
        assert!(SymbolTable::parse(Cursor::new(Vec::new()), entry).is_none());
        // A valid header whose section headers lie past the end of the file.
        let mut head = vec![0; 64 * 1024];
        let read = File::open("/proc/self/exe")
            .and_then(|mut file| file.read(&mut head))
            .expect("the test binary is readable");
        head.truncate(read);
        assert!(FileKind::parse(&head[..]).is_ok());
        assert!(SymbolTable::parse(Cursor::new(head), entry).is_none());
        // The whole file, with an entry point 4 KiB off: every name moves with it.
        let moved = SymbolTable::parse(File::open("/proc/self/exe").unwrap(), entry + 4096)
            .expect("the test binary has a symbol table");
        let here = that_fn_name as fn() -> u64 as usize + 4;
        let expected = format!("{}::that_fn_name", module_path!());
        assert_ne!(moved.name(here).as_ref(), Some(&expected));
        assert_eq!(moved.name(here + 4096), Some(expected));
    }
}
