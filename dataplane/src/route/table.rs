//! The netlink shell of [`super`]: reads the routes Weft owns and applies
//! a [`RoutePlan`]; reads the whole main table for inspection.

use std::net::Ipv4Addr;
use std::path::Path;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::RouteMessageBuilder;

use super::{RTPROT_WEFT, RTPROT_WEFT_BGP, Route, RoutePlan, TableRoute};
use crate::netns::{self, NetnsError};

/// Errors of the route shell, in netlink's terms.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The network namespace given to [`RouteTable::in_netns`] cannot be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot list routes: {0}")]
    List(#[source] rtnetlink::Error),
    #[error("cannot install route {route:?}: {source}")]
    Install {
        route: Route,
        source: rtnetlink::Error,
    },
    #[error("cannot remove route {route:?}: {source}")]
    Remove {
        route: Route,
        source: rtnetlink::Error,
    },
    #[error("cannot look up the route to {dst}: {source}")]
    Lookup {
        dst: Ipv4Addr,
        source: rtnetlink::Error,
    },
}

/// Where the kernel sends a packet to some address (`ip route get`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTo {
    /// The next hop, or `None` when the address is on a link of the node.
    pub gateway: Option<Ipv4Addr>,
    /// The output interface's index.
    pub oif: u32,
}

/// The netlink shell over the main routing table of the calling task's
/// network namespace (fixed when the table is opened).
#[derive(Clone)]
pub struct RouteTable {
    handle: rtnetlink::Handle,
}

impl RouteTable {
    /// Opens a netlink connection; must be called inside a tokio runtime.
    pub fn open() -> Result<RouteTable, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(conn);
        Ok(RouteTable { handle })
    }

    /// Opens a netlink connection whose socket lives in the network namespace
    /// at `netns` (opened on a short-lived thread inside it, driven by the
    /// caller's tokio runtime afterwards); must be called inside a tokio
    /// runtime.
    pub fn in_netns(netns: &Path) -> Result<RouteTable, RouteError> {
        let runtime = tokio::runtime::Handle::current();
        let (conn, handle, _) = netns::run_in(netns, move || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })?
        .map_err(RouteError::Socket)?;
        tokio::spawn(conn);
        Ok(RouteTable { handle })
    }

    /// Every IPv4 route in the main table with one of Weft's protocol numbers.
    pub async fn owned(&self) -> Result<Vec<Route>, RouteError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(query).execute();
        let mut routes = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(RouteError::List)? {
            let protocol = u8::from(msg.header.protocol);
            if msg.header.table != RouteHeader::RT_TABLE_MAIN
                || (protocol != RTPROT_WEFT && protocol != RTPROT_WEFT_BGP)
            {
                continue;
            }
            if let Some(route) = parse(&msg) {
                routes.push(route);
            }
        }
        routes.sort();
        Ok(routes)
    }

    /// Every IPv4 route of the main table, of any owner and type.
    pub async fn main_table(&self) -> Result<Vec<TableRoute>, RouteError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(query).execute();
        let mut routes = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(RouteError::List)? {
            routes.extend(TableRoute::of(&msg));
        }
        Ok(routes)
    }

    /// The kernel's route to `dst` (`ip route get DST`: the whole routing
    /// decision, rules and tables included), or `None` when it has none.
    pub async fn route_to(&self, dst: Ipv4Addr) -> Result<Option<RouteTo>, RouteError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut stream = self.handle.route().get(query).execute();
        let msg = match stream.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(rtnetlink::Error::NetlinkError(e))
                if [libc::ENETUNREACH, libc::EHOSTUNREACH]
                    .iter()
                    .any(|code| e.raw_code() == -code) =>
            {
                return Ok(None);
            }
            Err(source) => return Err(RouteError::Lookup { dst, source }),
        };
        let mut gateway = None;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Ok(oif.map(|oif| RouteTo { gateway, oif }))
    }

    /// Applies a plan: installs and replaces first, then removes, so traffic
    /// to a destination that stays never loses its route. Gives up at the
    /// first error; the next reconcile pass retries from the kernel's state.
    pub async fn apply(&self, plan: &RoutePlan) -> Result<(), RouteError> {
        self.install(&plan.upsert).await?;
        self.remove(&plan.remove).await
    }

    /// Installs or replaces in place each of `routes` (a plan's upserts).
    pub async fn install(&self, routes: &[Route]) -> Result<(), RouteError> {
        for route in routes {
            self.handle
                .route()
                .add(message(route))
                .replace()
                .execute()
                .await
                .map_err(|source| RouteError::Install {
                    route: *route,
                    source,
                })?;
        }
        Ok(())
    }

    /// Removes each of `routes` (a plan's removals); one already gone is
    /// not an error.
    pub async fn remove(&self, routes: &[Route]) -> Result<(), RouteError> {
        for route in routes {
            match self.handle.route().del(message(route)).execute().await {
                Ok(()) => {}
                // Already gone (its interface vanished with a deleted veth).
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => {}
                Err(source) => {
                    return Err(RouteError::Remove {
                        route: *route,
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

fn message(route: &Route) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix())
        .output_interface(route.oif)
        .protocol(RouteProtocol::from(route.protocol));
    if route.onlink {
        builder = builder.onlink();
    }
    let mut msg = match route.gateway {
        Some(gw) => builder.gateway(gw).build(),
        None => builder.scope(RouteScope::Link).build(),
    };
    if let Some(mtu) = route.mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    msg
}

/// The IPv4 attributes of a route message that Weft reads, whatever the
/// route's type: the one reading of them for the route shell and for
/// `weftctl lab trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteAttributes {
    pub table: u32,
    pub dst: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// The route's MTU metric, when set (0 means unset).
    pub mtu: Option<u32>,
}

impl RouteAttributes {
    pub fn of(msg: &RouteMessage) -> RouteAttributes {
        let mut out = RouteAttributes {
            table: u32::from(msg.header.table),
            dst: Ipv4Addr::UNSPECIFIED,
            gateway: None,
            oif: None,
            mtu: None,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => out.table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => out.dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => out.gateway = Some(*a),
                RouteAttribute::Oif(i) => out.oif = Some(*i),
                RouteAttribute::Metrics(metrics) => {
                    out.mtu = metrics.iter().find_map(|m| match m {
                        RouteMetric::Mtu(mtu) if *mtu != 0 => Some(*mtu),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        out
    }
}

impl TableRoute {
    /// The main-table route in `msg`, if it is one.
    fn of(msg: &RouteMessage) -> Option<TableRoute> {
        let RouteAttributes {
            table,
            dst,
            gateway,
            oif,
            mtu,
        } = RouteAttributes::of(msg);
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        let kind = match msg.header.kind {
            RouteType::Unicast => "unicast".to_string(),
            other => format!("{other:?}").to_ascii_lowercase(),
        };
        Some(TableRoute {
            dst: Ipv4Network::new(dst, msg.header.destination_prefix_length).ok()?,
            gateway,
            oif,
            kind,
            mtu,
        })
    }
}

/// A main-table route in `msg` as Weft's own: one with an output device.
fn parse(msg: &RouteMessage) -> Option<Route> {
    let TableRoute {
        dst,
        gateway,
        oif,
        mtu,
        ..
    } = TableRoute::of(msg)?;
    Some(Route {
        dst,
        gateway,
        oif: oif?,
        protocol: u8::from(msg.header.protocol),
        // Only the onlink bit: the kernel also reports state here (linkdown, dead).
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
        mtu,
    })
}
