//! What one VM is made of, as given on the command line, already validated.
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A memory size in bytes, parsed from `16M`, `1G`, `512K` or plain bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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
        let n: u64 = digits.parse().map_err(|_| err())?;
        n.checked_mul(1u64 << shift).map(MemSize).ok_or_else(err)
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleTarget {
    Stdout,
    File(PathBuf),
    /// A unix socket the VMM listens on (`unix:PATH`): replay of recent output, then live.
    Socket(PathBuf),
    /// Discarded.
    Off,
}

impl FromStr for ConsoleTarget {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => ConsoleTarget::Stdout,
            "off" => ConsoleTarget::Off,
            s if s.starts_with("unix:") => ConsoleTarget::Socket(PathBuf::from(&s[5..])),
            path => ConsoleTarget::File(PathBuf::from(path)),
        })
    }
}

/// Where a guest NIC's frames go on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// An open tap fd inherited from the parent (how the engine hands one over).
    Fd(i32),
    /// A tap opened (or created) by name; needs CAP_NET_ADMIN.
    Tap(String),
}

/// One virtio-net device.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub mac: crate::devices::virtio::net::MacAddr,
}

/// Everything needed to build and run one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory: MemSize,
    pub vcpus: u8,
    pub console: ConsoleTarget,
    pub net: Option<NetConfig>,
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
        assert!("16Q".parse::<MemSize>().is_err());
        assert!("M".parse::<MemSize>().is_err());
        assert!("-1M".parse::<MemSize>().is_err());
        assert!("99999999999T".parse::<MemSize>().is_err());
    }

    #[test]
    fn displays_sizes() {
        assert_eq!(MemSize::from_bytes(16 << 20).to_string(), "16M");
        assert_eq!(MemSize::from_bytes(3 << 30).to_string(), "3G");
        assert_eq!(MemSize::from_bytes(1000).to_string(), "1000");
    }
}
