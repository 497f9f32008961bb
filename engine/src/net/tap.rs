//! Taps for services: `uk-<name>`, within the kernel's 15-byte limit, persistent (they
//! outlive a daemon restart while their VMM holds them; teardown deletes them), with
//! IFF_TAP | IFF_NO_PI | IFF_VNET_HDR as `unikernel-vmm` expects.
use std::os::fd::OwnedFd;

pub use contract::tap::{Error, MAX_NAME};

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
    format!("uk-{clean}-{:06x}", contract::fnv1a(service.as_bytes()) & 0xff_ffff)
}

/// Creates tap `name` (or attaches to the existing one), persistent, and returns an open
/// fd for it.
pub fn create(name: &str) -> Result<OwnedFd, Error> {
    contract::tap::open(name, true)
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
