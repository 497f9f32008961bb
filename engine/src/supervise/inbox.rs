//! Many datagrams per syscall: recvmmsg(2) into fixed slots, each with the abstract
//! address of its sender. The console hub gets a heartbeat from every VMM every 16 s
//! (~600 a second at 10,000 VMs); one recvfrom each was most of an idle daemon's CPU.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Where `sun_path` starts in a `sockaddr_un` (after the 2-byte family).
const PATH_AT: usize = std::mem::size_of::<libc::sa_family_t>();

pub struct Inbox {
    /// Bytes each slot holds: the largest datagram that is read whole.
    size: usize,
    /// `slots * size` bytes. Zeroed lazily by the kernel (a large calloc is fresh pages):
    /// a slot costs memory only as far as its datagrams reached.
    bytes: Vec<u8>,
    addrs: Vec<libc::sockaddr_un>,
    /// Per slot of the last read: bytes received, address length, and whether the
    /// datagram was larger than the slot (cut: its bytes are not handed out).
    got: Vec<(usize, usize, bool)>,
}

impl Inbox {
    pub fn new(slots: usize, size: usize) -> Inbox {
        // SAFETY: all-zero bytes are a valid (empty) sockaddr_un.
        let empty: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        Inbox {
            size,
            bytes: vec![0; slots * size],
            addrs: vec![empty; slots],
            got: Vec::with_capacity(slots),
        }
    }

    pub fn slots(&self) -> usize {
        self.addrs.len()
    }

    /// Reads the datagrams queued on `socket` (non-blocking), at most one per slot: how
    /// many. 0 when none is queued.
    pub fn receive(&mut self, socket: BorrowedFd<'_>) -> io::Result<usize> {
        let slots = self.slots();
        let mut iovs: Vec<libc::iovec> = self
            .bytes
            .chunks_exact_mut(self.size)
            .map(|slot| libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .map(|(iov, addr)| {
                // SAFETY: all-zero bytes are a valid msghdr (no control data, no flags).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_un).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: every header points at one iovec and one address of this inbox, which
        // outlive the call; the kernel writes at most `iov_len` bytes into each slot and
        // at most `msg_namelen` bytes of address.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.got.clear();
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        self.got.extend(headers[..n].iter().map(|h| {
            (
                (h.msg_len as usize).min(self.size),
                h.msg_hdr.msg_namelen as usize,
                h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            )
        }));
        Ok(n)
    }

    /// The datagrams of the last [`Inbox::receive`], in order: each sender's abstract
    /// name (`None` for a sender without one) and its bytes. Cut datagrams are left out.
    pub fn datagrams(&self) -> impl Iterator<Item = (Option<&[u8]>, &[u8])> {
        self.got
            .iter()
            .enumerate()
            .filter(|(_, (_, _, cut))| !cut)
            .map(|(i, &(len, name_len, _))| {
                let path = &self.addrs[i].sun_path;
                // An abstract address: a NUL, then the name, to the length the kernel gave.
                let name = match name_len.checked_sub(PATH_AT + 1) {
                    Some(n) if n < path.len() && path[0] == 0 => {
                        // SAFETY: `c_char` and `u8` have the same size and alignment.
                        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(path.as_ptr().cast(), path.len()) };
                        Some(&bytes[1..1 + n])
                    }
                    _ => None,
                };
                (name, &self.bytes[i * self.size..i * self.size + len])
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    fn abstract_name(s: &UnixDatagram) -> Vec<u8> {
        use std::os::linux::net::SocketAddrExt;
        s.local_addr().unwrap().as_abstract_name().unwrap().to_vec()
    }

    #[test]
    fn datagrams_are_read_in_batches_with_their_senders_and_cut_ones_are_left_out() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;
        let dir = std::env::temp_dir().join(format!("uk-inbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hub.sock");
        let hub = UnixDatagram::bind(&path).unwrap();
        let senders: Vec<UnixDatagram> = (0..3)
            .map(|i| {
                let name = format!("uk-inbox-test-{}-{i}", std::process::id());
                let s = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name).unwrap()).unwrap();
                s.connect(&path).unwrap();
                s
            })
            .collect();
        let mut inbox = Inbox::new(4, 16);
        assert_eq!(inbox.receive(hub.as_fd()).unwrap(), 0, "nothing queued");
        for round in 0..2u8 {
            for (i, s) in senders.iter().enumerate() {
                s.send(&[round, i as u8]).unwrap();
            }
        }
        senders[0].send(&[9; 40]).unwrap(); // larger than a slot
        let a = inbox.receive(hub.as_fd()).unwrap();
        assert_eq!(a, 4, "one per slot");
        let first: Vec<(Vec<u8>, Vec<u8>)> = inbox
            .datagrams()
            .map(|(n, b)| (n.unwrap().to_vec(), b.to_vec()))
            .collect();
        assert_eq!(first[0], (abstract_name(&senders[0]), vec![0, 0]));
        assert_eq!(first[2], (abstract_name(&senders[2]), vec![0, 2]));
        assert_eq!(first[3], (abstract_name(&senders[0]), vec![1, 0]));
        assert_eq!(inbox.receive(hub.as_fd()).unwrap(), 3);
        let rest: Vec<Vec<u8>> = inbox.datagrams().map(|(_, b)| b.to_vec()).collect();
        assert_eq!(rest, [vec![1, 1], vec![1, 2]], "the cut one is not handed out");
        assert_eq!(inbox.receive(hub.as_fd()).unwrap(), 0);
        // A sender bound to a path has no abstract name.
        let named = UnixDatagram::bind(dir.join("named.sock")).unwrap();
        named.connect(&path).unwrap();
        named.send(b"x").unwrap();
        assert_eq!(inbox.receive(hub.as_fd()).unwrap(), 1);
        let (name, bytes) = inbox.datagrams().next().unwrap();
        assert_eq!((name, bytes), (None, &b"x"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
