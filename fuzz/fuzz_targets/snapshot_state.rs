//! A snapshot's state file. A jailed VMM owns its snapshot directory, so a VMM a guest took
//! over can write any state file; the next VMM reads it (before its own jail, today): the
//! header, version, checksum and every bound are checked, and nothing panics or allocates
//! what the file claims. Half the inputs are taken as the payload behind a correct header
//! and checksum, so that the decoder and the bounds checks, not only the CRC, are fuzzed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmm::snapshot::{format, Snapshot};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut file = Vec::with_capacity(24 + rest.len());
        file.extend_from_slice(&format::MAGIC);
        file.extend_from_slice(&format::FORMAT_VERSION.to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
        file.extend_from_slice(&(rest.len() as u64).to_le_bytes());
        file.extend_from_slice(rest);
        file
    };
    if let Ok(state) = format::decode::<Snapshot>(&file) {
        let _ = state.validate();
        let again = format::encode(&state).expect("a decoded state encodes");
        assert!(format::decode::<Snapshot>(&again).is_ok());
    }
});
