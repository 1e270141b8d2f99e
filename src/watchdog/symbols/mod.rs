//! From raw instruction pointers to names, folded stacks and the culprit. Runs on the watchdog
//! thread, after the blocked thread has been let go.

use std::collections::HashMap;
use std::sync::Arc;

/// The name given to a frame nothing could be resolved for (as `perf` does).
pub(crate) const UNKNOWN: &str = "[unknown]";

/// Appended to the name of a frame the unwinder could not prove (see `watchdog::unwind`).
pub(crate) const UNCERTAIN: &str = " (uncertain)";

/// The frames that are "the runtime" and never the culprit, matched as described on
/// `Builder::runtime_prefixes`.
pub(crate) const DEFAULT_RUNTIME_PREFIXES: &[&str] = &[
    // The standard library, the runtime, the HTTP stack and ourselves.
    "std",
    "core",
    "alloc",
    "tokio",
    "tokio_util",
    "tokio_stream",
    "tokio_metrics",
    "mio",
    "futures",
    "futures_util",
    "futures_core",
    "futures_channel",
    "futures_executor",
    "futures_task",
    "pin_project",
    "pin_project_lite",
    "hyper",
    "hyper_util",
    "h2",
    "http",
    "http_body",
    "http_body_util",
    "httparse",
    "tower",
    "tower_http",
    "tower_layer",
    "tower_service",
    "axum",
    "axum_core",
    "tracing",
    "tracing_core",
    "tracing_subscriber",
    "console_subscriber",
    "hogwatch",
    "backtrace",
    "quanta",
    // The standard library's own crates: the compiler's intrinsics (a `u128` to `f64` in tokio's
    // scheduler statistics, 128-bit arithmetic, `memcpy` on some targets), CPU feature detection.
    "compiler_builtins",
    "std_detect",
    // Serde's data model: generic glue (`impl Serialize for String`, `collect_seq`) whose time
    // belongs to the format crate that drives it (serde_json, simd-json), which is what one fixes.
    // A derived impl is named after its own type (`<my_app::Doc as serde::Serialize>`), so it
    // stays the culprit.
    "serde",
    "serde_core",
    // Locks, as std's own are: a thread waiting on one is blamed on the function that took it
    // (tokio parks its workers on parking_lot's condition variable when its feature is on).
    "parking_lot",
    "parking_lot_core",
    "lock_api",
    // The C library and the unwinder: allocator, memory and thread internals.
    "_",
    "libc",
    "malloc",
    "calloc",
    "realloc",
    "free",
    "cfree",
    "memcpy",
    "memmove",
    "memset",
    "memcmp",
    "bcmp",
    "start_thread",
    "clone",
    "clone3",
    "pthread",
    "syscall",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "gettimeofday",
    "sched_yield",
    "epoll_wait",
    "futex",
    "tcache",
    "sysmalloc",
    "mmap",
    "munmap",
    "madvise",
];

