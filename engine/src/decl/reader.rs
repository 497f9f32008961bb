//! Where the kdl reader runs. It recurses once per level of nesting, and a file's nesting is
//! at most its number of `{` ([`super::parse::MAX_BLOCKS`] at most: ~5 KiB of stack per
//! level in release builds, up to ~30 KiB in debug builds). A file with few blocks goes to
//! one long-lived thread, so that a reload starts no thread (starting one with a deep
//! stack cost 0.3-1 ms of every reload); a file with more gets a thread of its own whose
//! stack is deep enough for the most nesting a file may have: reserved, not touched, until
//! used, and gone with the file's reading. The fast reader ([`super::fast`]) nests at most
//! 16 levels and needs neither.
use std::sync::mpsc::{sync_channel, Sender};
use std::sync::Mutex;

/// Stack of a thread that reads one file of any nesting.
pub const PARSE_STACK: usize = 512 << 20;
/// Most `{` in a file read on the shared thread: 256 levels take at most ~8 MiB of stack
/// in a debug build; [`SHARED_STACK`] leaves room for sanitizers' larger frames.
pub const SHARED_BLOCKS: usize = 256;
const SHARED_STACK: usize = 64 << 20;

type Job = Box<dyn FnOnce() + Send>;

/// The shared thread's queue; `None` until first needed, or after the thread died.
static SHARED: Mutex<Option<Sender<Job>>> = Mutex::new(None);

/// Runs `read` (a kdl reading of a file with `blocks` `{`) on a thread with the stack it
/// may need, and waits for it. An error says the reading could not be done (no thread, or
/// it panicked); the file then counts as not read.
pub fn run<T: Send + 'static>(blocks: usize, read: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    if blocks > SHARED_BLOCKS {
        let thread = std::thread::Builder::new()
            .name("declarations".into())
            .stack_size(PARSE_STACK)
            .spawn(read)
            .map_err(|e| format!("cannot start the declaration parser: {e}"))?;
        return thread.join().map_err(|_| "the declaration parser failed".to_string());
    }
    let (tx, rx) = sync_channel(1);
    submit(Box::new(move || {
        // The caller may have stopped waiting only by panicking itself: nothing to tell.
        let _ = tx.send(read());
    }))?;
    // A panic in `read` drops `tx` unsent.
    rx.recv().map_err(|_| "the declaration parser failed".to_string())
}

fn submit(job: Job) -> Result<(), String> {
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    let job = match shared.as_ref() {
        Some(queue) => match queue.send(job) {
            Ok(()) => return Ok(()),
            // The thread is gone (it could not be kept): start another.
            Err(returned) => returned.0,
        },
        None => job,
    };
    let (queue, jobs) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("declarations".into())
        .stack_size(SHARED_STACK)
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                // A panic (where no hook aborts the process: tests) fails that reading
                // alone: its answer is dropped unsent, and the thread serves the next.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })
        .map_err(|e| format!("cannot start the declaration parser: {e}"))?;
    queue
        .send(job)
        .map_err(|_| "the declaration parser failed".to_string())?;
    *shared = Some(queue);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        "n {\n".repeat(levels) + &"}\n".repeat(levels)
    }

    fn read(text: String) -> usize {
        let doc = kdl::KdlDocument::parse_v2(&text).expect("valid KDL");
        let mut depth = 0;
        let mut nodes = doc.nodes();
        while let Some(n) = nodes.first() {
            depth += 1;
            nodes = n.children().map(|c| c.nodes()).unwrap_or(&[]);
        }
        depth
    }

    #[test]
    fn the_deepest_file_the_shared_thread_takes_reads_there() {
        // Overflowing the shared thread's stack would abort this test binary.
        let text = nested(SHARED_BLOCKS);
        assert_eq!(run(SHARED_BLOCKS, move || read(text)), Ok(SHARED_BLOCKS));
        // And the thread is still there for the next one.
        assert_eq!(run(1, || read(nested(1))), Ok(1));
    }

    #[test]
    fn deeper_files_read_on_a_thread_of_their_own() {
        let text = nested(3000);
        assert_eq!(run(3000, move || read(text)), Ok(3000));
    }

    #[test]
    fn a_reading_that_panics_is_an_error_and_the_next_one_works() {
        let failed = run(1, || -> usize { panic!("a bug in a reader") });
        assert_eq!(failed, Err("the declaration parser failed".to_string()));
        assert_eq!(run(1, || read(nested(2))), Ok(2));
    }
}
