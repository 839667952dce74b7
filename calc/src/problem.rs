//! Why some wanted state cannot be built: typed, so callers decide by
//! kind and subject (a failed CNI ADD is a problem about *its* endpoint),
//! and rendered once for logs and operators.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A local endpoint's host veth is not in the kernel: it gets neither
    /// guard nor route.
    #[error("endpoint {namespace}/{pod} ({address}): host interface {host_ifname} is missing")]
    EndpointLinkMissing {
        namespace: String,
        pod: String,
        address: Ipv4Addr,
        host_ifname: String,
    },
    #[error("node {node}: pod CIDR {cidr} overlaps {clash} already routed; not routed")]
    PodCidrOverlap {
        node: String,
        cidr: Ipv4Network,
        clash: Ipv4Network,
    },
    #[error(
        "node {node}: underlay address {underlay} is outside the uplink subnet {subnet}; not routed: \
         native routing (--encap none) needs the nodes on one L2 segment, as routers \
         between subnets do not know the pod routes (use --encap ipip or vxlan)"
    )]
    NativeAcrossSubnets {
        node: String,
        underlay: Ipv4Addr,
        subnet: Ipv4Network,
    },
    #[error(
        "node {node}: no route to its underlay address {underlay} via the uplink; {cidr} not routed"
    )]
    NoUnderlayRoute {
        node: String,
        underlay: Ipv4Addr,
        cidr: Ipv4Network,
    },
    /// Mode `vxlan` before the device exists: on the uplink's subnet the
    /// CIDR is routed natively meanwhile, beyond it not at all.
    #[error("node {node}: no vxlan device yet; {cidr} {}", if *.routed_natively { "routed natively" } else { "(off the uplink's subnet) not routed" })]
    NoVxlanDevice {
        node: String,
        cidr: Ipv4Network,
        routed_natively: bool,
    },
    #[error("learned {prefix} overlaps this node's pod CIDR {own}; not installed")]
    LearnedOverlapsOwn {
        prefix: Ipv4Network,
        own: Ipv4Network,
    },
    #[error(
        "learned {prefix} via {next_hop}: the next hop is not on the uplink's subnet, nor a node the encapsulation reaches; not installed"
    )]
    LearnedNextHopUnreachable { prefix: IpNetwork, next_hop: IpAddr },
    /// A local pod without an address: policy cannot protect it (and it
    /// is no peer of anyone's rules).
    #[error("pod {namespace}/{pod} has no address; its policy cannot be programmed")]
    PolicyPodWithoutAddress { namespace: String, pod: String },
    /// Two pods claim one address: the first (by namespace and name) keeps
    /// its identity, the other is no policy peer.
    #[error("pod {pod} claims {address}, already {holder}'s; it is no policy peer")]
    PolicyAddressClash {
        address: Ipv4Addr,
        pod: String,
        holder: String,
    },
    /// A local endpoint's policy could not be programmed: it is denied
    /// everything both ways instead.
    #[error(
        "pod {namespace}/{pod} ({address}) fails closed, denied everything both ways: {reason}"
    )]
    PolicyFailedClosed {
        namespace: String,
        pod: String,
        address: Ipv4Addr,
        reason: String,
    },
}

impl Problem {
    /// Whether the problem is about the endpoint whose host veth is
    /// `host_ifname`: what makes its CNI ADD fail.
    pub fn concerns_endpoint(&self, host_ifname: &str) -> bool {
        matches!(self, Problem::EndpointLinkMissing { host_ifname: h, .. } if h == host_ifname)
    }
}