/// Whether the frame `name` belongs to the runtime according to `prefixes`.
///
/// A prefix ending in `_` or `::` matches any name that starts with it; any other prefix names a
/// crate (or C symbol): it matches the name's first path segment exactly or followed by `_`
/// (`tokio` matches `tokio::…` and `tokio_util::…`, not `tokioish::…`). Leading `<`, `&`, `mut `
/// and `dyn ` of trait-impl names are ignored.
pub(crate) fn is_runtime(name: &str, prefixes: &[String]) -> bool {
    let mut name = name;
    loop {
        let trimmed = name
            .trim_start_matches(['<', '&', '*', ' ', '('])
            .trim_start_matches("mut ")
            .trim_start_matches("dyn ")
            .trim_start_matches("const ");
        if trimmed.len() == name.len() {
            break;
        }
        name = trimmed;
    }
    // `<u64 as core::iter::Step>::forward` and `<T as core::fmt::Display>::fmt`: the self type
    // is a primitive or a generic parameter, so the code is the trait's crate's.
    if let Some((self_type, rest)) = name.split_once(" as ") {
        if !self_type.contains("::") {
            return is_runtime(rest, prefixes);
        }
    }
    // A C function (no `::`) continues a prefix with `_` (`pthread` covers
    // `pthread_mutex_lock`); a Rust path must name the crate exactly, so that `axum` does not
    // swallow the user's own `axum_app`.
    let c_function = !name.contains("::");
    // `<u64>::unchecked_add`, `<[T]>::iter`, `<str>::len`: an inherent method of a primitive type
    // (the self type has no path, or is a slice or array), which only the standard library defines.
    if let Some((self_type, _)) = name.split_once(">::") {
        if !self_type.contains(" as ") && (self_type.starts_with('[') || !self_type.contains("::"))
        {
            return true;
        }
    }
    prefixes.iter().any(|prefix| {
        if prefix.ends_with('_') || prefix.ends_with("::") {
            return name.starts_with(prefix.as_str());
        }
        name.strip_prefix(prefix.as_str()).is_some_and(|rest| {
            rest.is_empty()
                || rest.starts_with("::")
                || (c_function && rest.starts_with('_'))
                || rest.starts_with(' ')
                || rest.starts_with('<')
                || rest.starts_with('@')
                || rest.starts_with('.')
        })
    })
}

/// One resolved frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The function, demangled, without hash.
    pub(crate) name: String,
    /// In the C library, the dynamic linker, the unwinder or the vDSO (never the culprit).
    pub(crate) system: bool,
}

/// The first frame (innermost first) that is not the runtime's, within the poll: the frames below
/// hogwatch's `Watched::poll`, or below tokio's task harness for a task poll (the executor, the
/// program's `main`, a test harness) did not block anything.
///
/// If every frame within the poll is the runtime's (the handler's own code was inlined into
/// the runtime's poll functions, as `async fn`s often are in a release build), the culprit is
/// the standard library function the poll called: the outermost of the innermost run of
/// `std::` frames (`std::thread::sleep`, not the `std::sys::…` function it calls).
pub(crate) fn culprit(frames: &[Frame], prefixes: &[String]) -> Option<String> {
    let inside = || {
        frames
            .iter()
            .take_while(|frame| !is_poll_boundary(&frame.name))
            .filter(|frame| !frame.system && frame.name != UNKNOWN)
    };
    if let Some(frame) = inside().find(|frame| !is_runtime(&frame.name, prefixes)) {
        return Some(frame.name.clone());
    }
    inside()
        .skip_while(|frame| !frame.name.starts_with("std::"))
        .take_while(|frame| frame.name.starts_with("std::"))
        .last()
        .map(|frame| frame.name.clone())
}

/// What a named stack adds to its sample's record: the frames inside the poll folded, the
/// culprit, the app's frame that called it, and the frames of the function table.
pub(crate) fn named_stack(frames: &[Frame], prefixes: &[String]) -> super::stalls::NamedStack {
    let culprit = culprit(frames, prefixes);
    let called_from = culprit
        .as_deref()
        .and_then(|culprit| called_from(frames, culprit, prefixes));
    let names: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
    let inside = within_poll(&names).len();
    let own = frames[..inside]
        .iter()
        .filter(|frame| {
            !frame.system && frame.name != UNKNOWN && !is_runtime(&frame.name, prefixes)
        })
        .map(|frame| frame.name.clone())
        .collect();
    super::stalls::NamedStack {
        folded: match inside {
            0 => String::new(),
            _ => fold(&names[..inside]),
        },
        culprit,
        called_from,
        own,
    }
}

