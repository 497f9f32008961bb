//! The host side of a guest NIC: a tap device, opened with IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR so each frame carries the 12-byte virtio-net header the guest uses too.
//! Either opened by name (needs CAP_NET_ADMIN) or handed over as an open fd by whoever
//! created it (the engine), after which the VMM needs no privilege.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `struct virtio_net_hdr_v1`: what a VERSION_1 driver puts before each frame.
pub const VNET_HDR_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tap(#[from] contract::tap::Error),
    #[error("tap setup ({what}) failed: {source}")]
    Setup { what: &'static str, source: io::Error },
}

pub struct Tap {
    fd: OwnedFd,
    name: String,
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
        Self::configure(contract::tap::open(name, false)?, name.to_string())
    }

    /// Takes over an open tap fd (for example inherited from the engine).
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, Error> {
        let name = contract::tap::check(&fd)?;
        Self::configure(fd, name)
    }

    /// Non-blocking (the event loop reads until EAGAIN) and the 12-byte header.
    fn configure(fd: OwnedFd, name: String) -> Result<Tap, Error> {
        let raw = fd.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on an fd we own.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(Error::Setup {
                what: "O_NONBLOCK",
                source: io::Error::last_os_error(),
            });
        }
        let mut size = VNET_HDR_LEN as libc::c_int;
        ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, (&mut size as *mut libc::c_int).cast()).map_err(|source| {
            Error::Setup {
                what: "TUNSETVNETHDRSZ",
                source,
            }
        })?;
        Ok(Tap { fd, name })
    }

    /// Any fd that keeps frame boundaries: a SOCK_DGRAM socket pair, for the device's
    /// tests and its fuzz target (fuzz/fuzz_targets/virtio_net.rs).
    pub fn from_datagram_fd(fd: OwnedFd) -> Tap {
        Tap {
            fd,
            name: "test".into(),
        }
    }

    /// The tap's interface name.
    pub fn name(&self) -> &str {
        &self.name
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
