//! A declaration file, as anyone who can write to /etc/unikernels (or push to the followed
//! git repository) controls it: reading it never panics, every error points inside the
//! file, and the fast reader's documents are the ones the kdl crate reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unikerneld::decl::{fast, guard, parse};

fuzz_target!(|data: &[u8]| {
    // As in the daemon: a panic the parser contains is an error, any other one a crash
    // (libFuzzer's own hook, kept as the one called outside `contained`).
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        unikerneld::panic::abort_on_panic();
        stack_as_deep_as_the_daemons();
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    read(text);
});

fn read(text: &str) {
    // What the daemon refuses before kdl reads it (kdl would take exponential time).
    let guarded = guard::too_deep(text).is_some();
    if let Some(doc) = fast::parse(text).filter(|_| !guarded) {
        let reference = kdl::KdlDocument::parse_v2(text).expect("the fast reader took what kdl refuses");
        assert_eq!(
            fast::shape(&doc),
            fast::shape(&reference),
            "the fast reader read another document"
        );
    }
    let (_specs, errors) = parse::parse_file_here(std::path::Path::new("/etc/unikernels/fuzz.kdl"), text);
    let lines = text.split('\n').count();
    for e in errors {
        assert!(
            e.line >= 1 && e.line <= lines,
            "error at line {} of {lines}: {}",
            e.line,
            e.message
        );
        assert!(
            e.span.offset() + e.span.len() <= text.len(),
            "span past the end: {}",
            e.message
        );
    }
}

/// Readers recurse per level of nesting, and the daemon reads a deep file on a thread
/// with a stack of `PARSE_STACK`. The target runs on libFuzzer's main thread, whose stack
/// grows up to RLIMIT_STACK: below `PARSE_STACK` a deep file would overflow it (a bare
/// SIGSEGV, with no artifact) where the daemon is fine. (A thread per input costs too much
/// under ASan.)
fn stack_as_deep_as_the_daemons() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } == 0;
    let want = unikerneld::decl::reader::PARSE_STACK as libc::rlim_t;
    if !ok || (limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < want) {
        eprintln!(
            "fuzz/kdl needs a stack of {} MiB like the daemon's parser: run it under `ulimit -s {}`",
            want >> 20,
            want >> 10
        );
        std::process::exit(2);
    }
}