/// The app's frame that led to `culprit`: the app is the crate of the outermost frame within
/// the poll that is not the runtime's (the handler's, the task's), and its frame is the first
/// of that crate outward of the culprit (`serde_json::ser::format_escaped_str`, called from
/// `my_app::handler`). `None` if the culprit is the app's own code.
pub(crate) fn called_from(frames: &[Frame], culprit: &str, prefixes: &[String]) -> Option<String> {
    let own: Vec<&Frame> = frames
        .iter()
        .take_while(|frame| !is_poll_boundary(&frame.name))
        .filter(|frame| {
            !frame.system && frame.name != UNKNOWN && !is_runtime(&frame.name, prefixes)
        })
        .collect();
    let app = crate_of(&own.last()?.name);
    let at = own.iter().position(|frame| frame.name == culprit)?;
    if crate_of(culprit) == app {
        return None;
    }
    own[at + 1..]
        .iter()
        .find(|frame| crate_of(&frame.name) == app)
        .map(|frame| frame.name.clone())
}

/// The first path segment of a function's name (`<my_app::Doc as serde::Serialize>::serialize`
/// is `my_app`'s).
fn crate_of(name: &str) -> &str {
    let name = name.trim_start_matches(['<', '&', '*', ' ']);
    let name = name.strip_prefix("impl ").unwrap_or(name);
    name.split("::").next().unwrap_or(name)
}

/// Whether `name` is where a poll hogwatch watches begins: a poll of one of hogwatch's own
/// wrappers (`crate::poll_wrappers`: `Watched`, the layer's route future and body), or the
/// functions of tokio's task harness that poll a task's future (for the polls the task hooks
/// publish). The frames below it are the executor's.
fn is_poll_boundary(name: &str) -> bool {
    static WRAPPERS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let name = name.trim_start_matches('<');
    WRAPPERS
        .get_or_init(crate::poll_wrappers)
        .iter()
        .any(|wrapper| {
            name.strip_prefix(wrapper)
                .is_some_and(|rest| rest.starts_with(['<', ' ', ':']) || rest.is_empty())
        })
        || is_task_harness(name)
        || is_block_on(name)
}

/// Whether `name` is one of tokio's functions that park a thread (a worker's condition variable,
/// the I/O driver, `block_on`'s park).
pub(crate) fn is_park(name: &str) -> bool {
    name.starts_with("tokio::runtime::") && name.contains("park")
}

/// Whether `name` is tokio's `block_on`, which polls the future given to it (the body of
/// `#[tokio::main]` or `#[tokio::test]`): on a current-thread runtime a stall there blocks every
/// task, and the test guard (`crate::testing`) reports it in either flavor.
pub(crate) fn is_block_on(name: &str) -> bool {
    name.starts_with("tokio::runtime::") && without_generics(name).contains("::block_on")
}

