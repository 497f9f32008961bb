//! Tap devices as both sides use them: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, so every frame
//! carries the virtio-net header the guest uses too. The daemon creates a persistent tap
//! per service and hands the VMM an open fd; `unikernel-vmm --tap NAME` opens one itself.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const IFF_TAP: i16 = 0x0002;
pub const IFF_NO_PI: i16 = 0x1000;
pub const IFF_VNET_HDR: i16 = 0x4000;
/// The flags every tap of ours has.
pub const FLAGS: i16 = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_NAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    Open(io::Error),
    #[error("cannot create or attach to tap {name}: {source}")]
    Attach { name: String, source: io::Error },
    #[error("fd {fd} is not a tap with IFF_VNET_HDR: {reason}")]
    NotATap { fd: RawFd, reason: String },
}

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Opens (creating it if needed) the tap `name` with [`FLAGS`]; `persist` keeps it after
/// the last fd closes (the daemon's taps, deleted only on purpose). The fd is
/// close-on-exec and blocking.
pub fn open(name: &str, persist: bool) -> Result<OwnedFd, Error> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::BadName(name.into()));
    }
    let attach = |source| Error::Attach {
        name: name.into(),
        source,
    };
    // SAFETY: open(2) of a constant, NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Open(io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: FLAGS,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(attach(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer flag by value.
    if persist && unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(attach(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Checks that `fd` is a tap with [`FLAGS`] (what `--net-fd` promises); returns its name.
pub fn check(fd: &impl AsRawFd) -> Result<String, Error> {
    let raw = fd.as_raw_fd();
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF fills in a `struct ifreq`, which `req` is.
    if unsafe { libc::ioctl(raw, TUNGETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(Error::NotATap {
            fd: raw,
            reason: io::Error::last_os_error().to_string(),
        });
    }
    if req.flags & FLAGS != FLAGS {
        return Err(Error::NotATap {
            fd: raw,
            reason: format!("flags {:#x}", req.flags),
        });
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(req.name.len());
    Ok(String::from_utf8_lossy(&req.name[..len]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_non_taps_are_refused_before_any_ioctl_matters() {
        assert!(matches!(open("", false), Err(Error::BadName(_))));
        assert!(matches!(open("a-name-that-is-too-long", false), Err(Error::BadName(_))));
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(check(&file), Err(Error::NotATap { .. })));
    }
}
