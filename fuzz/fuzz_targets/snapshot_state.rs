//! A snapshot's state file, as whoever can write the snapshot directory controls it (and
//! a disk can damage it): decoding checks its header, version, checksum and every bound,
//! and refuses what does not hold, without panicking or allocating what it claims.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmm::snapshot::{format, Snapshot};

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = format::decode::<Snapshot>(data) {
        // What decodes encodes again to the same bytes' meaning.
        let again = format::encode(&state).expect("a decoded state encodes");
        assert!(format::decode::<Snapshot>(&again).is_ok());
    }
});
