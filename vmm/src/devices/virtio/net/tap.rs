//! The host side of a guest NIC: a tap device, opened with IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR so each frame carries the 12-byte virtio-net header the guest uses too.
//! Either opened by name (needs CAP_NET_ADMIN) or handed over as an open fd by whoever
//! created it (the engine), after which the VMM needs no privilege.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `struct virtio_net_hdr_v1`: what a VERSION_1 driver puts before each frame.
pub const VNET_HDR_LEN: usize = 12;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error("cannot attach to tap {name}: {source}")]
    SetIff { name: String, source: io::Error },
    #[error("fd {fd} is not a tap with IFF_VNET_HDR: {reason}")]
    NotATap { fd: RawFd, reason: String },
    #[error("tap setup ({what}) failed: {source}")]
    Setup { what: &'static str, source: io::Error },
}

pub struct Tap {
    fd: OwnedFd,
}

fn ioctl(fd: RawFd, request: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: the callers pass a request and a pointer to the struct that request expects.
    match unsafe { libc::ioctl(fd, request, arg) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

impl Tap {
    /// Opens (or creates) the tap `name`.
    pub fn open(name: &str) -> Result<Tap, Error> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(Error::BadName(name.into()));
        }
        // SAFETY: a plain open(2) of a constant path.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::OpenTun(io::Error::last_os_error()));
        }
        // SAFETY: we just opened it and own it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        ioctl(fd.as_raw_fd(), TUNSETIFF, (&mut req as *mut IfReq).cast()).map_err(|source| Error::SetIff {
            name: name.into(),
            source,
        })?;
        Self::configure(fd)
    }

    /// Takes over an open tap fd (for example inherited from the engine).
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, Error> {
        let raw = fd.as_raw_fd();
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        ioctl(raw, TUNGETIFF, (&mut req as *mut IfReq).cast()).map_err(|e| Error::NotATap {
            fd: raw,
            reason: e.to_string(),
        })?;
        if req.flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) != IFF_TAP | IFF_NO_PI | IFF_VNET_HDR {
            return Err(Error::NotATap {
                fd: raw,
                reason: format!("flags {:#x}", req.flags),
            });
        }
        // SAFETY: F_GETFL/F_SETFL on an fd we own.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(Error::Setup {
                what: "O_NONBLOCK",
                source: io::Error::last_os_error(),
            });
        }
        Self::configure(fd)
    }

    fn configure(fd: OwnedFd) -> Result<Tap, Error> {
        let mut size = VNET_HDR_LEN as libc::c_int;
        ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, (&mut size as *mut libc::c_int).cast()).map_err(|source| {
            Error::Setup {
                what: "TUNSETVNETHDRSZ",
                source,
            }
        })?;
        Ok(Tap { fd })
    }

    /// Any fd that keeps frame boundaries (a SOCK_DGRAM socket pair in tests).
    #[cfg(test)]
    pub fn from_datagram_fd(fd: OwnedFd) -> Tap {
        Tap { fd }
    }

    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
