//! Ethernet addresses for guest NICs.
use std::fmt;
use std::str::FromStr;

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address derived from `name` (a service or tap name):
    /// the same name always gets the same address, across restarts and hosts.
    pub fn derived(name: &str) -> MacAddr {
        let h = crate::fnv1a(name.as_bytes()).to_be_bytes();
        MacAddr([0x02, 0x75, h[0], h[1], h[2], h[3]])
    }

    pub fn bytes(self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid MAC address {s:?}: write it like 52:54:00:12:34:56");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!(
                "MAC address {s} is a multicast address: the first byte must be even"
            ));
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_refuses() {
        let m: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err(), "multicast");
        assert!("52-54-00-ab-cd-ef".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:ef:00".parse::<MacAddr>().is_err());
    }

    #[test]
    fn derived_addresses_are_stable_local_unicast_and_distinct() {
        let a = MacAddr::derived("web");
        assert_eq!(a, MacAddr::derived("web"));
        assert_ne!(a, MacAddr::derived("api"));
        assert_eq!(a.0[0] & 0x01, 0, "unicast");
        assert_eq!(a.0[0] & 0x02, 0x02, "locally administered");
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
    }
}
