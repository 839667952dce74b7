//! Kubernetes `networking.k8s.io/v1` NetworkPolicy, field for field as
//! upstream defines it (k8s.io/api networking/v1 types.go), in the API
//! server's JSON/YAML shape, with the API server's validation; and what a
//! pod contributes to policy ([`PolicyPod`], its [`ContainerPort`]s).
//!
//! Server-set metadata (uid, resourceVersion, managedFields, ...) and
//! `status` are accepted and dropped, so objects as `kubectl get -o yaml`
//! or a watch returns them parse; unknown fields inside `spec` are refused,
//! as `kubectl apply`'s strict field validation does, so a misspelt field
//! never silently widens a policy.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::manifest::{FieldError, ObjectMeta};
use crate::selector::{LabelSelector, Labels};

pub const API_VERSION: &str = "networking.k8s.io/v1";
pub const KIND: &str = "NetworkPolicy";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

fn api_version() -> String {
    API_VERSION.into()
}

fn kind() -> String {
    KIND.into()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; `{}` (or absent):
    /// all of them.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Empty or absent: no traffic allowed in (when Ingress is a type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// Absent: see [`NetworkPolicySpec::policy_types`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<PolicyType>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// Empty or absent: every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    /// Empty or absent: every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Peer>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    /// Empty or absent: every destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
}

/// `NetworkPolicyPeer`: pods (a pod and/or namespace selector, ANDed) or
/// an address block, never both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `IPBlock`: a CIDR minus the `except` CIDRs inside it. Text as in the
/// API, checked by [`NetworkPolicy::validate`], read by [`IpBlock::parsed`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    /// Absent: TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Absent: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// With a numeric `port`: the last port of the range, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// `intstr.IntOrString` as a port: a number or a container port's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// Wide so an out-of-range number reaches validation (and its path).
    Number(i64),
    Name(String),
}

/// A transport protocol of a port. Unknown names are kept so validation
/// can name the field; they match nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
    Unknown(String),
}

impl Protocol {
    /// The IP protocol number, what packets carry; `None` if unknown.
    pub fn number(&self) -> Option<u8> {
        match self {
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Sctp => Some(132),
            Protocol::Unknown(_) => None,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Unknown(s) => s,
        }
    }
}

impl From<String> for Protocol {
    fn from(s: String) -> Protocol {
        match s.as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => Protocol::Unknown(s),
        }
    }
}

impl From<Protocol> for String {
    fn from(p: Protocol) -> String {
        p.name().to_string()
    }
}

/// A direction a policy can isolate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum PolicyType {
    Ingress,
    Egress,
    Unknown(String),
}

impl From<String> for PolicyType {
    fn from(s: String) -> PolicyType {
        match s.as_str() {
            "Ingress" => PolicyType::Ingress,
            "Egress" => PolicyType::Egress,
            _ => PolicyType::Unknown(s),
        }
    }
}

impl From<PolicyType> for String {
    fn from(t: PolicyType) -> String {
        match t {
            PolicyType::Ingress => "Ingress".into(),
            PolicyType::Egress => "Egress".into(),
            PolicyType::Unknown(s) => s,
        }
    }
}

impl NetworkPolicySpec {
    /// The directions the policy isolates, upstream's defaulting applied:
    /// when `policyTypes` is absent, Ingress always, Egress only if the
    /// policy has egress rules.
    pub fn policy_types(&self) -> (bool, bool) {
        match &self.policy_types {
            Some(types) => (
                types.contains(&PolicyType::Ingress),
                types.contains(&PolicyType::Egress),
            ),
            None => (true, !self.egress.is_empty()),
        }
    }
}

