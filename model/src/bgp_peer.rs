//! External BGP peers (a top-of-rack router, BIRD) as datastore objects, in
//! the shape of Calico's BGPPeer:
//!
//! ```yaml
//! apiVersion: weft.dev/v1alpha1
//! kind: BGPPeer
//! metadata:
//!   name: tor-a
//! spec:
//!   peerIP: 198.18.0.200
//!   asNumber: 64600
//!   node: node1        # optional: only this node peers; otherwise every node
//!   password: s3cret   # optional: TCP MD5 signature (RFC 2385)
//! ```
//!
//! Manifests are checked here, where they enter the datastore, so the agent
//! only ever reads valid peers.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "weft.dev/v1alpha1";
pub const KIND: &str = "BGPPeer";
/// The longest TCP MD5 key the kernel accepts (TCP_MD5SIG_MAXKEYLEN).
pub const MAX_PASSWORD_LEN: usize = 80;
/// RFC 6793's AS_TRANS: a placeholder, never a real peer's AS.
const AS_TRANS: u32 = 23456;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPeer {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: BgpPeerSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPeerSpec {
    /// The router's address, on the nodes' underlay.
    #[serde(rename = "peerIP")]
    pub peer_ip: IpAddr,
    /// The router's AS number (1 to 4294967295; not 23456, AS_TRANS).
    pub as_number: u32,
    /// The node that peers; every node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A TCP MD5 signature key (RFC 2385), at most 80 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// Why a manifest is refused, naming the document and the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("document {doc}: {source}")]
    Parse {
        doc: usize,
        source: serde_norway::Error,
    },
    #[error("document {doc}: apiVersion must be {API_VERSION}, not {found:?}")]
    ApiVersion { doc: usize, found: String },
    #[error("document {doc}: kind must be {KIND}, not {found:?}")]
    Kind { doc: usize, found: String },
    #[error(
        "document {doc}: metadata.name {name:?} must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.'; at most 253)"
    )]
    Name { doc: usize, name: String },
    #[error(
        "document {doc} ({name}): spec.asNumber {asn} is not a peer's AS (0 and 23456 are reserved)"
    )]
    AsNumber { doc: usize, name: String, asn: u32 },
    #[error(
        "document {doc} ({name}): spec.peerIP {ip} cannot be a peer (unspecified, loopback or multicast)"
    )]
    PeerIp {
        doc: usize,
        name: String,
        ip: IpAddr,
    },
    #[error("document {doc} ({name}): spec.password must be 1 to {MAX_PASSWORD_LEN} bytes")]
    Password { doc: usize, name: String },
    #[error("document {doc} ({name}): spec.node {node:?} is not a valid node name")]
    Node {
        doc: usize,
        name: String,
        node: String,
    },
    #[error("BGPPeer {name:?} is defined twice (documents {first} and {second})")]
    Duplicate {
        name: String,
        first: usize,
        second: usize,
    },
    #[error("no BGPPeer in the input")]
    Empty,
}

impl BgpPeer {
    /// Whether `node` peers with this peer.
    pub fn applies_to(&self, node: &str) -> bool {
        self.spec.node.as_deref().is_none_or(|n| n == node)
    }

    /// Checks one manifest (`doc` numbers it in messages, from 1).
    pub fn validate(&self, doc: usize) -> Result<(), ManifestError> {
        let name = self.metadata.name.clone();
        if self.api_version != API_VERSION {
            return Err(ManifestError::ApiVersion {
                doc,
                found: self.api_version.clone(),
            });
        }
        if self.kind != KIND {
            return Err(ManifestError::Kind {
                doc,
                found: self.kind.clone(),
            });
        }
        if !is_dns_subdomain(&name) {
            return Err(ManifestError::Name { doc, name });
        }
        let asn = self.spec.as_number;
        if asn == 0 || asn == AS_TRANS {
            return Err(ManifestError::AsNumber { doc, name, asn });
        }
        let ip = self.spec.peer_ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(ManifestError::PeerIp { doc, name, ip });
        }
        if let Some(p) = &self.spec.password
            && (p.is_empty() || p.len() > MAX_PASSWORD_LEN)
        {
            return Err(ManifestError::Password { doc, name });
        }
        if let Some(node) = &self.spec.node
            && !is_dns_subdomain(node)
        {
            return Err(ManifestError::Node {
                doc,
                name,
                node: node.clone(),
            });
        }
        Ok(())
    }
}

