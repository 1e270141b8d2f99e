//! Tests of the parent module.

use super::*;

fn defaults() -> Vec<String> {
    DEFAULT_RUNTIME_PREFIXES
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn runtime_frames_are_recognised() {
    let prefixes = defaults();
    for runtime in [
        "std::thread::sleep",
        "<core::pin::Pin<P> as core::future::future::Future>::poll",
        "tokio_util::codec::Framed::poll",
        "<&mut alloc::vec::Vec<u8> as std::io::Write>::write",
        "hogwatch::watch::Watched<F>::poll",
        "__memmove_avx_unaligned_erms",
        "_int_malloc",
        "malloc",
        "pthread_mutex_lock",
        "clone3",
        "<u64 as core::iter::range::Step>::forward_unchecked",
        "<&T as core::fmt::Display>::fmt",
        "<u64>::unchecked_add",
        "<[my_app::Item]>::sort_by",
        "<str>::len",
        "serde_core::ser::impls::<impl serde_core::ser::Serialize for alloc::string::String>::serialize",
        "serde::ser::Serializer::collect_seq",
    ] {
        assert!(is_runtime(runtime, &prefixes), "{runtime}");
    }
    for user in [
        "watchdog::crunch_numbers",
        "<my_app::Doc as serde_core::ser::Serialize>::serialize",
        "<&mut serde_json::de::Deserializer<R> as serde_core::de::Deserializer>::deserialize_any",
        "<serde_json::value::Value as serde::ser::Serialize>::serialize",
        "<&mut serde_json::ser::Serializer<W> as serde::ser::Serializer>::serialize_str",
        "tokioish::run",
        "stdlib_user::go",
        "my_app::handler::{{closure}}",
        "<T as my_app::Render>::render",
        "<my_app::Page as core::fmt::Display>::fmt",
        "<my_app::Page>::render",
        "my_app::Page<T>::render",
    ] {
        assert!(!is_runtime(user, &prefixes), "{user}");
    }
}

#[test]
fn crate_names_match_exactly_and_c_functions_by_continuation() {
    let prefixes = defaults();
    for runtime in [
        "tokio::runtime::park",
        "tokio_util::codec::Framed",
        "<u64>::unchecked_add",
        "<str>::len",
        "pthread_mutex_lock",
        "__GI___clock_gettime",
    ] {
        assert!(is_runtime(runtime, &prefixes), "{runtime}");
    }
    for user in [
        "axum_app::handlers::crunch",
        "tokio_demo::work",
        "my_app::u64::parse",
    ] {
        assert!(!is_runtime(user, &prefixes), "{user}");
    }
}

#[test]
fn a_library_culprit_is_called_from_the_apps_own_frame() {
    let frames: Vec<Frame> = [
        "alloc::raw_vec::RawVecInner::grow_amortized",
        "serde_json::ser::format_escaped_str",
        "serde_json::ser::to_vec",
        "my_app::render::to_bytes",
        "my_app::handler::{{closure}}",
        "<hogwatch::watch::Watched<F> as core::future::future::Future>::poll",
        "other_app::main",
    ]
    .map(|name| Frame {
        name: name.to_string(),
        system: false,
    })
    .to_vec();
    let culprit = culprit(&frames, &defaults()).unwrap();
    assert_eq!(culprit, "serde_json::ser::format_escaped_str");
    assert_eq!(
        called_from(&frames, &culprit, &defaults()).as_deref(),
        Some("my_app::render::to_bytes")
    );
    // The app's own code is called from nothing further.
    assert_eq!(
        called_from(&frames, "my_app::render::to_bytes", &defaults()),
        None
    );
}

#[test]
fn culprit_is_the_first_frame_outside_the_runtime() {
    let names: Vec<String> = [
        "core::hint::spin_loop",
        UNKNOWN,
        "my_app::crunch",
        "my_app::handler::{{closure}}",
        "tokio::runtime::task::harness::poll",
    ]
    .map(String::from)
    .to_vec();
    let mut frames: Vec<Frame> = names
        .iter()
        .map(|name| Frame {
            name: name.clone(),
            system: false,
        })
        .collect();
    assert_eq!(
        culprit(&frames, &defaults()).as_deref(),
        Some("my_app::crunch")
    );
    assert_eq!(culprit(&frames[..2], &defaults()), None);
    let custom = ["my_app", "core", "tokio::"].map(String::from);
    assert_eq!(culprit(&frames, &custom), None);
    let below_the_poll = Frame {
        name: "<hogwatch::watch::Watched<F> as core::future::future::Future>::poll".into(),
        system: false,
    };
    let main = Frame {
        name: "my_app::main".into(),
        system: false,
    };
    assert_eq!(
        culprit(&[frames[0].clone(), below_the_poll, main], &defaults()),
        None,
        "frames below the watched poll are never the culprit"
    );
    frames[2].system = true;
    assert_eq!(
        culprit(&frames, &defaults()).as_deref(),
        Some("my_app::handler::{{closure}}"),
        "a frame in the C library is never the culprit"
    );
    assert_eq!(
        fold(&names[2..]),
        "tokio::runtime::task::harness::poll;my_app::handler::{{closure}};my_app::crunch"
    );
    assert_eq!(fold(&["f<[u8; 4]>".to_string()]), "f<[u8, 4]>");
    // Bounded: the innermost frames are kept.
    let deep: Vec<String> = (0..1_000).map(|i| format!("frame{i}")).collect();
    let folded = fold(&deep);
    assert!(folded.starts_with("[truncated];frame63;"), "{folded}");
    assert!(folded.ends_with(";frame1;frame0"), "{folded}");
    let wide: Vec<String> = (0..40).map(|i| format!("{i}{}", "x".repeat(250))).collect();
    let folded = fold(&wide);
    assert!(folded.len() <= crate::watchdog::stalls::MAX_STACK_BYTES);
    assert!(folded.starts_with("[truncated];"), "{folded}");
    assert!(folded.ends_with(&wide[0]), "{folded}");
    let whole: Vec<String> = [
        "my_app::crunch",
        "<hogwatch::watch::Watched<F> as core::future::future::Future>::poll",
        "main",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(within_poll(&whole), &whole[..1]);
    assert_eq!(within_poll(&whole[2..]), &whole[2..]);
}

#[test]
fn a_task_poll_ends_at_the_task_harness() {
    let frames = |names: &[&str]| -> Vec<Frame> {
        names
            .iter()
            .map(|name| Frame {
                name: name.to_string(),
                system: false,
            })
            .collect()
    };
    // A task stuck in tokio and std only: nothing inside the poll is the user's, and the
    // test function below the runtime (it called `block_on`) must not be named.
    let stuck_in_runtime = frames(&[
        "std::thread::sleep",
        "tokio::sync::mpsc::chan::Rx<T,S>::recv",
        "tokio::runtime::task::core::Core<T,S>::poll::{{closure}}",
        "tokio::loom::std::unsafe_cell::UnsafeCell<T>::with_mut",
        "tokio::runtime::task::core::Core<T,S>::poll",
        "tokio::runtime::task::harness::poll_future",
        "tokio::runtime::task::raw::poll",
        "tokio::runtime::scheduler::current_thread::CoreGuard::block_on",
        "runtime::hooks::the_test",
    ]);
    // Nothing of the user's inside the poll: the std function it called is named.
    assert_eq!(
        culprit(&stuck_in_runtime, &defaults()).as_deref(),
        Some("std::thread::sleep")
    );
    assert_eq!(culprit(&stuck_in_runtime[1..], &defaults()), None);
    // Release builds without debug information: `Core::poll` inlined away, v0 names.
    let user = frames(&[
        "core::hint::spin_loop",
        "runtime::hooks::stuck_in_background",
        "runtime::hooks::the_test::{{closure}}",
        "<tokio::runtime::task::harness::Harness<runtime::Fut, alloc::sync::Arc<tokio::runtime::scheduler::multi_thread::handle::Handle>>>::poll",
        "my_app::main",
    ]);
    assert_eq!(
        culprit(&user, &defaults()).as_deref(),
        Some("runtime::hooks::stuck_in_background")
    );
    let names: Vec<String> = user.iter().map(|frame| frame.name.clone()).collect();
    assert_eq!(within_poll(&names), &names[..3]);
    // Called by user code, above it: not the boundary.
    assert!(!is_poll_boundary(
        "tokio::runtime::task::harness::Harness<T,S>::try_read_output"
    ));
    assert!(!is_poll_boundary(
        "tokio::runtime::task::core::Core<T,S>::poll_ready"
    ));
    assert!(is_poll_boundary(
        "tokio::runtime::task::harness::Harness<T,S>::poll_inner"
    ));
    assert!(is_poll_boundary(
        "<hogwatch::layer::HogFuture<F> as core::future::future::Future>::poll"
    ));
}

/// The wrappers' frames, spelled as a stack names them, end the poll: the list comes from the
/// types, so a wrapper renamed or moved is still found (the literals it replaced were not
/// updated when the layer's body wrapper came, whose frames were then taken for the user's).
#[test]
fn the_poll_wrappers_come_from_their_types() {
    let wrappers = crate::poll_wrappers();
    assert!(
        wrappers.contains(&"hogwatch::watch::Watched"),
        "{wrappers:?}"
    );
    #[cfg(feature = "axum")]
    {
        assert!(
            wrappers.contains(&"hogwatch::layer::HogFuture"),
            "{wrappers:?}"
        );
        assert!(
            wrappers.contains(&"hogwatch::layer::HogBody"),
            "{wrappers:?}"
        );
    }
    for wrapper in wrappers {
        for frame in [
            format!("<{wrapper}<F> as core::future::future::Future>::poll"),
            format!("<{wrapper}<B> as http_body::Body>::poll_frame"),
            format!("{wrapper}<F>::poll_inner"),
        ] {
            assert!(is_poll_boundary(&frame), "{frame}");
        }
    }
    // A user's type whose name merely starts alike is not one of them.
    assert!(!is_poll_boundary(
        "<hogwatch::watch::WatchedByUser as Future>::poll"
    ));
}

/// A short name whose generic arguments hold a function type (`fn(A) -> B`) is still short:
/// the `>` of `->` closes nothing (line-tables-only's `poll<…, fn(…) -> …>` passed for a path).
#[test]
fn generic_arguments_with_function_types_are_left_out_whole() {
    assert_eq!(
        without_generics("poll<axum::HandleErrorFuture, fn(core::convert::Infallible) -> core::convert::Infallible>"),
        "poll"
    );
    assert_eq!(
        without_generics("call_once<fn(core::cmp::Ordering) -> bool, (core::cmp::Ordering)>"),
        "call_once"
    );
    assert_eq!(
        without_generics("<tokio::runtime::task::core::Core<T,S>>::poll"),
        "::poll"
    );
}
