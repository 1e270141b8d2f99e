//! Which loaded object an address lies in, from the dynamic linker (`dladdr`): the C library
//! and its kin, never a culprit; the executable, whose stripped frames get offsets; a shared
//! library's exported names. Not for the handler.

use std::ffi::c_void;

/// Whether `ip` lies in the C library, the dynamic linker, the unwinder or the vDSO: code that is
/// never the culprit, whatever its (often internal) symbol is called. Not for the handler.
pub(crate) fn in_system_library(ip: usize) -> bool {
    // SAFETY: an all-zero Dl_info is a valid value of this plain C struct.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loaded objects' tables and writes `info`, which we own;
    // any address may be asked about.
    if unsafe { libc::dladdr(ip as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: dladdr succeeded, so dli_fname is a NUL-terminated path owned by the dynamic
    // linker, valid while the object stays loaded (system libraries are never unloaded).
    let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_bytes();
    let name = path.rsplit(|byte| *byte == b'/').next().unwrap_or(path);
    const SYSTEM: [&[u8]; 10] = [
        b"libc.so",
        b"libc-",
        b"ld-linux",
        b"ld-musl",
        b"libpthread",
        b"libgcc_s",
        b"libm.so",
        b"libdl",
        b"librt",
        b"linux-vdso",
    ];
    SYSTEM.iter().any(|system| name.starts_with(system))
}

/// The name of the exported symbol at or before `ip` in the shared object it lies in (the C
/// library's `clock_nanosleep`), if the dynamic linker knows one. Not for the handler.
pub(crate) fn exported_name(ip: usize) -> Option<String> {
    // SAFETY: as in `in_system_library`.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as in `in_system_library`.
    if unsafe { libc::dladdr(ip as *const c_void, &mut info) } == 0 || info.dli_sname.is_null() {
        return None;
    }
    // SAFETY: dladdr succeeded with a symbol: dli_sname is a NUL-terminated name owned by the
    // dynamic linker, valid while the object stays loaded.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_sname) };
    Some(name.to_string_lossy().into_owned())
}

/// Whether `ip` lies in the executable hogwatch is linked into or in the C library: the two
/// objects whose names come from `backtrace` (see `Symbolizer::resolve`). Not for the handler.
pub(crate) fn in_executable_or_c_library(ip: usize) -> bool {
    if offset_in_executable(ip).is_some() {
        return true;
    }
    // SAFETY: as in `in_system_library`.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as in `in_system_library`.
    if unsafe { libc::dladdr(ip as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: as in `in_system_library`.
    let path = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_bytes();
    let name = path.rsplit(|byte| *byte == b'/').next().unwrap_or(path);
    name.starts_with(b"libc.so") || name.starts_with(b"libc-")
}

/// Where `ip` lies in the executable hogwatch is linked into, as an offset from its start, or
/// `None` if it lies elsewhere (a library, the vDSO). Not for the handler.
pub(crate) fn offset_in_executable(ip: usize) -> Option<usize> {
    let base = |address: usize| {
        // SAFETY: as in `in_system_library`.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: as in `in_system_library`.
        match unsafe { libc::dladdr(address as *const c_void, &mut info) } {
            0 => None,
            _ => Some(info.dli_fbase as usize),
        }
    };
    let ours = base(offset_in_executable as fn(usize) -> Option<usize> as usize)?;
    (base(ip)? == ours).then(|| ip - ours)
}
