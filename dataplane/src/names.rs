//! The names Weft gives to kernel objects it owns.
//!
//! Both the CNI plugin (which creates host veths) and the agent (which
//! garbage-collects them) derive names from here, so a host veth can always be
//! traced back to the attachment it belongs to without any stored state.

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// Every host-side veth Weft creates starts with this; the agent removes
/// only links with this prefix.
pub const HOST_IFNAME_PREFIX: &str = "weft";

/// The link-local next hop of every pod. Nothing owns it: the host end of
/// the veth answers for it (a permanent neighbour entry in the pod, proxy ARP
/// on the host end), so no address has to be spent per node or per pod.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The VTEP address of the node owning `pod_cidr` in mode `vxlan`: the
/// CIDR's network address, held as a /32 on that node's VXLAN device and
/// used as the next hop of the other nodes' routes to the CIDR.
pub fn vtep_ip(pod_cidr: ipnetwork::Ipv4Network) -> Ipv4Addr {
    pod_cidr.network()
}

/// Hex digits of the hash kept in a host interface name: prefix (4) + 11 =
/// 15, the longest name the kernel accepts (IFNAMSIZ - 1).
const HASH_CHARS: usize = 11;

/// The name of the host end of the veth of one attachment:
/// `weft` + the first 11 lowercase hex digits of
/// sha256(`container_id` + "/" + `ifname`).
///
/// Deterministic, so DEL and GC find the link from the attachment alone.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(container_id.as_bytes());
    hasher.update(b"/");
    hasher.update(ifname.as_bytes());
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{HOST_IFNAME_PREFIX}{}", &hex[..HASH_CHARS])
}

/// Whether `name` has the exact shape of a host veth name ("weft" + 11
/// lowercase hex digits). GC should match with this, not the bare prefix, so
/// other Weft devices (tunnels, say "weft.ipip") are never taken for veths.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == HOST_IFNAME_PREFIX.len() + HASH_CHARS
        && name.starts_with(HOST_IFNAME_PREFIX)
        && name[HOST_IFNAME_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_prefix_plus_eleven_hex_digits() {
        let name = host_ifname("abc", "eth0");
        assert_eq!(name.len(), 15);
        assert!(name.starts_with(HOST_IFNAME_PREFIX));
        assert!(
            name[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn host_ifname_matches_sha256_of_attachment() {
        // sha256("abc/eth0") computed independently with `printf abc/eth0 | sha256sum`.
        assert_eq!(host_ifname("abc", "eth0"), "weft538f587a236");
    }

    #[test]
    fn host_ifname_shape_is_recognised() {
        assert!(is_host_ifname(&host_ifname("abc", "eth0")));
        assert!(!is_host_ifname("weft.ipip"));
        assert!(!is_host_ifname("weft538F587A236"));
        assert!(!is_host_ifname("weft538f587a2"));
        assert!(!is_host_ifname("eth0"));
    }

    #[test]
    fn host_ifname_differs_per_interface_and_container() {
        assert_ne!(host_ifname("abc", "eth0"), host_ifname("abc", "eth1"));
        assert_ne!(host_ifname("abc", "eth0"), host_ifname("abd", "eth0"));
        // Same attachment, same name: DEL and GC rely on it.
        assert_eq!(host_ifname("abc", "eth0"), host_ifname("abc", "eth0"));
    }
}
