//! Host networking for unikernels: a tap per service, wired to the host either through a
//! bridge (`ukbr0`, gateway address on the bridge) or routed (the gateway address once on
//! the loopback link, a /32 route per guest through its tap, which scales past a bridge's
//! 1024 ports), addresses from a pool
//! that are stable per service name, and the sysctls this needs. All through netlink
//! (rtnetlink) and /proc/sys; the VMM only ever receives an open tap fd.
pub mod netlink;
pub mod pool;
pub mod sysctl;
pub mod tap;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// Longest a wake waits for its reopened tap to carry frames (see [`tap::wait_running`]).
const REATTACH_LIMIT: Duration = Duration::from_millis(5);

pub use contract::mac::MacAddr;
pub use pool::AddressPool;

use crate::controller::host::{BoxFuture, Drift, HostNet};
use crate::proxy::Gate;
use crate::steps::Steps;
use std::io;
use tokio::task::JoinHandle;

/// How taps reach the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every tap is a port of one bridge holding the gateway address (at most 1024 ports).
    Bridged { bridge: String },
    /// Every tap is its own point-to-point link: a /32 route to the guest through it, with
    /// the gateway as the host's source. The gateway address is on the loopback link, once:
    /// the kernel answers a guest's ARP for any local address on the tap it came in on.
    /// (On every tap it cost each new one a walk over every other tap's local route: 8 ms
    /// at 5,000 taps.) Proxy ARP on the tap answers for other guests. No port limit.
    Routed,
}

/// A Linux bridge holds at most this many ports (BR_MAX_PORTS).
pub const BRIDGE_MAX_PORTS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] netlink::Error),
    #[error(transparent)]
    Tap(#[from] tap::Error),
    #[error(transparent)]
    Pool(#[from] pool::Error),
    #[error(
        "bridge {bridge} already has {max} ports, the most a Linux bridge takes: use routed networking for more VMs"
    )]
    BridgeFull { bridge: String, max: usize },
    #[error("cannot look at the host's links: {0}")]
    Probe(std::io::Error),
    #[error("{0} has no tap to reopen (deleted behind the daemon's back?)")]
    NotAttached(String),
}

/// The host side's MAC of a service's tap (routed mode): stable, and never the guest's.
fn host_mac(service: &str) -> MacAddr {
    MacAddr::derived(&format!("host side of {service}"))
}

/// What a VM needs to be on the network.
#[derive(Debug)]
pub struct Attachment {
    pub tap_name: String,
    /// Open tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), for `unikernel-vmm --net-fd`.
    pub tap_fd: OwnedFd,
    pub mac: MacAddr,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// Where setting it up spent its time; `None` for a kept tap opened again.
    pub steps: Option<Steps>,
}

impl Attachment {
    /// The guest's side of it, for its command line.
    pub fn guest_net(&self) -> crate::decl::spec::GuestNet {
        crate::decl::spec::GuestNet {
            address: self.address,
            prefix: self.prefix,
            gateway: self.gateway,
            mac: self.mac,
        }
    }
}

/// The host side of every VM's network.
pub struct HostNetwork {
    nl: netlink::Netlink,
    mode: Mode,
    pool: AddressPool,
    /// Service -> its tap, for every tap this daemon set up or adopted: the only taps it
    /// ever deletes.
    attached: HashMap<String, String>,
    /// The tap names in `attached`.
    taps: std::collections::HashSet<String>,
    /// Taps being deleted in the background: their names are not handed out meanwhile.
    deleting: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// A new tap's index in one ioctl, not a netlink round trip.
    probe: tap::LinkProbe,
}

impl HostNetwork {
    /// Connects to netlink in the caller's network namespace; in bridged mode creates the
    /// bridge (idempotent) and gives it the gateway address.
    pub async fn new(mode: Mode, pool: AddressPool) -> Result<Self, Error> {
        let nl = netlink::Netlink::connect()?;
        match &mode {
            Mode::Bridged { bridge } => {
                let index = nl.ensure_bridge(bridge).await?;
                nl.ensure_address(index, pool.gateway(), pool.prefix()).await?;
                nl.set_up(index).await?;
            }
            Mode::Routed => {
                // Up: a new network namespace's loopback is down, and so its local routes.
                let lo = nl.link_index("lo").await?;
                nl.ensure_address(lo, pool.gateway(), 32).await?;
                nl.set_up(lo).await?;
            }
        }
        Ok(HostNetwork {
            nl,
            mode,
            pool,
            attached: HashMap::new(),
            taps: std::collections::HashSet::new(),
            deleting: Default::default(),
            probe: tap::LinkProbe::new().map_err(Error::Probe)?,
        })
    }

