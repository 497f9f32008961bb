//! Taps for services: `uk-<name>`, within the kernel's 15-byte limit, persistent (they
//! outlive a daemon restart while their VMM holds them; teardown deletes them), with
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR as `unikernel-vmm` expects.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use contract::tap::{Error, MAX_NAME};

/// The tap name of `service`, `uk-<service>` when that fits the kernel's 15 bytes and
/// holds only letters, digits, `-` and `_`; otherwise `uk.<12 hex digits>` of a hash (with
/// `salt` mixed in). The two forms cannot meet (`-` vs `.` after `uk`), and different
/// services' plain names differ, so only two hashed names can clash: [`pick`] salts again.
pub fn name_for(service: &str, salt: u32) -> String {
    let full = format!("uk-{service}");
    if salt == 0
        && full.len() <= MAX_NAME
        && full
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return full;
    }
    let mut bytes = salt.to_le_bytes().to_vec();
    bytes.extend_from_slice(service.as_bytes());
    format!("uk.{:012x}", contract::fnv1a(&bytes) & 0xffff_ffff_ffff)
}

/// A tap name for `service` that none of `taken` (other services' taps) has.
pub fn pick(service: &str, taken: impl Fn(&str) -> bool) -> String {
    (0..)
        .map(|salt| name_for(service, salt))
        .find(|n| !taken(n))
        .unwrap_or_else(|| name_for(service, 0))
}

/// Creates tap `name` (or attaches to the existing one), persistent, and returns an open
/// fd for it.
pub fn create(name: &str) -> Result<OwnedFd, Error> {
    contract::tap::open(name, true)
}

/// Waits (at most `limit`) until the tap `name`, just attached again, is running: the
/// kernel turns a link's carrier on at once but brings its queueing discipline back
/// asynchronously (linkwatch, ~0.1 ms here, 2 ms at worst); until then what the host sends
/// to it is dropped (2 of 100 datagrams sent right after a reattach were lost in a test
/// here, ARP requests among them: a connection then waits 1 s for the retry). Returns how
/// long it waited, or None if it was not running by then.
pub fn wait_running(name: &str, limit: std::time::Duration) -> io::Result<Option<std::time::Duration>> {
    let probe = LinkProbe::new()?;
    let start = std::time::Instant::now();
    loop {
        if probe.state(name)?.is_some_and(|l| l.running) {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() >= limit {
            return Ok(None);
        }
        std::thread::yield_now();
    }
}

/// Asks the kernel about links by name (SIOCGIFFLAGS): at thousands of taps far cheaper
/// than a netlink link dump, which parses (and allocates) every attribute of every link.
pub struct LinkProbe(OwnedFd);

impl LinkProbe {
    pub fn new() -> io::Result<LinkProbe> {
        // SAFETY: socket(2) with constant arguments; the fd is checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        Ok(LinkProbe(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// One ioctl that reads a link's name from and writes its answer into a struct
    /// ifreq: the 4 bytes after the name, `None` if no link has that name.
    fn ask(&self, name: &str, request: libc::c_ulong) -> io::Result<Option<[u8; 4]>> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Ok(None);
        }
        let mut req = [0u8; 40];
        req[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: SIOCGIFFLAGS and SIOCGIFINDEX read the name from and write their answer
        // into a struct ifreq, which `req` is laid out as (40 bytes on 64-bit Linux).
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request, req.as_mut_ptr()) } < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some([req[16], req[17], req[18], req[19]]))
    }

    /// The index of the link `name` (SIOCGIFINDEX), `None` if there is none.
    pub fn index(&self, name: &str) -> io::Result<Option<u32>> {
        Ok(self.ask(name, libc::SIOCGIFINDEX)?.map(u32::from_ne_bytes))
    }

    /// `None` if no link has that name, else its index and whether it is up.
    pub fn state(&self, name: &str) -> io::Result<Option<Link>> {
        let Some(flags) = self.ask(name, libc::SIOCGIFFLAGS)? else {
            return Ok(None);
        };
        let flags = i16::from_ne_bytes([flags[0], flags[1]]);
        let Some(index) = self.index(name)? else {
            return Ok(None);
        };
        Ok(Some(Link {
            index,
            up: flags & libc::IFF_UP as i16 != 0,
            running: flags & libc::IFF_RUNNING as i16 != 0,
        }))
    }
}

/// What [`LinkProbe::state`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub up: bool,
    /// Up with its carrier on, as the kernel's link watcher last saw it.
    pub running: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_cannot_collide_by_construction() {
        assert_eq!(name_for("web", 0), "uk-web");
        let long = name_for("a-very-long-service-name", 0);
        assert_eq!(long.len(), MAX_NAME, "{long}");
        assert!(long.starts_with("uk."));
        assert_ne!(long, name_for("a-very-long-service-nama", 0));
        // Once collided by construction: a dotted name and the plain name of its digest.
        assert_ne!(name_for("web.1", 0), name_for("web1-6491d4", 0));
        // 20,000 names of every shape: all distinct.
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            for n in [
                format!("s{i}"),
                format!("service-with-a-long-name-{i}"),
                format!("w.{i}"),
            ] {
                assert!(seen.insert(name_for(&n, 0)), "{n}");
            }
        }
    }

    #[test]
    fn a_taken_hashed_name_is_salted_away() {
        let first = name_for("a-very-long-service-name", 0);
        let taken = std::collections::HashSet::from([first.clone()]);
        let picked = pick("a-very-long-service-name", |n| taken.contains(n));
        assert_ne!(picked, first);
        assert_eq!(picked, name_for("a-very-long-service-name", 1));
        assert_eq!(pick("web", |_| false), "uk-web");
    }

    #[test]
    fn the_link_probe_sees_loopback_and_not_a_missing_link() {
        let probe = LinkProbe::new().unwrap();
        let lo = probe.state("lo").unwrap().expect("every namespace has lo");
        assert_eq!(lo.index, 1, "lo is always index 1");
        assert_eq!(probe.state("uk-no-such-tap").unwrap(), None);
        assert_eq!(probe.state("").unwrap(), None);
    }
}