/// The functions of tokio's task harness between the worker and a task's future, as they appear
/// with or without inlined frames: `Core::poll` (and its closure), `harness::poll_future`,
/// `Harness::poll` / `poll_inner`, `raw::poll`. Only the worker calls them, so none of them is
/// ever above user code in a stack (unlike, say, `Harness::try_read_output`, which a `JoinHandle`
/// the user awaits calls). Generic arguments are ignored, in either mangling's spelling.
fn is_task_harness(name: &str) -> bool {
    const HARNESS: &[&str] = &[
        "tokio::runtime::task::core::Core::poll",
        "tokio::runtime::task::harness::poll_future",
        "tokio::runtime::task::harness::Harness::poll",
        "tokio::runtime::task::harness::Harness::poll_inner",
        "tokio::runtime::task::raw::poll",
        "tokio::runtime::task::raw::RawTask::poll",
    ];
    if !name.starts_with("tokio::runtime::task::") {
        return false;
    }
    let path = without_generics(name);
    HARNESS.iter().any(|function| {
        path.strip_prefix(function)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// `name` without its generic arguments and stray angle brackets:
/// `tokio::runtime::task::core::Core<T,S>::poll::{{closure}}` becomes
/// `tokio::runtime::task::core::Core::poll::{{closure}}`.
fn without_generics(name: &str) -> String {
    let mut depth = 0usize;
    let mut path = String::with_capacity(name.len());
    let mut previous = ' ';
    for c in name.chars() {
        match c {
            '<' => depth += 1,
            // The `>` of a function type's `->` closes nothing.
            '>' if previous == '-' => {}
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => path.push(c),
            _ => {}
        }
        previous = c;
    }
    path
}

/// The frames inside the poll (innermost first): those above `Watched::poll` or the task harness,
/// or all of them if neither is on the stack.
pub(crate) fn within_poll(frames: &[String]) -> &[String] {
    let end = frames
        .iter()
        .position(|frame| is_poll_boundary(frame))
        .unwrap_or(frames.len());
    &frames[..end]
}

/// The root frame of a folded stack whose outermost frames were left out.
pub(crate) const TRUNCATED: &str = "[truncated]";

/// A stack (innermost frame first) folded root first, `a;b;c`, as flame graph tools read it;
/// at most [`MAX_DEPTH`](super::stalls::MAX_DEPTH) frames and
/// [`MAX_STACK_BYTES`](super::stalls::MAX_STACK_BYTES) bytes, keeping the innermost frames (the
/// culprit's end) and starting with [`TRUNCATED`] if any were left out.
pub(crate) fn fold(frames: &[String]) -> String {
    use super::stalls::{MAX_DEPTH, MAX_STACK_BYTES};
    let budget = MAX_STACK_BYTES - TRUNCATED.len() - 1;
    let mut kept = 0;
    let mut bytes = 0;
    for frame in frames.iter().take(MAX_DEPTH) {
        let more = frame.len() + usize::from(kept > 0);
        if bytes + more > budget {
            break;
        }
        bytes += more;
        kept += 1;
    }
    let mut folded = String::with_capacity(bytes + TRUNCATED.len() + 1);
    if kept < frames.len() {
        folded.push_str(TRUNCATED);
    }
    for frame in frames[..kept].iter().rev() {
        if !folded.is_empty() {
            folded.push(';');
        }
        // A `;` inside a name (`[u8; 4]`) would split the frame.
        folded.extend(frame.chars().map(|c| if c == ';' { ',' } else { c }));
    }
    folded
}

/// Resolves instruction pointers to names, caching per address.
///
/// The name of the function an address is in comes from the executable's symbol table
/// (`symtab`) where it has one: the full path as the binary states it, in every profile
/// (`debug = "line-tables-only"` leaves only short names such as `{async_fn#0}` or `allocate`
/// in the debug information). The debug information adds the functions inlined there, innermost
/// first, when it names them by full path; short names are left out (that time is the
/// enclosing function's). In a stripped executable, its addresses are named
/// `<stripped> 0x…` (an offset in the executable), never after the nearest exported symbol.
///
/// Until `backtrace` has loaded the debug information ([`warm_up_in_background`]: hundreds of
/// milliseconds in a debug build), names come from the symbol table alone, without inlined
/// frames, so that no stall waits for its names.
#[derive(Default)]
pub(crate) struct Symbolizer {
    cache: HashMap<usize, Arc<[Frame]>>,
}

/// The executable's symbol table, read once for the process at the first name asked for
/// (`None`: there is none, or it does not describe the running code).
#[cfg(target_os = "linux")]
pub(crate) fn symbol_table() -> Option<&'static super::symtab::SymbolTable> {
    SYMBOL_TABLE
        .get_or_init(super::symtab::SymbolTable::load)
        .as_ref()
}

/// The symbol table if it has been read, without waiting: for the watchdog thread, which must
/// never wait for it (in a `fork()` child whose parent was reading it, nobody ever finishes).
/// The warm-up thread reads it first thing.
#[cfg(target_os = "linux")]
pub(crate) fn symbol_table_if_read() -> Option<&'static super::symtab::SymbolTable> {
    SYMBOL_TABLE.get()?.as_ref()
}

#[cfg(target_os = "linux")]
static SYMBOL_TABLE: std::sync::OnceLock<Option<super::symtab::SymbolTable>> =
    std::sync::OnceLock::new();

/// Whether `backtrace` has loaded the program's and the C library's debug information (its
/// cache is the process's): from then on it names an address in microseconds.
static WARM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether names may come from `backtrace` without waiting for its first load.
pub(crate) fn is_warm() -> bool {
    WARM.load(std::sync::atomic::Ordering::Acquire)
}

/// Loads the debug information of the program and of the C library into `backtrace`'s cache
/// on a thread of its own, once per process, then says so ([`is_warm`]). Every stack a signal
/// captures passes through the C library's signal trampoline: its symbols took 90 ms to load
/// in a release build here (250 ms with its separate debug information installed).
pub(crate) fn warm_up_in_background() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("hogwatch-symbols-warm-up".to_string())
            .spawn(|| {
                // The symbol table first: names come from it meanwhile.
                #[cfg(target_os = "linux")]
                symbol_table();
                let here = warm_up_in_background as fn() as usize;
                #[cfg(target_os = "linux")]
                let in_libc = libc::clock_nanosleep as *const () as usize;
                #[cfg(not(target_os = "linux"))]
                let in_libc = here;
                for ip in [here, in_libc] {
                    backtrace::resolve(ip as *mut std::ffi::c_void, |_| {});
                }
                WARM.store(true, std::sync::atomic::Ordering::Release);
            });
        if spawned.is_err() {
            // No thread: `backtrace` will load on first use instead.
            WARM.store(true, std::sync::atomic::Ordering::Release);
        }
    });
}

