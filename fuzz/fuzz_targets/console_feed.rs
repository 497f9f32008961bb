//! Console feed frames, as the daemon's hub reads them from a VMM (which a guest may have
//! taken over): any run of datagrams, with any kinds and offsets, becomes lines without a
//! panic, each within the line bound, the ring within its bound.
#![no_main]
use contract::console::FeedFrame;
use libfuzzer_sys::fuzz_target;
use unikerneld::supervise::console::{ConsoleRing, RING_LINES};
use unikerneld::supervise::feed::{FeedLines, NOT_LOGGED};

fuzz_target!(|data: &[u8]| {
    let ring = ConsoleRing::default();
    // The first byte: where an earlier daemon read to (255: it did not say).
    let Some((&first, mut rest)) = data.split_first() else { return };
    let log_from = if first == 255 { NOT_LOGGED } else { u64::from(first) * 16 };
    let mut lines = FeedLines::new("fuzz", ring.clone(), log_from, None);
    // Datagrams: a length byte (times 64, so long lines happen), then that many bytes.
    while let Some((&len, tail)) = rest.split_first() {
        let len = (usize::from(len) * 64).min(tail.len());
        let (datagram, after) = tail.split_at(len);
        if let Some(frame) = FeedFrame::parse(datagram) {
            lines.take(frame);
        }
        rest = after;
    }
    lines.end_line();
    let kept = ring.tail(usize::MAX);
    assert!(kept.len() <= RING_LINES);
    // Lossy UTF-8 can triple a byte; the line bound is in bytes read.
    assert!(kept.iter().all(|l| l.len() <= 3 * 4096));
});
