//! The snapshot state file: a fixed header, then the state serialized with postcard.
//!
//! ```text
//! 0   8  magic "UKVMSNAP"
//! 8   4  format version (u32 LE)
//! 12  4  CRC-32 of the payload (u32 LE)
//! 16  8  payload length (u64 LE)
//! 24  .. payload
//! ```
//!
//! Everything is checked before the payload is decoded, and decoding is bounded: a file
//! that is not ours, of another format version, truncated, too long or corrupt is refused
//! with one line saying which, before any VM state is touched.
use serde::{de::DeserializeOwned, Serialize};

pub const MAGIC: [u8; 8] = *b"UKVMSNAP";
/// Bumped whenever the payload's layout changes; a VMM reads only its own version.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
/// A state file is a few KiB per vCPU; anything this large is not one of ours.
pub const MAX_STATE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a unikernel-vmm snapshot (bad magic)")]
    Magic,
    #[error("snapshot format version {found}, this VMM reads version {FORMAT_VERSION}: take a new snapshot")]
    Version { found: u32 },
    #[error("snapshot state is truncated ({found} of {expected} bytes)")]
    Truncated { expected: u64, found: u64 },
    #[error("snapshot state is {0} bytes, more than a snapshot can be")]
    TooLarge(u64),
    #[error("snapshot state is corrupt (checksum {found:#010x}, expected {expected:#010x})")]
    Checksum { expected: u32, found: u32 },
    #[error("snapshot state cannot be decoded: {0}")]
    Decode(String),
    #[error("snapshot state cannot be encoded: {0}")]
    Encode(String),
}

pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, Error> {
    let payload = postcard::to_stdvec(state).map_err(|e| Error::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(if MAGIC.starts_with(bytes) {
            Error::Truncated {
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            }
        } else {
            Error::Magic
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated {
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    let version = u32::from_le_bytes(field(bytes, 8));
    if version != FORMAT_VERSION {
        return Err(Error::Version { found: version });
    }
    let crc = u32::from_le_bytes(field(bytes, 12));
    let len = u64::from_le_bytes(field(bytes, 16));
    if len > MAX_STATE_BYTES as u64 {
        return Err(Error::TooLarge(len));
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(Error::Truncated {
            expected: HEADER_LEN as u64 + len,
            found: bytes.len() as u64,
        });
    }
    let found = crc32fast::hash(payload);
    if found != crc {
        return Err(Error::Checksum { expected: crc, found });
    }
    let (state, rest) = postcard::take_from_bytes(payload).map_err(|e| Error::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::Decode(format!("{} bytes after the state", rest.len())));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Probe {
        a: u64,
        b: Vec<u8>,
    }

    fn sample() -> Vec<u8> {
        encode(&Probe { a: 7, b: vec![1, 2, 3] }).unwrap()
    }

    #[test]
    fn round_trips() {
        assert_eq!(decode::<Probe>(&sample()).unwrap(), Probe { a: 7, b: vec![1, 2, 3] });
    }

    #[test]
    fn foreign_old_truncated_long_and_corrupt_files_are_refused() {
        let good = sample();
        assert_eq!(decode::<Probe>(b"\x7fELF\x02\x01\x01\0whatever"), Err(Error::Magic));
        assert!(matches!(decode::<Probe>(&good[..5]), Err(Error::Truncated { .. })));
        assert!(matches!(decode::<Probe>(&good[..20]), Err(Error::Truncated { .. })));
        assert!(matches!(
            decode::<Probe>(&good[..good.len() - 1]),
            Err(Error::Truncated { .. })
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(decode::<Probe>(&longer), Err(Error::Truncated { .. })));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert_eq!(decode::<Probe>(&v2), Err(Error::Version { found: 2 }));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        assert!(matches!(decode::<Probe>(&flipped), Err(Error::Checksum { .. })));
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode::<Probe>(&huge), Err(Error::TooLarge(u64::MAX)));
        // A payload with a valid checksum that is not the expected type.
        let other = encode(&(1u8,)).unwrap();
        assert!(matches!(decode::<Probe>(&other), Err(Error::Decode(_))));
    }
}
