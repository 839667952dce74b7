//! The node's uplink: the interface towards the underlay, whose address is
//! the node's address in the cluster and whose MTU bounds the pods' MTU.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;

/// What the agent needs to know about the uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// The node's underlay address on the uplink with its subnet (the
    /// uplink's first IPv4 address when the node address is not its).
    pub address: Option<Ipv4Network>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("uplink interface {name:?} not found in this network namespace")]
    NotFound { name: String },
    #[error("cannot read uplink {name:?}: {source}")]
    Netlink {
        name: String,
        source: rtnetlink::Error,
    },
}

/// Looks up the interface `name` in the calling task's network namespace;
/// its [`Uplink::address`] is `node_ip`'s subnet when the interface holds
/// it, else its first IPv4 address. Must be called inside a tokio runtime.
pub async fn lookup(name: &str, node_ip: Option<Ipv4Addr>) -> Result<Uplink, UplinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(UplinkError::Socket)?;
    let task = tokio::spawn(conn);
    let result = lookup_with(&handle, name, node_ip).await;
    task.abort();
    result
}

async fn lookup_with(
    handle: &rtnetlink::Handle,
    name: &str,
    node_ip: Option<Ipv4Addr>,
) -> Result<Uplink, UplinkError> {
    let netlink = |source| UplinkError::Netlink {
        name: name.to_string(),
        source,
    };
    let link = match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(link)) => link,
        Ok(None) => {
            return Err(UplinkError::NotFound {
                name: name.to_string(),
            });
        }
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            return Err(UplinkError::NotFound {
                name: name.to_string(),
            });
        }
        Err(e) => return Err(netlink(e)),
    };
    let ifindex = link.header.index;
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| {
            if let LinkAttribute::Mtu(m) = a {
                Some(*m)
            } else {
                None
            }
        })
        .unwrap_or(1500);
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute();
    let mut address = None;
    while let Some(msg) = addresses.try_next().await.map_err(netlink)? {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        if let Some(ip) = ip {
            let net = Ipv4Network::new(ip, msg.header.prefix_len).ok();
            if node_ip == Some(ip) {
                address = net;
                break;
            }
            address = address.or(net);
        }
    }
    Ok(Uplink {
        name: name.to_string(),
        ifindex,
        mtu,
        address,
    })
}

/// The uplink's IPv4 address, if it has one.
impl Uplink {
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.address.map(|a| a.ip())
    }
}
