//! A NetworkPolicy case: namespaces, pods, policies and probes in one JSON
//! document, the input both policy runners take (`weftctl policy simulate`
//! on the twin, `weftctl lab netpol` on a kernel lab), and their common
//! answer. One format, so that any case runs against both and the answers
//! can be compared line by line.
//!
//! ```json
//! {"namespaces": {"x": {"labels": {"ns": "x"}}},
//!  "pods": [{"namespace": "x", "name": "a", "labels": {"pod": "a"},
//!            "ip": "10.244.1.10",
//!            "ports": [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}]}],
//!  "policies": [ NetworkPolicy objects, as the API server returns them ],
//!  "probes": [{"from": "x/a", "to": "x/a", "port": 80, "protocol": "TCP"}]}
//! ```
//!
//! Pods whose addresses share a /24 are on one node. A probe may carry
//! `"expected": true|false` (what upstream's reachability matrix says);
//! the runners ignore it, the tests compare it with the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::manifest::FieldError;
use crate::namespace::Namespace;
use crate::policy::{ContainerPort, NetworkPolicy, PolicyPod, Protocol};
use crate::selector::Labels;

/// The prefix length that groups a case's pods into nodes.
pub const NODE_PREFIX: u8 = 24;

/// One case, as read from its file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCase {
    /// Namespace objects by name; a namespace only pods name exists too,
    /// with just its name label.
    #[serde(default)]
    pub namespaces: BTreeMap<String, CaseNamespace>,
    pub pods: Vec<CasePod>,
    #[serde(default)]
    pub policies: Vec<NetworkPolicy>,
    #[serde(default)]
    pub probes: Vec<Probe>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseNamespace {
    #[serde(default)]
    pub labels: Labels,
}

/// A pod of a case; it runs a server on each of its `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasePod {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

impl CasePod {
    /// `namespace/name`, how probes name the pod.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The /24 its address is in: its node.
    pub fn node_subnet(&self) -> Ipv4Network {
        let host = Ipv4Network::new(self.ip, NODE_PREFIX).expect("24 is a valid prefix length");
        Ipv4Network::new(host.network(), NODE_PREFIX).expect("24 is a valid prefix length")
    }
}

/// One connection attempt: `from` opens it to `to` on `port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// `namespace/name` of the client pod.
    pub from: String,
    /// `namespace/name` of the server pod.
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    /// What the case expects; the runners ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<bool>,
}

/// A runner's answer to one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
}

impl ProbeResult {
    pub fn of(probe: &Probe, allowed: bool) -> ProbeResult {
        ProbeResult {
            from: probe.from.clone(),
            to: probe.to.clone(),
            port: probe.port,
            protocol: probe.protocol.clone(),
            allowed,
        }
    }
}

/// What both runners print with `--json`: one result per probe, in the
/// probes' order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseResults {
    pub results: Vec<ProbeResult>,
}

/// Why a case file is refused: the field's path in the document and why.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("not a policy case: {0}")]
    Parse(serde_norway::Error),
    #[error("{0}")]
    Invalid(FieldError),
}

impl From<FieldError> for CaseError {
    fn from(e: FieldError) -> CaseError {
        CaseError::Invalid(e)
    }
}

/// Reads and checks a case (JSON; YAML is accepted too): every policy
/// passes the API server's checks, pods are unique by name and address,
/// probes name existing pods and a known protocol.
pub fn parse_case(text: &str) -> Result<PolicyCase, CaseError> {
    let case: PolicyCase = serde_norway::from_str(text).map_err(CaseError::Parse)?;
    case.validate()?;
    Ok(case)
}

