//! A uid (and the gid of the same number) for each jailed VMM, from a range of its own, as
//! systemd's DynamicUser hands them out: no account exists for it, nothing on the host is
//! owned by it but the VM's snapshot directory, and no two live VMMs share one, so a guest
//! that took over its VMM cannot signal, trace or read another VM's process.
//!
//! Handed out round-robin: a uid freed by a VMM that just ended is the last to come back,
//! so nothing it left behind (a snapshot file) meets its next holder soon.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The default range: 65,536 ids from 0x7B000000, between systemd's container range
/// (up to 0x6FFFFFFF) and its foreign range (0x7FFE0000), both documented in systemd's
/// UIDS-GIDS.md. `unikerneld --vm-uids FIRST:COUNT` moves it.
pub const DEFAULT_FIRST: u32 = 0x7B00_0000;
pub const DEFAULT_COUNT: u32 = 65_536;

/// A range of ids, checked: non-empty, not root, not past u32 (-1 is no id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidRange {
    first: u32,
    count: u32,
}

impl UidRange {
    pub fn new(first: u32, count: u32) -> Result<UidRange, String> {
        if first == 0 || count == 0 {
            return Err("the VM uid range must be non-empty and leave out 0 (root)".into());
        }
        if first.checked_add(count).is_none_or(|end| end == u32::MAX) {
            return Err(format!("the VM uid range {first}:{count} runs past the last uid"));
        }
        Ok(UidRange { first, count })
    }

    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.first && uid - self.first < self.count
    }
}

impl Default for UidRange {
    fn default() -> Self {
        UidRange {
            first: DEFAULT_FIRST,
            count: DEFAULT_COUNT,
        }
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.first, self.count)
    }
}

impl std::str::FromStr for UidRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (first, count) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: give FIRST:COUNT, like {DEFAULT_FIRST}:{DEFAULT_COUNT}"))?;
        let number = |t: &str| t.trim().parse::<u32>().map_err(|e| format!("{t:?} in {s:?}: {e}"));
        UidRange::new(number(first)?, number(count)?)
    }
}

struct State {
    used: HashSet<u32>,
    /// Offset of the next id to try.
    next: u32,
}

/// The ids in use; shared by the launcher and every lease.
pub struct UidPool {
    range: UidRange,
    state: Mutex<State>,
}

/// One VMM's id, given back when dropped (when its VM is gone).
#[derive(Debug)]
pub struct UidLease {
    pool: Arc<UidPool>,
    pub uid: u32,
}

impl std::fmt::Debug for UidPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UidPool").field("range", &self.range).finish()
    }
}

impl UidPool {
    pub fn new(range: UidRange) -> Arc<UidPool> {
        Arc::new(UidPool {
            range,
            state: Mutex::new(State {
                used: HashSet::new(),
                next: 0,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free id, or an error when every one is taken (one VM per id: the range is the
    /// limit on jailed VMs).
    pub fn lease(self: &Arc<Self>) -> Result<UidLease, String> {
        let mut state = self.state();
        for _ in 0..self.range.count {
            let uid = self.range.first + state.next;
            state.next = (state.next + 1) % self.range.count;
            if state.used.insert(uid) {
                return Ok(UidLease {
                    pool: self.clone(),
                    uid,
                });
            }
        }
        Err(format!(
            "all {} VM uids from {} are in use (unikerneld --vm-uids sets the range)",
            self.range.count, self.range.first
        ))
    }

    /// Takes `uid` for a VMM found running (adopted), if it is one of ours.
    pub fn claim(self: &Arc<Self>, uid: u32) -> Option<UidLease> {
        if !self.range.contains(uid) {
            return None;
        }
        self.state().used.insert(uid);
        Some(UidLease {
            pool: self.clone(),
            uid,
        })
    }

    pub fn in_use(&self) -> usize {
        self.state().used.len()
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.pool.state().used.remove(&self.uid);
    }
}

/// The real uid of a running process, from /proc/PID/status.
pub fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_round_robin_and_given_back() {
        let pool = UidPool::new(UidRange::new(1000, 3).unwrap());
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_eq!((a.uid, b.uid), (1000, 1001));
        drop(a);
        // 1000 is free again, but 1002 comes first: a freed id is the last to return.
        let c = pool.lease().unwrap();
        assert_eq!(c.uid, 1002);
        let d = pool.lease().unwrap();
        assert_eq!(d.uid, 1000);
        let full = pool.lease().unwrap_err();
        assert!(full.contains("all 3 VM uids from 1000"), "{full}");
        drop(b);
        assert_eq!(pool.lease().unwrap().uid, 1001);
        assert_eq!(pool.in_use(), 2, "the last lease was dropped at once");
    }

    #[test]
    fn an_adopted_vmm_keeps_its_id_and_others_skip_it() {
        let pool = UidPool::new(UidRange::new(5000, 4).unwrap());
        let adopted = pool.claim(5000).unwrap();
        assert!(
            pool.claim(42).is_none(),
            "not ours: a VMM from another range or no jail"
        );
        let next = pool.lease().unwrap();
        assert_eq!(next.uid, 5001);
        assert_eq!(adopted.uid, 5000);
    }

    #[test]
    fn ranges_are_checked() {
        assert_eq!("100:10".parse::<UidRange>().unwrap(), UidRange::new(100, 10).unwrap());
        assert!("0:10".parse::<UidRange>().is_err(), "root");
        assert!("100:0".parse::<UidRange>().is_err(), "empty");
        assert!("4294967290:100".parse::<UidRange>().is_err(), "past the end");
        assert!("100".parse::<UidRange>().unwrap_err().contains("FIRST:COUNT"));
        assert!(UidRange::default().contains(DEFAULT_FIRST + DEFAULT_COUNT - 1));
        assert!(!UidRange::default().contains(DEFAULT_FIRST + DEFAULT_COUNT));
    }

    #[test]
    fn the_uid_of_this_process_is_read_from_proc() {
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert_eq!(uid_of(std::process::id()), Some(me));
    }
}