    /// Creates (or takes over) the tap of `service`, gives it an address and wires it.
    pub async fn attach(&mut self, service: &str, explicit: Option<Ipv4Addr>) -> Result<Attachment, Error> {
        let address = self.pool.assign(service, explicit)?;
        // A restart keeps the tap it had; a new service gets a name no other one holds.
        let tap_name = match self.attached.get(service) {
            Some(t) => t.clone(),
            None => {
                let deleting = self.deleting.lock().unwrap_or_else(|e| e.into_inner());
                tap::pick(service, |n| self.taps.contains(n) || deleting.contains(n))
            }
        };
        let mut steps = Steps::new();
        let tap_fd = tap::create(&tap_name)?;
        steps.done("tap");
        let index = self
            .probe
            .index(&tap_name)
            .map_err(Error::Probe)?
            .ok_or_else(|| netlink::Error::NoSuchLink(tap_name.clone()))?;
        steps.done("index");
        let mac = MacAddr::derived(service);
        match &self.mode {
            Mode::Bridged { bridge } => {
                let bridge_index = self.nl.link_index(bridge).await?;
                let ports = self.attached.len();
                if ports >= BRIDGE_MAX_PORTS {
                    return Err(Error::BridgeFull {
                        bridge: bridge.clone(),
                        max: BRIDGE_MAX_PORTS,
                    });
                }
                self.nl.set_master(index, bridge_index).await?;
                steps.done("master");
                self.nl.set_up(index).await?;
                steps.done("up");
                self.nl.replace_neighbour(bridge_index, address, mac.bytes()).await?;
                steps.done("neighbour");
            }
            Mode::Routed => {
                sysctl::set_quiet(&format!("net/ipv4/conf/{tap_name}/proxy_arp"), "1");
                // The guests are IPv4: no link-local address, duplicate address detection
                // or multicast listener reports per tap (timers the kernel would run under
                // its network lock for every tap, and frames that wake idle guests).
                sysctl::set_quiet(&format!("net/ipv6/conf/{tap_name}/disable_ipv6"), "1");
                steps.done("sysctls");
                // The guest's gateway is this tap's MAC. A fixed one per service means a
                // tap set up again (deleted behind our back, or after a reboot) is the
                // gateway a guest resumed from a snapshot still has in its ARP cache.
                // Up, the route, the neighbour: sent together, answered together. The
                // kernel handles one socket's requests in order, so the link is up
                // before its route is added; three round trips cost one.
                futures_util::try_join!(
                    self.nl.set_up_with_mac(index, host_mac(service).bytes()),
                    self.nl.replace_route_v4(address, 32, index, Some(self.pool.gateway())),
                    self.nl.replace_neighbour(index, address, mac.bytes()),
                )?;
                steps.done("up+route+neighbour");
            }
        }
        log_if_slow(&steps, service, &tap_name);
        self.taps.insert(tap_name.clone());
        self.attached.insert(service.to_string(), tap_name.clone());
        Ok(Attachment {
            tap_name,
            tap_fd,
            mac,
            address,
            prefix: self.pool.prefix(),
            gateway: self.pool.gateway(),
            steps: Some(steps),
        })
    }

    /// Takes over the tap and address of a VM that an earlier daemon started (and which
    /// still holds its tap open), without touching the link.
    pub fn adopt(&mut self, service: &str, tap_name: &str, address: Ipv4Addr) -> Result<(), Error> {
        self.pool.reserve(service, address)?;
        self.taps.insert(tap_name.to_string());
        self.attached.insert(service.to_string(), tap_name.to_string());
        Ok(())
    }

