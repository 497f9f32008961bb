//! Guest addresses from a pool (default 10.200.0.0/16, gateway .1). A service's address
//! follows from a hash of its name, probing past taken ones, so the same set of services
//! gets the same addresses after a restart. Explicitly declared addresses are honoured and
//! never handed to another service.
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid address pool {0:?}: write it like 10.200.0.0/16 (prefix 8 to 29)")]
    BadPool(String),
    #[error("address {address} of {service} is outside the pool {pool}")]
    OutsidePool {
        service: String,
        address: Ipv4Addr,
        pool: String,
    },
    #[error("address {address} of {service} is the pool's network, gateway or broadcast address")]
    Reserved { service: String, address: Ipv4Addr },
    #[error("address {address} is declared by both {first} and {second}")]
    Collision {
        address: Ipv4Addr,
        first: String,
        second: String,
    },
    #[error("address pool {0} is exhausted")]
    Exhausted(String),
}

#[derive(Clone, Debug)]
pub struct AddressPool {
    network: u32,
    prefix: u8,
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl FromStr for AddressPool {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadPool(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(AddressPool {
            network: u32::from(addr) & mask,
            prefix,
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
        })
    }
}

impl Default for AddressPool {
    #[allow(clippy::expect_used, reason = "a constant that parses (tested)")]
    fn default() -> Self {
        "10.200.0.0/16".parse().expect("a valid default pool")
    }
}

impl AddressPool {
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    fn describe(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }

    fn usable(&self, a: u32) -> bool {
        let off = a.wrapping_sub(self.network);
        off >= 2 && off < self.size() - 1
    }

    /// Records the explicitly declared `address` of `service`.
    pub fn reserve(&mut self, service: &str, address: Ipv4Addr) -> Result<(), Error> {
        let a = u32::from(address);
        if a.wrapping_sub(self.network) >= self.size() {
            return Err(Error::OutsidePool {
                service: service.into(),
                address,
                pool: self.describe(),
            });
        }
        if !self.usable(a) {
            return Err(Error::Reserved {
                service: service.into(),
                address,
            });
        }
        match self.by_addr.get(&address) {
            Some(owner) if owner != service => Err(Error::Collision {
                address,
                first: owner.clone(),
                second: service.into(),
            }),
            _ => {
                self.release(service);
                self.by_name.insert(service.into(), address);
                self.by_addr.insert(address, service.into());
                Ok(())
            }
        }
    }

    /// The address of `service`: its explicit one, the one it already has, or a new one.
    pub fn assign(&mut self, service: &str, explicit: Option<Ipv4Addr>) -> Result<Ipv4Addr, Error> {
        if let Some(address) = explicit {
            self.reserve(service, address)?;
            return Ok(address);
        }
        if let Some(a) = self.by_name.get(service) {
            return Ok(*a);
        }
        let usable = self.size() - 3;
        let start = (contract::fnv1a(service.as_bytes()) % u64::from(usable)) as u32;
        for i in 0..usable {
            let a = Ipv4Addr::from(self.network + 2 + (start + i) % usable);
            if !self.by_addr.contains_key(&a) {
                self.by_name.insert(service.into(), a);
                self.by_addr.insert(a, service.into());
                return Ok(a);
            }
        }
        Err(Error::Exhausted(self.describe()))
    }

    pub fn release(&mut self, service: &str) {
        if let Some(a) = self.by_name.remove(service) {
            self.by_addr.remove(&a);
        }
    }

    pub fn address_of(&self, service: &str) -> Option<Ipv4Addr> {
        self.by_name.get(service).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stable_per_name_and_unique() {
        let mut a = AddressPool::default();
        let mut b = AddressPool::default();
        let web = a.assign("web", None).unwrap();
        assert_eq!(
            web,
            b.assign("web", None).unwrap(),
            "same name, same address, in a fresh pool"
        );
        assert_eq!(web, a.assign("web", None).unwrap());
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            let addr = a.assign(&format!("svc{i}"), None).unwrap();
            assert!(seen.insert(addr), "{addr} handed out twice");
            assert_ne!(addr, a.gateway());
        }
    }

    #[test]
    fn explicit_addresses_are_honoured_and_collisions_name_both() {
        let mut p: AddressPool = "10.0.0.0/24".parse().unwrap();
        p.assign("api", Some(Ipv4Addr::new(10, 0, 0, 7))).unwrap();
        let err = p.assign("db", Some(Ipv4Addr::new(10, 0, 0, 7))).unwrap_err();
        assert_eq!(err.to_string(), "address 10.0.0.7 is declared by both api and db");
        assert!(matches!(
            p.assign("x", Some(Ipv4Addr::new(10, 0, 1, 7))),
            Err(Error::OutsidePool { .. })
        ));
        assert!(matches!(
            p.assign("x", Some(Ipv4Addr::new(10, 0, 0, 1))),
            Err(Error::Reserved { .. })
        ));
        assert!(matches!(
            p.assign("x", Some(Ipv4Addr::new(10, 0, 0, 255))),
            Err(Error::Reserved { .. })
        ));
    }

    #[test]
    fn a_small_pool_fills_up_and_releases() {
        let mut p: AddressPool = "10.0.0.0/29".parse().unwrap(); // 8 addresses, 5 usable
        for i in 0..5 {
            p.assign(&format!("s{i}"), None).unwrap();
        }
        assert!(matches!(p.assign("s5", None), Err(Error::Exhausted(_))));
        p.release("s2");
        p.assign("s5", None).unwrap();
        assert!("10.0.0.0/31".parse::<AddressPool>().is_err());
        assert!("10.0.0.0".parse::<AddressPool>().is_err());
    }
}