impl NetworkPolicy {
    /// The policy's namespace (`default` when the manifest names none, as
    /// `kubectl apply` without `-n` does).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace_or_default()
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The API server's checks; the first failure, with its field path.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.metadata.validate_namespaced()?;
        let spec = &self.spec;
        spec.pod_selector.validate("spec.podSelector")?;
        for (i, rule) in spec.ingress.iter().enumerate() {
            let at = format!("spec.ingress[{i}]");
            validate_ports(&rule.ports, &at)?;
            validate_peers(&rule.from, &format!("{at}.from"))?;
        }
        for (i, rule) in spec.egress.iter().enumerate() {
            let at = format!("spec.egress[{i}]");
            validate_ports(&rule.ports, &at)?;
            validate_peers(&rule.to, &format!("{at}.to"))?;
        }
        if let Some(types) = &spec.policy_types {
            if types.len() > 2 {
                return Err(FieldError::new(
                    "spec.policyTypes",
                    types.len().to_string(),
                    "may not specify more than two policyTypes",
                ));
            }
            for (i, t) in types.iter().enumerate() {
                if let PolicyType::Unknown(s) = t {
                    return Err(FieldError::new(
                        format!("spec.policyTypes[{i}]"),
                        s,
                        "supported values: \"Ingress\", \"Egress\"",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn validate_ports(ports: &[NetworkPolicyPort], rule: &str) -> Result<(), FieldError> {
    for (i, port) in ports.iter().enumerate() {
        let at = format!("{rule}.ports[{i}]");
        if let Some(protocol) = &port.protocol {
            check_protocol(protocol, &format!("{at}.protocol"))?;
        }
        let end = |reason| {
            FieldError::new(
                format!("{at}.endPort"),
                port.end_port.unwrap_or_default().to_string(),
                reason,
            )
        };
        match (&port.port, port.end_port) {
            (Some(PortRef::Number(n)), end_port) => {
                check_port_number(*n, &format!("{at}.port"))?;
                if let Some(e) = end_port {
                    if e < *n {
                        return Err(end("must be greater than or equal to `port`"));
                    }
                    check_port_number(e, &format!("{at}.endPort"))?;
                }
            }
            (Some(PortRef::Name(name)), end_port) => {
                if end_port.is_some() {
                    return Err(end("may not be specified when `port` is non-numeric"));
                }
                check_port_name(name, &format!("{at}.port"))?;
            }
            (None, Some(_)) => {
                return Err(end("may not be specified when `port` is not specified"));
            }
            (None, None) => {}
        }
    }
    Ok(())
}

fn check_port_number(n: i64, path: &str) -> Result<(), FieldError> {
    if (1..=65535).contains(&n) {
        return Ok(());
    }
    Err(FieldError::new(
        path,
        n.to_string(),
        "must be between 1 and 65535, inclusive",
    ))
}

fn check_protocol(protocol: &Protocol, path: &str) -> Result<(), FieldError> {
    match protocol {
        Protocol::Unknown(p) => Err(FieldError::new(
            path,
            p,
            "supported values: \"TCP\", \"UDP\", \"SCTP\"",
        )),
        _ => Ok(()),
    }
}

fn check_port_name(name: &str, path: &str) -> Result<(), FieldError> {
    if is_port_name(name) {
        return Ok(());
    }
    Err(FieldError::new(
        path,
        name,
        "must be a port name (IANA_SVC_NAME): at most 15 lowercase letters, \
         digits and '-', with at least one letter, no '-' at either end or twice in a row",
    ))
}

/// Checks a pod's container ports as the API server checks a pod spec's
/// (`ports[i].containerPort`, `.name`, `.protocol`; a name used twice is
/// refused, since a named port must resolve to one number per protocol).
pub fn validate_container_ports(ports: &[ContainerPort]) -> Result<(), FieldError> {
    let mut names = std::collections::BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("ports[{i}]");
        check_port_number(port.container_port.into(), &format!("{at}.containerPort"))?;
        check_protocol(&port.protocol, &format!("{at}.protocol"))?;
        if let Some(name) = &port.name {
            check_port_name(name, &format!("{at}.name"))?;
            if !names.insert(name) {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    name,
                    "duplicate value: names a port already",
                ));
            }
        }
    }
    Ok(())
}

/// IANA service names, what a named port must be (upstream's `IsValidPortName`).
pub fn is_port_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn validate_peers(peers: &[Peer], list: &str) -> Result<(), FieldError> {
    for (i, peer) in peers.iter().enumerate() {
        let at = format!("{list}[{i}]");
        if let Some(s) = &peer.pod_selector {
            s.validate(&format!("{at}.podSelector"))?;
        }
        if let Some(s) = &peer.namespace_selector {
            s.validate(&format!("{at}.namespaceSelector"))?;
        }
        let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match &peer.ip_block {
            None if !selectors => {
                return Err(FieldError::new(at, "{}", "must specify a peer"));
            }
            Some(_) if selectors => {
                return Err(FieldError::new(
                    at,
                    "",
                    "may not specify both ipBlock and another peer",
                ));
            }
            Some(block) => block.validate(&format!("{at}.ipBlock"))?,
            None => {}
        }
    }
    Ok(())
}

impl IpBlock {
    fn validate(&self, path: &str) -> Result<(), FieldError> {
        let cidr = parse_cidr(&self.cidr, &format!("{path}.cidr"))?;
        for (i, text) in self.except.iter().enumerate() {
            let at = format!("{path}.except[{i}]");
            let except = parse_cidr(text, &at)?;
            if !cidr.contains(except.network()) || cidr.prefix() >= except.prefix() {
                return Err(FieldError::new(
                    at,
                    text,
                    "must be a strict subset of `cidr`",
                ));
            }
        }
        Ok(())
    }

    /// The block and its exceptions as networks (host bits cleared);
    /// `None` for text that does not parse (validation refuses it).
    pub fn parsed(&self) -> Option<(IpNetwork, Vec<IpNetwork>)> {
        let cidr = normalize(self.cidr.parse().ok()?);
        let except = self
            .except
            .iter()
            .map(|e| e.parse().ok().map(normalize))
            .collect::<Option<Vec<_>>>()?;
        Some((cidr, except))
    }
}

fn normalize(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).expect("same prefix length")
}

/// A CIDR as the API server takes it: an address, `/`, a prefix length
/// (IPv4 or IPv6; host bits allowed, they are ignored).
fn parse_cidr(text: &str, path: &str) -> Result<IpNetwork, FieldError> {
    let invalid = || {
        FieldError::new(
            path,
            text,
            "must be a valid CIDR (e.g. 10.0.0.0/8 or 2001:db8::/64)",
        )
    };
    let (addr, len) = text.split_once('/').ok_or_else(invalid)?;
    let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
    let len: u8 = match len.starts_with('+') {
        false => len.parse().map_err(|_| invalid())?,
        true => return Err(invalid()),
    };
    IpNetwork::new(addr, len)
        .map(normalize)
        .map_err(|_| invalid())
}

/// A container port of a pod (`containerPort` in a pod spec): what a
/// named port in a policy resolves to, per pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// What a pod contributes to policy: who it is (namespace, labels), where
/// (address, node), and its named ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPod {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// `None` before the pod has one (it can then be neither selected as
    /// a peer nor protected).
    pub address: Option<Ipv4Addr>,
    pub node: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

impl From<&crate::EndpointRecord> for PolicyPod {
    fn from(ep: &crate::EndpointRecord) -> PolicyPod {
        PolicyPod {
            namespace: ep.pod_namespace.clone(),
            name: ep.pod_name.clone(),
            labels: ep.labels.clone(),
            address: Some(ep.address),
            node: ep.node.clone(),
            ports: ep.ports.clone(),
        }
    }
}

/// The numbers a named port has on a pod for `protocol` (a name whose
/// protocol differs resolves to nothing).
pub fn resolve_named_port<'a>(
    ports: &'a [ContainerPort],
    name: &'a str,
    protocol: &'a Protocol,
) -> impl Iterator<Item = u16> + 'a {
    ports
        .iter()
        .filter(move |p| p.name.as_deref() == Some(name) && &p.protocol == protocol)
        .map(|p| p.container_port)
}

