//! Taps for services: `uk-<name>`, within the kernel's 15-byte limit, persistent (they
//! outlive a daemon restart while their VMM holds them; teardown deletes them), with
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR as `unikernel-vmm` expects.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::mac::fnv1a;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_NAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/net/tun: {0}")]
    Open(io::Error),
    #[error("cannot create tap {name}: {source}")]
    Create { name: String, source: io::Error },
}

/// `uk-<service>`; names too long get a hash suffix so they stay unique.
pub fn name_for(service: &str) -> String {
    let full = format!("uk-{service}");
    if full.len() <= MAX_NAME
        && full
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return full;
    }
    let clean: String = service.chars().filter(|c| c.is_ascii_alphanumeric()).take(5).collect();
    format!("uk-{clean}-{:06x}", fnv1a(service.as_bytes()) & 0xff_ffff)
}

/// Creates tap `name` (or attaches to the existing one) and returns an open fd for it.
pub fn create(name: &str) -> Result<OwnedFd, Error> {
    let err = |source| Error::Create {
        name: name.into(),
        source,
    };
    // SAFETY: open(2) of a constant path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Open(io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; 40];
    req[..name.len().min(MAX_NAME)].copy_from_slice(&name.as_bytes()[..name.len().min(MAX_NAME)]);
    req[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
    // SAFETY: TUNSETIFF takes a struct ifreq, which `req` is laid out as.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an integer flag.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_stay_distinct() {
        assert_eq!(name_for("web"), "uk-web");
        let long = name_for("a-very-long-service-name");
        assert!(long.len() <= MAX_NAME, "{long}");
        assert_ne!(long, name_for("a-very-long-service-nama"));
        assert!(name_for("we b/x").len() <= MAX_NAME);
        assert!(name_for("we b/x")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
