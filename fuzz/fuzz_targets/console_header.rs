//! The console replay header, as the daemon reads it from a VMM (which a guest may have
//! taken over): parsing never panics, and the bytes a reconnecting client skips are never
//! more than the replay holds, whatever the header and the client's count say.
#![no_main]
use contract::console::{parse_replay_header, replay_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (line, seen) = match data.len() {
        0..=8 => (data, 0),
        n => (&data[..n - 8], u64::from_le_bytes(data[n - 8..].try_into().expect("8 bytes"))),
    };
    if let Some(replay) = parse_replay_header(line) {
        assert!(replay.already_seen(seen) <= replay.len);
        if let Some(total) = replay.total {
            assert!(total >= replay.len as u64);
            assert_eq!(parse_replay_header(replay_header(replay.len, total).as_bytes()), Some(replay));
        }
    }
});
