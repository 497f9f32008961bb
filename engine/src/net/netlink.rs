//! The rtnetlink operations host networking needs, each idempotent.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("netlink: {what}: {source}")]
    Request { what: String, source: rtnetlink::Error },
    #[error("no network interface named {0}")]
    NoSuchLink(String),
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Request { what, source }
}

/// A netlink connection in the caller's network namespace (clones share it).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// "Does not exist" answers, which lookups turn into `None`.
fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV)
}

impl Netlink {
    /// Must be called inside a Tokio runtime: the connection runs as a task on it.
    pub fn connect() -> Result<Netlink, Error> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn find_link(&self, name: &str) -> Result<Option<u32>, Error> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(request(format!("look up {name}"))(e)),
        }
    }

    pub async fn link_index(&self, name: &str) -> Result<u32, Error> {
        self.find_link(name)
            .await?
            .ok_or_else(|| Error::NoSuchLink(name.into()))
    }

    pub async fn ensure_bridge(&self, name: &str) -> Result<u32, Error> {
        if let Some(index) = self.find_link(name).await? {
            return Ok(index);
        }
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(request(format!("create bridge {name}")))?;
        self.link_index(name).await
    }

    pub async fn set_up(&self, index: u32) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(request(format!("set link {index} up")))
    }

    /// Sets the link up with this MAC address, in one request.
    pub async fn set_up_with_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().address(mac.to_vec()).build())
            .execute()
            .await
            .map_err(request(format!("set link {index} up")))
    }

    pub async fn set_master(&self, index: u32, bridge: u32) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(bridge).build())
            .execute()
            .await
            .map_err(request(format!("attach link {index} to bridge {bridge}")))
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), Error> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(request(format!("delete link {index}"))(e)),
        }
    }

    /// Adds `address/prefix` to the link unless it is there already.
    pub async fn ensure_address(&self, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), Error> {
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(request(format!("list addresses of link {index}")))?
        {
            let has = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == address));
            if has && msg.header.prefix_len == prefix {
                return Ok(());
            }
        }
        self.handle
            .address()
            .add(index, IpAddr::V4(address), prefix)
            .execute()
            .await
            .map_err(request(format!("add {address}/{prefix} to link {index}")))
    }

    /// Routes `dest/prefix` through link `index` (with `source` as the host's address
    /// towards it, if given), replacing any route to it.
    pub async fn replace_route_v4(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        index: u32,
        source: Option<Ipv4Addr>,
    ) -> Result<(), Error> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .output_interface(index);
        if let Some(source) = source {
            route = route.pref_source(source);
        }
        let route = route.build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(request(format!("route {dest}/{prefix}")))
    }

    /// A permanent neighbour entry `address -> mac` on link `index`, so the first packet to
    /// a booting guest leaves at once instead of waiting on ARP (whose retries are 1 s apart).
    pub async fn replace_neighbour(&self, index: u32, address: Ipv4Addr, mac: [u8; 6]) -> Result<(), Error> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(address))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(request(format!("neighbour {address} on link {index}")))
    }

    /// Every IPv4 host route (/32) in the main table: destination -> output link.
    pub async fn host_routes_v4(&self) -> Result<HashMap<Ipv4Addr, u32>, Error> {
        let mut out = HashMap::new();
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(filter).execute();
        while let Some(route) = routes.try_next().await.map_err(request("list routes"))? {
            if route.header.destination_prefix_length != 32 {
                continue;
            }
            let mut dest = None;
            let mut oif = None;
            for attr in &route.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dest = Some(*a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let (Some(d), Some(i)) = (dest, oif) {
                out.insert(d, i);
            }
        }
        Ok(out)
    }
}
