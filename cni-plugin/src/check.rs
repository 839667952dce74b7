//! CHECK's decision: does what the kernel and the agent hold match what ADD
//! reported? Pure; the shell gathers [`Observed`] and calls [`verify`].

use std::net::Ipv4Addr;

use weft_dataplane::link::{LinkState, PodSideState};

use crate::error::CniError;

/// What CHECK expects, from prevResult and the attachment's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub pod_ifname: String,
    pub host_ifname: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// What CHECK found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The container interface; None if it does not exist.
    pub pod: Option<PodSideState>,
    /// The host end; None if it does not exist.
    pub host: Option<LinkState>,
    /// The address in the agent's record; None if the agent has no record.
    pub agent_address: Option<String>,
}

/// The first difference between `expected` and `observed`, as an error.
pub fn verify(expected: &Expected, observed: &Observed) -> Result<(), CniError> {
    let Expected {
        pod_ifname,
        host_ifname,
        address,
        prefix_len,
        gateway,
    } = expected;
    let pod = observed.pod.as_ref().ok_or_else(|| {
        CniError::check(format!(
            "interface {pod_ifname} is missing in the container"
        ))
    })?;
    if !pod.link.up {
        return Err(CniError::check(format!("interface {pod_ifname} is down")));
    }
    if !pod.has_address(*address, *prefix_len) {
        return Err(CniError::check(format!(
            "interface {pod_ifname} lacks address {address}/{prefix_len} (has {:?})",
            pod.addresses
                .iter()
                .map(|(a, l)| format!("{a}/{l}"))
                .collect::<Vec<_>>()
        )));
    }
    if !pod.has_default_route_via(*gateway) {
        return Err(CniError::check(format!(
            "no default route via {gateway} on {pod_ifname}"
        )));
    }
    let host = observed
        .host
        .as_ref()
        .ok_or_else(|| CniError::check(format!("host interface {host_ifname} is missing")))?;
    if !host.up {
        return Err(CniError::check(format!(
            "host interface {host_ifname} is down"
        )));
    }
    match &observed.agent_address {
        None => Err(CniError::check(
            "weft-agent has no record of this attachment",
        )),
        Some(recorded) if recorded.parse::<Ipv4Addr>().ok() != Some(*address) => {
            Err(CniError::check(format!(
                "weft-agent records address {recorded}, the container has {address}"
            )))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_dataplane::link::RouteState;

    const GW: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);

    fn expected() -> Expected {
        Expected {
            pod_ifname: "eth0".into(),
            host_ifname: "weft538f587a236".into(),
            address: ADDR,
            prefix_len: 32,
            gateway: GW,
        }
    }

    fn link(name: &str, up: bool) -> LinkState {
        LinkState {
            name: name.into(),
            index: 2,
            mac: None,
            mtu: Some(1480),
            up,
        }
    }

    fn healthy() -> Observed {
        Observed {
            pod: Some(PodSideState {
                link: link("eth0", true),
                addresses: vec![(ADDR, 32)],
                routes: vec![RouteState {
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: Some(GW),
                    output_index: Some(2),
                }],
            }),
            host: Some(link("weft538f587a236", true)),
            agent_address: Some("10.244.1.5".into()),
        }
    }

    fn fails(change: impl FnOnce(&mut Observed), needle: &str) {
        let mut o = healthy();
        change(&mut o);
        let err = verify(&expected(), &o).expect_err("should fail");
        assert_eq!(err.code(), 104);
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }

    #[test]
    fn healthy_attachment_passes() {
        verify(&expected(), &healthy()).unwrap();
    }

    #[test]
    fn each_difference_is_named() {
        fails(|o| o.pod = None, "missing in the container");
        fails(|o| o.pod.as_mut().unwrap().link.up = false, "eth0 is down");
        fails(
            |o| o.pod.as_mut().unwrap().addresses.clear(),
            "lacks address 10.244.1.5/32",
        );
        fails(
            |o| o.pod.as_mut().unwrap().routes.clear(),
            "no default route",
        );
        fails(
            |o| o.host = None,
            "host interface weft538f587a236 is missing",
        );
        fails(|o| o.host.as_mut().unwrap().up = false, "is down");
        fails(|o| o.agent_address = None, "no record");
        fails(
            |o| o.agent_address = Some("10.244.1.6".into()),
            "records address 10.244.1.6",
        );
    }
}