    /// Opens the tap of an attached service again (its address, route and neighbour are
    /// still in place): what a wake from standby needs, without netlink.
    pub fn reopen(&mut self, service: &str) -> Result<Attachment, Error> {
        let tap_name = self
            .attached
            .get(service)
            .cloned()
            .ok_or_else(|| Error::NotAttached(service.to_string()))?;
        // Opening a tap that is gone would create a new one, without address or route.
        let c_name = std::ffi::CString::new(tap_name.as_str()).map_err(|_| Error::NotAttached(service.to_string()))?;
        // SAFETY: a valid NUL-terminated name; if_nametoindex only reads it.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(Error::NotAttached(service.to_string()));
        }
        let address = self.pool.assign(service, None)?;
        let tap_fd = tap::create(&tap_name)?;
        Ok(Attachment {
            tap_name,
            tap_fd,
            mac: MacAddr::derived(service),
            address,
            prefix: self.pool.prefix(),
            gateway: self.pool.gateway(),
            steps: None,
        })
    }

    /// Releases the address of `service` and forgets its tap; the returned future deletes
    /// the tap (its route goes with it). Only a tap this daemon set up or adopted for this
    /// very service is deleted.
    pub fn detach(&mut self, service: &str) -> BoxFuture<Result<(), Error>> {
        self.pool.release(service);
        let Some(name) = self.attached.remove(service) else {
            return Box::pin(std::future::ready(Ok(())));
        };
        self.taps.remove(&name);
        self.deleting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        let (nl, deleting) = (self.nl.clone(), self.deleting.clone());
        Box::pin(async move {
            let deleted = match nl.find_link(&name).await {
                Ok(Some(index)) => nl.delete_link(index).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            deleting.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
            Ok(deleted?)
        })
    }

    /// Every attached service whose tap is gone, down, or (routed) without its /32 route.
    pub async fn drift(&mut self) -> Result<Vec<(String, Drift)>, Error> {
        let probe = &self.probe;
        let routes = match self.mode {
            Mode::Routed => Some(self.nl.host_routes_v4().await?),
            Mode::Bridged { .. } => None,
        };
        let mut out = Vec::new();
        for (service, tap) in &self.attached {
            let drift = match probe.state(tap).map_err(Error::Probe)? {
                None => Some(Drift::TapGone),
                Some(link) if !link.up => Some(Drift::Unwired),
                Some(link) => {
                    // Routed: the guest's /32 must still go out of its tap.
                    let routed = match (&routes, self.pool.address_of(service)) {
                        (Some(r), Some(a)) => r.get(&a) == Some(&link.index),
                        _ => true,
                    };
                    (!routed).then_some(Drift::Unwired)
                }
            };
            if let Some(d) = drift {
                out.push((service.clone(), d));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Wires the existing tap of `service` again: up, and its route and neighbour entry.
    pub async fn rewire(&mut self, service: &str) -> Result<(), Error> {
        let tap_name = self
            .attached
            .get(service)
            .cloned()
            .ok_or_else(|| Error::Netlink(netlink::Error::NoSuchLink(format!("(no tap set up for {service})"))))?;
        let index = self.nl.link_index(&tap_name).await?;
        let mac = MacAddr::derived(service);
        self.nl.set_up(index).await?;
        if let (Mode::Routed, Some(address)) = (&self.mode, self.pool.address_of(service)) {
            self.nl
                .replace_route_v4(address, 32, index, Some(self.pool.gateway()))
                .await?;
            self.nl.replace_neighbour(index, address, mac.bytes()).await?;
        }
        Ok(())
    }
}

impl HostNet for HostNetwork {
    fn settle(&self, service: &str) {
        let Some(tap_name) = self.attached.get(service) else {
            return;
        };
        match tap::wait_running(tap_name, REATTACH_LIMIT) {
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!(
                UNIKERNEL = %service,
                "tap {tap_name} is not running {REATTACH_LIMIT:?} after it was opened again: frames to the guest may be lost until it is"
            ),
            Err(e) => tracing::warn!(UNIKERNEL = %service, "cannot look at tap {tap_name}: {e}"),
        }
    }

    async fn attach(&mut self, service: &str, explicit: Option<Ipv4Addr>) -> Result<Attachment, Error> {
        HostNetwork::attach(self, service, explicit).await
    }

    fn adopt(&mut self, service: &str, tap: &str, address: Ipv4Addr) -> Result<(), Error> {
        HostNetwork::adopt(self, service, tap, address)
    }

    fn detach(&mut self, service: &str) -> BoxFuture<Result<(), Error>> {
        HostNetwork::detach(self, service)
    }

    fn reopen(&mut self, service: &str) -> Result<Attachment, Error> {
        HostNetwork::reopen(self, service)
    }

    async fn drift(&mut self) -> Result<Vec<(String, Drift)>, Error> {
        HostNetwork::drift(self).await
    }

    async fn rewire(&mut self, service: &str) -> Result<(), Error> {
        HostNetwork::rewire(self, service).await
    }

    fn listen(
        &mut self,
        service: &str,
        bind: std::net::SocketAddrV4,
        guest_port: u16,
        gate: Gate,
    ) -> io::Result<JoinHandle<()>> {
        crate::proxy::listen(service, bind, guest_port, gate)
    }
}

/// An attach slower than this says where its time went.
const SLOW_ATTACH: Duration = Duration::from_millis(10);

fn log_if_slow(steps: &Steps, service: &str, tap: &str) {
    let total = steps.total();
    if total >= SLOW_ATTACH {
        tracing::info!(UNIKERNEL = %service, "network of {tap} took {:.1} ms: {steps}", total.as_secs_f64() * 1e3);
    }
}