/// Parses and checks a file of BGPPeer manifests: YAML, several documents
/// separated by `---` (JSON is YAML too). All or nothing: one bad document
/// refuses the file, so a half-applied file never reaches the datastore.
pub fn parse_manifests(text: &str) -> Result<Vec<BgpPeer>, ManifestError> {
    crate::manifest::read_file(text, |doc, value| {
        let peer: BgpPeer = serde_norway::from_value(value)
            .map_err(|source| ManifestError::Parse { doc, source })?;
        peer.validate(doc)?;
        let name = peer.metadata.name.clone();
        Ok((peer, KIND, name))
    })
}

impl crate::manifest::FileErrors for ManifestError {
    fn parse(doc: usize, source: serde_norway::Error) -> Self {
        ManifestError::Parse { doc, source }
    }
    fn duplicate(_: &'static str, name: String, first: usize, second: usize) -> Self {
        ManifestError::Duplicate {
            name,
            first,
            second,
        }
    }
    fn empty() -> Self {
        ManifestError::Empty
    }
}

/// Kubernetes' object name rule (RFC 1123 subdomain).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "\
apiVersion: weft.dev/v1alpha1
kind: BGPPeer
metadata:
  name: tor-a
spec:
  peerIP: 198.18.0.200
  asNumber: 64600
---
apiVersion: weft.dev/v1alpha1
kind: BGPPeer
metadata:
  name: bird-node1
spec:
  peerIP: 198.18.0.201
  asNumber: 64601
  node: node1
  password: s3cret
";

    #[test]
    fn multi_document_yaml_parses() {
        let peers = parse_manifests(TWO).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[0].spec.peer_ip,
            "198.18.0.200".parse::<IpAddr>().unwrap()
        );
        assert!(peers[0].applies_to("node7"));
        assert!(peers[1].applies_to("node1") && !peers[1].applies_to("node2"));
        assert_eq!(peers[1].spec.password.as_deref(), Some("s3cret"));
    }

    #[test]
    fn json_is_accepted_too() {
        let json = r#"{"apiVersion":"weft.dev/v1alpha1","kind":"BGPPeer","metadata":{"name":"x"},"spec":{"peerIP":"198.18.0.9","asNumber":65000}}"#;
        assert_eq!(parse_manifests(json).unwrap()[0].spec.as_number, 65000);
    }

    #[test]
    fn bad_manifests_name_the_document_and_field() {
        let bad = |from: &str, to: &str| {
            parse_manifests(&TWO.replacen(from, to, 1))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("weft.dev/v1alpha1", "v1").contains("document 1: apiVersion"));
        assert!(bad("kind: BGPPeer", "kind: Peer").contains("kind must be BGPPeer"));
        assert!(bad("name: tor-a", "name: Tor_A").contains("DNS-1123"));
        assert!(bad("asNumber: 64600", "asNumber: 0").contains("asNumber 0"));
        assert!(bad("asNumber: 64600", "asNumber: 23456").contains("reserved"));
        assert!(bad("asNumber: 64600", "asNumber: 4294967296").contains("document 1"));
        assert!(bad("peerIP: 198.18.0.200", "peerIP: 127.0.0.1").contains("peerIP"));
        assert!(bad("peerIP: 198.18.0.200", "peerIP: not-an-ip").contains("document 1"));
        assert!(
            bad("password: s3cret", &format!("password: {}", "x".repeat(81))).contains("password")
        );
        assert!(bad("node: node1", "node: Node_1").contains("spec.node"));
        assert!(
            bad("  asNumber: 64600", "  asNumber: 64600\n  colour: blue").contains("unknown field")
        );
        assert!(bad("name: bird-node1", "name: tor-a").contains("defined twice"));
        assert!(matches!(
            parse_manifests("---\n"),
            Err(ManifestError::Empty)
        ));
    }
}