impl PolicyCase {
    /// The checks of [`parse_case`].
    pub fn validate(&self) -> Result<(), FieldError> {
        for (name, ns) in &self.namespaces {
            Namespace::new(name, ns.labels.clone())
                .validate()
                .map_err(|e| e.within(&format!("namespaces.{name}")))?;
        }
        let mut names = BTreeSet::new();
        let mut addresses = BTreeMap::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let at = format!("pods[{i}]");
            if !crate::manifest::is_dns_label(&pod.namespace) {
                return Err(FieldError::new(
                    format!("{at}.namespace"),
                    &pod.namespace,
                    "must be a DNS-1123 label",
                ));
            }
            if !crate::bgp_peer::is_dns_subdomain(&pod.name) {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    &pod.name,
                    "must be a DNS-1123 subdomain",
                ));
            }
            if !names.insert(pod.id()) {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    pod.id(),
                    "names a pod twice",
                ));
            }
            if let Some(first) = addresses.insert(pod.ip, i) {
                return Err(FieldError::new(
                    format!("{at}.ip"),
                    pod.ip.to_string(),
                    &format!("is pods[{first}]'s address too"),
                ));
            }
            for (j, port) in pod.ports.iter().enumerate() {
                if port.protocol.number().is_none() {
                    return Err(FieldError::new(
                        format!("{at}.ports[{j}].protocol"),
                        port.protocol.name(),
                        "must be TCP, UDP or SCTP",
                    ));
                }
                if port.container_port == 0 {
                    return Err(FieldError::new(
                        format!("{at}.ports[{j}].containerPort"),
                        "0",
                        "must be between 1 and 65535",
                    ));
                }
            }
        }
        for (i, policy) in self.policies.iter().enumerate() {
            policy
                .validate()
                .map_err(|e| e.within(&format!("policies[{i}]")))?;
        }
        for (i, probe) in self.probes.iter().enumerate() {
            let at = format!("probes[{i}]");
            for (field, pod) in [("from", &probe.from), ("to", &probe.to)] {
                if !names.contains(pod) {
                    return Err(FieldError::new(
                        format!("{at}.{field}"),
                        pod,
                        "names no pod of the case (namespace/name)",
                    ));
                }
            }
            if probe.protocol.number().is_none() {
                return Err(FieldError::new(
                    format!("{at}.protocol"),
                    probe.protocol.name(),
                    "must be TCP, UDP or SCTP",
                ));
            }
            if probe.port == 0 {
                return Err(FieldError::new(
                    format!("{at}.port"),
                    "0",
                    "must be between 1 and 65535",
                ));
            }
        }
        Ok(())
    }

    /// The probes whose answer in `results` differs from their
    /// `expected`, with that answer.
    pub fn mismatches<'a>(&'a self, results: &'a CaseResults) -> Vec<(&'a Probe, &'a ProbeResult)> {
        self.probes
            .iter()
            .zip(&results.results)
            .filter(|(p, r)| p.expected.is_some_and(|e| e != r.allowed))
            .collect()
    }

    /// Both runners' answer as a table, one line per probe, with the
    /// probe's `expected` beside the verdict when the case has one and a
    /// mark where they differ, then a count.
    pub fn render(&self, results: &CaseResults) -> String {
        let with_expected = self.probes.iter().any(|p| p.expected.is_some());
        let width = |f: fn(&ProbeResult) -> usize| results.results.iter().map(f).max().unwrap_or(0);
        let (from_w, to_w) = (width(|r| r.from.len()).max(4), width(|r| r.to.len()).max(2));
        let mut out = format!(
            "{:from_w$}  {:to_w$}  {:11}  {:7}",
            "FROM", "TO", "PORT", "VERDICT"
        );
        if with_expected {
            out.push_str("  EXPECTED");
        }
        out.push('\n');
        let verdict = |allowed: bool| if allowed { "allowed" } else { "denied" };
        for (result, probe) in results.results.iter().zip(&self.probes) {
            let port = format!("{}/{}", result.port, result.protocol.name());
            let mut line = format!(
                "{:from_w$}  {:to_w$}  {port:11}  {:7}",
                result.from,
                result.to,
                verdict(result.allowed)
            );
            if let Some(expected) = probe.expected {
                let mark = if expected == result.allowed {
                    ""
                } else {
                    "  <- differs"
                };
                line.push_str(&format!("  {:8}{mark}", verdict(expected)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let allowed = results.results.iter().filter(|r| r.allowed).count();
        out.push_str(&format!(
            "{} probes: {allowed} allowed, {} denied",
            results.results.len(),
            results.results.len() - allowed
        ));
        if with_expected {
            out.push_str(&format!(
                "; {} differ from expected",
                self.mismatches(results).len()
            ));
        }
        out.push('\n');
        out
    }

    /// The pod named `namespace/name`.
    pub fn pod(&self, id: &str) -> Option<&CasePod> {
        self.pods.iter().find(|p| p.id() == id)
    }

    /// The nodes: each /24 with its pods, in address order.
    pub fn nodes(&self) -> BTreeMap<Ipv4Network, Vec<&CasePod>> {
        let mut nodes: BTreeMap<Ipv4Network, Vec<&CasePod>> = BTreeMap::new();
        for pod in &self.pods {
            nodes.entry(pod.node_subnet()).or_default().push(pod);
        }
        for pods in nodes.values_mut() {
            pods.sort_by_key(|p| p.ip);
        }
        nodes
    }

    /// The Namespace objects, name label included.
    pub fn namespace_objects(&self) -> Vec<Namespace> {
        self.namespaces
            .iter()
            .map(|(name, ns)| Namespace::new(name, ns.labels.clone()))
            .collect()
    }

    /// The pods as policy sees them, each on the node `node_of` names
    /// for its /24, at `address_of` (the case's `ip` for the twin, the
    /// lab's own address on a kernel).
    pub fn policy_pods(
        &self,
        node_of: impl Fn(Ipv4Network) -> String,
        address_of: impl Fn(&CasePod) -> Option<Ipv4Addr>,
    ) -> Vec<PolicyPod> {
        self.pods
            .iter()
            .map(|pod| PolicyPod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                labels: pod.labels.clone(),
                address: address_of(pod),
                node: node_of(pod.node_subnet()),
                ports: pod.ports.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASE: &str = r#"{
      "namespaces": {"x": {"labels": {"ns": "x"}}},
      "pods": [
        {"namespace": "x", "name": "a", "labels": {"pod": "a"}, "ip": "10.244.1.10",
         "ports": [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}]},
        {"namespace": "y", "name": "b", "ip": "10.244.2.10"},
        {"namespace": "y", "name": "c", "ip": "10.244.2.11"}
      ],
      "policies": [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "x", "uid": "u", "resourceVersion": "7"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}],
      "probes": [{"from": "y/b", "to": "x/a", "port": 80, "protocol": "TCP", "expected": false}]
    }"#;

    #[test]
    fn reads_a_case_and_groups_nodes_by_24() {
        let case = parse_case(CASE).unwrap();
        let nodes = case.nodes();
        assert_eq!(nodes.len(), 2);
        let second: Ipv4Network = "10.244.2.0/24".parse().unwrap();
        assert_eq!(nodes[&second].len(), 2);
        assert_eq!(case.probes[0].expected, Some(false));
        assert_eq!(case.policies[0].namespace(), "x");
    }

    #[test]
    fn refuses_with_the_field_path() {
        let bad_probe = CASE.replace(r#""to": "x/a""#, r#""to": "x/zz""#);
        let e = parse_case(&bad_probe).unwrap_err().to_string();
        assert!(e.contains("probes[0].to"), "{e}");
        let bad_proto = CASE.replace(
            r#""protocol": "TCP", "expected""#,
            r#""protocol": "ICMP", "expected""#,
        );
        let e = parse_case(&bad_proto).unwrap_err().to_string();
        assert!(e.contains("probes[0].protocol"), "{e}");
        let twice = CASE.replace("10.244.2.11", "10.244.2.10");
        let e = parse_case(&twice).unwrap_err().to_string();
        assert!(e.contains("pods[2].ip"), "{e}");
        let bad_policy = CASE.replace(
            r#""policyTypes": ["Ingress"]"#,
            r#""policyTypes": ["Sideways"]"#,
        );
        let e = parse_case(&bad_policy).unwrap_err().to_string();
        assert!(e.contains("policies[0].spec.policyTypes"), "{e}");
    }
}