/// The prefix of a frame of a stripped executable: its functions have no names to give.
pub(crate) const STRIPPED: &str = "<stripped>";

impl Symbolizer {
    /// Above this many cached addresses the cache starts over (bounded memory).
    const MAX_CACHED: usize = 65_536;

    /// The names of `ips` (innermost first, inlined functions expanded), without the frames of
    /// the signal handler: the stack starts at `pc`, the interrupted instruction, when known.
    /// The frames of `ips[uncertain_from..]` are marked [`UNCERTAIN`].
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn frames(&mut self, ips: &[usize], pc: usize, uncertain_from: usize) -> Vec<Frame> {
        let start = if pc == 0 {
            None
        } else {
            ips.iter().position(|ip| *ip == pc)
        };
        let first = start.unwrap_or(0);
        let mut per_ip: Vec<Arc<[Frame]>> = ips
            .iter()
            .enumerate()
            // A return address is just past its call, maybe past its function's end: the call
            // itself is looked up.
            .map(|(at, ip)| match at > first {
                true => self.resolve(ip.saturating_sub(1)),
                false => self.resolve(*ip),
            })
            .collect();
        for frames in per_ip.iter_mut().skip(uncertain_from) {
            *frames = frames
                .iter()
                .map(|frame| Frame {
                    name: format!("{}{UNCERTAIN}", frame.name),
                    system: frame.system,
                })
                .collect();
        }
        match start {
            Some(start) => {
                per_ip.drain(..start);
            }
            None => {
                // Cut after the signal trampoline or, failing that, after our handler.
                let is_handler = |frames: &Arc<[Frame]>| {
                    frames.iter().any(|Frame { name, .. }| {
                        name.contains("__restore_rt")
                            || name.contains("rt_sigreturn")
                            || name.starts_with("hogwatch::watchdog::signal")
                            || name.starts_with("backtrace::")
                    })
                };
                if let Some(last) = per_ip.iter().take(32).rposition(is_handler) {
                    per_ip.drain(..=last);
                }
            }
        }
        per_ip
            .iter()
            .flat_map(|frames| frames.iter().cloned())
            .collect()
    }

