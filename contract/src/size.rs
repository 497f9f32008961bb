//! Memory sizes as people write them: `16M`, `512K`, `1G`, or plain bytes.
use std::fmt;
use std::str::FromStr;

/// A size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemSize(u64);

impl MemSize {
    pub const MIB: u64 = 1 << 20;

    pub fn from_bytes(bytes: u64) -> Self {
        MemSize(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MemSize {
    /// The largest unit that divides it (`16M`, `3G`), else bytes: parses back to itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
        for (unit, suffix) in UNITS {
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{}", self.0 / unit, suffix);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size {input:?}: sizes look like 16M, 512K or 1G")]
pub struct MemSizeError {
    input: String,
}

impl FromStr for MemSize {
    type Err = MemSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MemSizeError { input: s.to_string() };
        let t = s.trim();
        let (digits, shift) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    _ => return Err(err()),
                };
                (&t[..i], shift)
            }
            _ => (t, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        n.checked_mul(1u64 << shift).map(MemSize).ok_or_else(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!("16M".parse::<MemSize>().unwrap().bytes(), 16 << 20);
        assert_eq!("1g".parse::<MemSize>().unwrap().bytes(), 1 << 30);
        assert_eq!("512K".parse::<MemSize>().unwrap().bytes(), 512 << 10);
        assert_eq!("4096".parse::<MemSize>().unwrap().bytes(), 4096);
        assert_eq!(" 2M ".parse::<MemSize>().unwrap().bytes(), 2 << 20);
        for bad in ["16Q", "M", "-1M", "+1M", "99999999999T", "", "1.5G"] {
            assert!(bad.parse::<MemSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_sizes_that_parse_back() {
        for bytes in [16 << 20, 3 << 30, 1000, 4096, (1 << 40) + (1 << 20)] {
            let s = MemSize::from_bytes(bytes);
            assert_eq!(s.to_string().parse::<MemSize>().unwrap(), s);
        }
        assert_eq!(MemSize::from_bytes(16 << 20).to_string(), "16M");
        assert_eq!(MemSize::from_bytes(3 << 30).to_string(), "3G");
        assert_eq!(MemSize::from_bytes(1000).to_string(), "1000");
    }
}
