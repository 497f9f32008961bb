//! MAC addresses that stay the same for a service across restarts.

/// FNV-1a: small, stable across Rust versions (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A locally administered, unicast MAC derived from the service name.
pub fn for_service(service: &str) -> [u8; 6] {
    let h = fnv1a(service.as_bytes()).to_be_bytes();
    [0x02, 0x75, h[0], h[1], h[2], h[3]]
}

pub fn format(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_local_unicast_and_distinct() {
        let a = for_service("web");
        assert_eq!(a, for_service("web"));
        assert_ne!(a, for_service("api"));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        assert_eq!(format(&[0x02, 0x75, 0, 1, 0xab, 0xff]), "02:75:00:01:ab:ff");
    }
}