    /// The frames at `ip`, innermost (inlined) first; a return address is passed less one.
    fn resolve(&mut self, ip: usize) -> Arc<[Frame]> {
        if let Some(names) = self.cache.get(&ip) {
            return names.clone();
        }
        #[cfg(target_os = "linux")]
        if !is_warm() {
            // Not cached: once `backtrace` is ready, the address gets its inlined frames too.
            return Arc::new([self.quick_name(ip)]);
        }
        // `backtrace` keeps the debug information of four objects at most, and reads an evicted
        // one again on its next address: the executable's takes hundreds of milliseconds in a
        // debug build, during which the watchdog samples nothing (the likely reason a test
        // guard's 20 ms sleep went unseen in 3 of 7 fresh runs of its binary, 0 of 7 since).
        // Only the executable and the C library are named by it; other objects (the vDSO, the
        // dynamic linker, `libgcc_s`, the app's shared libraries) by their exported symbols,
        // which is what `backtrace` finds in them too without debug information installed.
        #[cfg(target_os = "linux")]
        if !super::signal::in_executable_or_c_library(ip) {
            let frames: Arc<[Frame]> = Arc::new([self.quick_name(ip)]);
            if self.cache.len() >= Self::MAX_CACHED {
                self.cache.clear();
            }
            self.cache.insert(ip, frames.clone());
            return frames;
        }
        let mut names = Vec::new();
        backtrace::resolve(ip as *mut std::ffi::c_void, |symbol| {
            if let Some(name) = symbol.name() {
                // `{:#}` leaves out the hash suffix of legacy-mangled names. Cut to a bounded
                // length: a stall keeps its names for the whole report window.
                names.push(super::stalls::cap_name(format!("{name:#}")));
            }
        });
        #[cfg(target_os = "linux")]
        {
            names = self.true_names(ip, names);
        }
        if names.is_empty() {
            names.push(UNKNOWN.to_string());
        }
        #[cfg(target_os = "linux")]
        let system = super::signal::in_system_library(ip);
        #[cfg(not(target_os = "linux"))]
        let system = false;
        let frames: Arc<[Frame]> = names
            .into_iter()
            .map(|name| Frame { name, system })
            .collect();
        if self.cache.len() >= Self::MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(ip, frames.clone());
        frames
    }

    /// `backtrace`'s names for `ip` (innermost first), with the function the executable's
    /// symbol table says `ip` is in as the outermost, and only full-path inlined names inside
    /// it; a stripped executable's address gets [`STRIPPED`] and its offset.
    #[cfg(target_os = "linux")]
    fn true_names(&mut self, ip: usize, names: Vec<String>) -> Vec<String> {
        let Some(table) = symbol_table() else {
            return match super::signal::offset_in_executable(ip) {
                Some(offset) => vec![format!("{STRIPPED} {offset:#x}")],
                None => names,
            };
        };
        // A full path has `::` outside its generic arguments (`<T as Trait>::f` too);
        // `format_escaped_str_contents<&mut Vec<u8>>`, `poll<Pin<Box<…>>>` or `{closure#0}`
        // does not.
        let full_path = |name: &String| without_generics(name).contains("::");
        let Some(outer) = table.name(ip) else {
            // Not one of the table's functions: a library's (whose C names are what they are),
            // or code of the executable the table does not cover, named by full path or not
            // at all.
            return match super::signal::offset_in_executable(ip) {
                Some(_) => names.into_iter().filter(full_path).collect(),
                None => names,
            };
        };
        let inlined = names.len().saturating_sub(1);
        let mut named: Vec<String> = names.into_iter().take(inlined).filter(full_path).collect();
        named.push(super::stalls::cap_name(outer));
        named
    }

    /// The function `ip` is in, without `backtrace`: from the symbol table, or as stripped, or
    /// the nearest symbol the dynamic linker knows (a shared library's exported functions).
    #[cfg(target_os = "linux")]
    fn quick_name(&self, ip: usize) -> Frame {
        let name = match symbol_table() {
            Some(table) => table.name(ip),
            None => super::signal::offset_in_executable(ip)
                .map(|offset| format!("{STRIPPED} {offset:#x}")),
        }
        .or_else(|| super::signal::exported_name(ip))
        .map_or_else(|| UNKNOWN.to_string(), super::stalls::cap_name);
        Frame {
            name,
            system: super::signal::in_system_library(ip),
        }
    }
}

#[cfg(test)]
mod tests;