/// Labels as a map, for callers that build pods by hand.
pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ports_read_as_in_a_pod_spec_and_resolve_by_protocol() {
        let ports: Vec<ContainerPort> = serde_json::from_str(
            r#"[{"name":"http","containerPort":8080},
                {"name":"dns","containerPort":53,"protocol":"UDP"},
                {"name":"dns","containerPort":5353,"protocol":"TCP"},
                {"containerPort":9}]"#,
        )
        .unwrap();
        assert_eq!(ports[0].protocol, Protocol::Tcp, "TCP when absent");
        let resolve =
            |name, protocol| resolve_named_port(&ports, name, &protocol).collect::<Vec<_>>();
        assert_eq!(resolve("http", Protocol::Tcp), [8080]);
        assert_eq!(resolve("http", Protocol::Udp), [0u16; 0]);
        assert_eq!(resolve("dns", Protocol::Udp), [53]);
        assert_eq!(resolve("dns", Protocol::Tcp), [5353]);
        assert_eq!(resolve("dns", Protocol::Sctp), [0u16; 0]);
    }

    #[test]
    fn container_ports_are_checked_as_the_api_server_checks_a_pod() {
        let port = |name: Option<&str>, number, protocol: &str| ContainerPort {
            name: name.map(Into::into),
            container_port: number,
            protocol: protocol.to_string().into(),
        };
        assert!(
            validate_container_ports(&[
                port(Some("http"), 8080, "TCP"),
                port(None, 53, "UDP"),
                port(None, 53, "SCTP"),
            ])
            .is_ok()
        );
        let refused = |ports: &[ContainerPort]| validate_container_ports(ports).unwrap_err();
        assert_eq!(
            refused(&[port(None, 0, "TCP")]).path,
            "ports[0].containerPort"
        );
        let e = refused(&[port(None, 80, "TCP"), port(None, 81, "tcp")]);
        assert_eq!(
            (e.path.as_str(), e.value.as_str()),
            ("ports[1].protocol", "tcp")
        );
        assert_eq!(
            refused(&[port(Some("Web"), 80, "TCP")]).path,
            "ports[0].name"
        );
        let e = refused(&[port(Some("web"), 80, "TCP"), port(Some("web"), 81, "UDP")]);
        assert_eq!(e.path, "ports[1].name");
        assert!(e.to_string().contains("duplicate"), "{e}");
    }

    #[test]
    fn port_names_follow_iana_service_names() {
        for ok in ["http", "dns-tcp", "h2c", "a1", "x23456789012345"] {
            assert!(is_port_name(ok), "{ok}");
        }
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "x234567890123456",
            "a_b",
        ] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }
}
