//! The OPEN we send and the checks of the OPEN we receive (RFC 4271
//! section 6.2 for what needs the configuration; the codec does the rest),
//! turned into what both sides agreed on.

use std::net::Ipv4Addr;

use crate::wire::notification::{code, open as open_err};
use crate::wire::{
    AS_TRANS, AfiSafi, BGP_VERSION, Capability, CodecContext, GracefulRestart,
    GracefulRestartFamily, Notification, Open,
};

use super::SessionConfig;

/// What the two OPENs agreed on; fixed for the life of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's (4-octet) AS number.
    pub peer_as: u32,
    pub peer_id: Ipv4Addr,
    /// min(ours, theirs) in seconds; 0: no hold timer and no keepalives.
    pub hold_time: u16,
    /// hold_time / 3 seconds (0 when hold_time is 0).
    pub keepalive: u16,
    /// Both sides sent the 4-octet AS capability (RFC 6793).
    pub four_octet_as: bool,
    /// Families both sides sent (RFC 4760); a peer that sends no
    /// multiprotocol capability is taken to speak IPv4 unicast only.
    pub families: Vec<AfiSafi>,
    /// Both sides sent the route refresh capability (RFC 2918).
    pub route_refresh: bool,
    /// The peer's graceful restart capability as received (RFC 4724),
    /// whether or not we sent ours.
    pub peer_graceful_restart: Option<GracefulRestart>,
    /// peer_as == local_as.
    pub ibgp: bool,
}

impl Negotiated {
    /// How UPDATEs are read and written on this connection.
    pub fn codec(&self) -> CodecContext {
        CodecContext {
            four_octet_as: self.four_octet_as,
        }
    }

    /// Whether the peer says it kept its forwarding state for `family`
    /// across its restart (F bit, RFC 4724 section 3). A helper keeps the
    /// stale routes of a family only while this holds.
    pub fn forwarding_preserved(&self, family: AfiSafi) -> bool {
        self.peer_graceful_restart.as_ref().is_some_and(|gr| {
            gr.families
                .iter()
                .any(|f| f.family == family && f.forwarding_preserved)
        })
    }
}

/// The OPEN this configuration sends.
pub(super) fn build_open(config: &SessionConfig) -> Open {
    let my_as = u16::try_from(config.local_as).unwrap_or(AS_TRANS);
    let mut capabilities: Vec<Capability> = config
        .families
        .iter()
        .copied()
        .map(Capability::Multiprotocol)
        .collect();
    if config.route_refresh {
        capabilities.push(Capability::RouteRefresh);
    }
    capabilities.push(Capability::FourOctetAs(config.local_as));
    if let Some(gr) = &config.graceful_restart {
        capabilities.push(Capability::GracefulRestart(GracefulRestart {
            restarting: gr.restarting,
            restart_time: gr.restart_time.min(4095),
            families: config
                .families
                .iter()
                .map(|&family| GracefulRestartFamily {
                    family,
                    forwarding_preserved: gr.forwarding_preserved,
                })
                .collect(),
        }));
    }
    Open {
        version: BGP_VERSION,
        my_as,
        hold_time: config.hold_time,
        bgp_id: config.local_id,
        capabilities,
    }
}

/// Checks the peer's OPEN against the configuration; the error is the
/// NOTIFICATION to send.
pub(super) fn negotiate(config: &SessionConfig, open: &Open) -> Result<Negotiated, Notification> {
    let reject = |subcode, data: Vec<u8>| Err(Notification::new(code::OPEN_MESSAGE, subcode, data));
    if open.version != BGP_VERSION {
        // Data: the largest version we support, 2 octets.
        return reject(
            open_err::UNSUPPORTED_VERSION_NUMBER,
            u16::from(BGP_VERSION).to_be_bytes().to_vec(),
        );
    }
    let peer_as = open.asn();
    if peer_as != config.peer_as {
        return reject(open_err::BAD_PEER_AS, open.my_as.to_be_bytes().to_vec());
    }
    if matches!(open.hold_time, 1 | 2) {
        return reject(open_err::UNACCEPTABLE_HOLD_TIME, Vec::new());
    }
    let ibgp = peer_as == config.local_as;
    // RFC 6286: any non-zero identifier, unique within the AS.
    if open.bgp_id.is_unspecified() || (ibgp && open.bgp_id == config.local_id) {
        return reject(open_err::BAD_BGP_IDENTIFIER, Vec::new());
    }
    let mut theirs: Vec<AfiSafi> = open
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::Multiprotocol(f) => Some(*f),
            _ => None,
        })
        .collect();
    if theirs.is_empty() {
        theirs.push(AfiSafi::IPV4_UNICAST);
    }
    let mut families: Vec<AfiSafi> = config
        .families
        .iter()
        .copied()
        .filter(|f| theirs.contains(f))
        .collect();
    families.sort();
    families.dedup();
    if families.is_empty() {
        // RFC 5492 section 5: the data is the capability we need.
        let data = config
            .families
            .iter()
            .flat_map(|f| {
                let afi = f.afi.to_be_bytes();
                [1, 4, afi[0], afi[1], 0, f.safi]
            })
            .collect();
        return reject(open_err::UNSUPPORTED_CAPABILITY, data);
    }
    let hold_time = config.hold_time.min(open.hold_time);
    Ok(Negotiated {
        peer_as,
        peer_id: open.bgp_id,
        hold_time,
        keepalive: hold_time / 3,
        // We always send the capability.
        four_octet_as: open.has(|c| matches!(c, Capability::FourOctetAs(_))),
        families,
        route_refresh: config.route_refresh && open.has(|c| matches!(c, Capability::RouteRefresh)),
        peer_graceful_restart: open.graceful_restart().cloned(),
        ibgp,
    })
}
