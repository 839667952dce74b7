//! Manifest files for the kinds policy reads (NetworkPolicy, Namespace):
//! parsed and checked whole, as [`crate::bgp_peer`] does for BGPPeer, so
//! one bad document refuses the file and nothing half-applied reaches the
//! datastore. Errors carry the document number and the field's path in
//! the API server's notation (`spec.ingress[0].from[1].ipBlock.except[0]`).
//! [`parse_store_manifests`] reads a file mixing these with BGPPeers, as
//! `weftctl lab apply` takes it, in the same one pass.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bgp_peer::{self, BgpPeer, is_dns_subdomain};
use crate::namespace::{self, Namespace};
use crate::policy::{self, NetworkPolicy};
use crate::selector::{Labels, check_label_key, check_label_value};

/// `metav1.ObjectMeta`, the fields Weft reads; the server-set ones (uid,
/// resourceVersion, generation, creationTimestamp, managedFields, ...) are
/// accepted and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    pub(crate) fn validate_namespaced(&self) -> Result<(), FieldError> {
        if !is_dns_subdomain(&self.name) {
            return Err(FieldError::new(
                "metadata.name",
                &self.name,
                "must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.'; at most 253)",
            ));
        }
        if !is_dns_label(self.namespace_or_default()) {
            return Err(FieldError::new(
                "metadata.namespace",
                self.namespace_or_default(),
                "must be a DNS-1123 label (lowercase letters, digits, '-'; at most 63)",
            ));
        }
        self.validate_labels()
    }

    pub(crate) fn validate_cluster_scoped(&self) -> Result<(), FieldError> {
        if !is_dns_label(&self.name) {
            return Err(FieldError::new(
                "metadata.name",
                &self.name,
                "must be a DNS-1123 label (lowercase letters, digits, '-'; at most 63)",
            ));
        }
        self.validate_labels()
    }

    fn validate_labels(&self) -> Result<(), FieldError> {
        for (k, v) in &self.labels {
            check_label_key(k, "metadata.labels")?;
            check_label_value(v, &format!("metadata.labels.{k}"))?;
        }
        Ok(())
    }
}

/// Kubernetes' rule for namespace names (RFC 1123 label).
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

/// One field refused, in the API server's terms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: invalid value {value:?}: {reason}")]
pub struct FieldError {
    pub path: String,
    pub value: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, value: impl Into<String>, reason: &str) -> FieldError {
        FieldError {
            path: path.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// The same error with its path inside `parent` (`parent.path`), for
    /// an object checked inside a larger document.
    pub fn within(self, parent: &str) -> FieldError {
        FieldError {
            path: format!("{parent}.{}", self.path),
            ..self
        }
    }
}

/// One object of a policy manifest file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyManifest {
    NetworkPolicy(NetworkPolicy),
    Namespace(Namespace),
}

/// Why a policy manifest file is refused, naming the document (from 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyManifestError {
    #[error("document {doc}: {source}")]
    Parse {
        doc: usize,
        source: serde_norway::Error,
    },
    #[error(transparent)]
    Kind(KindError),
    #[error("document {doc} ({kind} {name}): {error}")]
    Invalid {
        doc: usize,
        kind: &'static str,
        name: String,
        error: FieldError,
    },
    #[error("{kind} {name:?} is defined twice (documents {first} and {second})")]
    Duplicate {
        kind: &'static str,
        name: String,
        first: usize,
        second: usize,
    },
    #[error("no NetworkPolicy or Namespace in the input")]
    Empty,
}

/// A document of a kind its file may not hold.
#[derive(Debug, thiserror::Error)]
#[error(
    "document {doc}: {api_version}/{kind} is not a kind {} ({})",
    self.reader,
    self.expected.iter().map(|(v, k)| format!("{v}/{k}")).collect::<Vec<_>>().join(", ")
)]
pub struct KindError {
    pub doc: usize,
    pub api_version: String,
    pub kind: String,
    /// Who refuses it, e.g. "this file may hold".
    reader: &'static str,
    /// The kinds it takes, as (apiVersion, kind).
    expected: &'static [(&'static str, &'static str)],
}

const POLICY_KINDS: &[(&str, &str)] = &[
    (policy::API_VERSION, policy::KIND),
    (namespace::API_VERSION, namespace::KIND),
];

const STORE_KINDS: &[(&str, &str)] = &[
    (bgp_peer::API_VERSION, bgp_peer::KIND),
    (policy::API_VERSION, policy::KIND),
    (namespace::API_VERSION, namespace::KIND),
];

/// What a file's reader does with the errors of the shared loop.
pub(crate) trait FileErrors: Sized {
    fn parse(doc: usize, source: serde_norway::Error) -> Self;
    /// `name` (of its kind) in documents `first` and `second`.
    fn duplicate(kind: &'static str, name: String, first: usize, second: usize) -> Self;
    fn empty() -> Self;
}

/// The all-or-nothing loop every manifest file goes through: the
/// documents of a YAML stream (JSON is YAML too), numbered from 1, empty
/// ones (a trailing `---`) skipped, each turned by `read` into a checked
/// object and its (kind, name); the first error, a name defined twice or
/// a file without objects refuses the whole file.
pub(crate) fn read_file<T, E: FileErrors>(
    text: &str,
    mut read: impl FnMut(usize, serde_norway::Value) -> Result<(T, &'static str, String), E>,
) -> Result<Vec<T>, E> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = serde_norway::Value::deserialize(document).map_err(|e| E::parse(doc, e))?;
        if value.is_null() {
            continue;
        }
        let (object, kind, name) = read(doc, value)?;
        if let Some(first) = seen.insert((kind, name.clone()), doc) {
            return Err(E::duplicate(kind, name, first, doc));
        }
        out.push(object);
    }
    if out.is_empty() {
        return Err(E::empty());
    }
    Ok(out)
}

impl FileErrors for PolicyManifestError {
    fn parse(doc: usize, source: serde_norway::Error) -> Self {
        PolicyManifestError::Parse { doc, source }
    }
    fn duplicate(kind: &'static str, name: String, first: usize, second: usize) -> Self {
        PolicyManifestError::Duplicate {
            kind,
            name,
            first,
            second,
        }
    }
    fn empty() -> Self {
        PolicyManifestError::Empty
    }
}

/// Parses and checks a file of NetworkPolicy and Namespace manifests. All
/// or nothing: the first refused document refuses the file.
pub fn parse_policy_manifests(text: &str) -> Result<Vec<PolicyManifest>, PolicyManifestError> {
    read_file(text, read_policy_document)
}

/// One document of a policy manifest file, parsed and checked, with its
/// kind and name (`namespace/name` for a policy).
fn read_policy_document(
    doc: usize,
    value: serde_norway::Value,
) -> Result<(PolicyManifest, &'static str, String), PolicyManifestError> {
    let (api_version, kind) = type_of(&value);
    let parse = |source| PolicyManifestError::Parse { doc, source };
    let (manifest, kind, name, checked) = match (api_version.as_str(), kind.as_str()) {
        (policy::API_VERSION, policy::KIND) => {
            let p: NetworkPolicy = serde_norway::from_value(value).map_err(parse)?;
            let name = format!("{}/{}", p.namespace(), p.name());
            let checked = p.validate();
            let manifest = PolicyManifest::NetworkPolicy(p);
            (manifest, policy::KIND, name, checked)
        }
        (namespace::API_VERSION, namespace::KIND) => {
            let n: Namespace = serde_norway::from_value(value).map_err(parse)?;
            let name = n.name().to_string();
            let checked = n.validate();
            (PolicyManifest::Namespace(n), namespace::KIND, name, checked)
        }
        _ => {
            return Err(PolicyManifestError::Kind(KindError {
                doc,
                api_version,
                kind,
                reader: "this file may hold",
                expected: POLICY_KINDS,
            }));
        }
    };
    checked.map_err(|error| PolicyManifestError::Invalid {
        doc,
        kind,
        name: name.clone(),
        error,
    })?;
    Ok((manifest, kind, name))
}

/// A document's `apiVersion` and `kind` (empty when missing).
fn type_of(value: &serde_norway::Value) -> (String, String) {
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
    (field("apiVersion").to_string(), field("kind").to_string())
}

/// One object of a file the local datastore takes (`weftctl lab apply`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreManifest {
    BgpPeer(BgpPeer),
    Policy(PolicyManifest),
}

/// Why a file of datastore objects is refused, naming the document (from 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreManifestError {
    #[error(transparent)]
    BgpPeer(#[from] bgp_peer::ManifestError),
    #[error(transparent)]
    Policy(#[from] PolicyManifestError),
    #[error(transparent)]
    Kind(KindError),
    #[error("no BGPPeer, NetworkPolicy or Namespace in the input")]
    Empty,
}

impl FileErrors for StoreManifestError {
    fn parse(doc: usize, source: serde_norway::Error) -> Self {
        PolicyManifestError::Parse { doc, source }.into()
    }
    fn duplicate(kind: &'static str, name: String, first: usize, second: usize) -> Self {
        PolicyManifestError::duplicate(kind, name, first, second).into()
    }
    fn empty() -> Self {
        StoreManifestError::Empty
    }
}

/// Parses and checks a file of BGPPeer, NetworkPolicy and Namespace
/// manifests, mixed in any order, with each kind's own checks. All or
/// nothing, as for one kind.
pub fn parse_store_manifests(text: &str) -> Result<Vec<StoreManifest>, StoreManifestError> {
    read_file(text, |doc, value| {
        let (api_version, kind) = type_of(&value);
        if (api_version.as_str(), kind.as_str()) == (bgp_peer::API_VERSION, bgp_peer::KIND) {
            let peer: BgpPeer = serde_norway::from_value(value)
                .map_err(|source| bgp_peer::ManifestError::Parse { doc, source })?;
            peer.validate(doc)?;
            let name = peer.metadata.name.clone();
            return Ok((StoreManifest::BgpPeer(peer), bgp_peer::KIND, name));
        }
        match read_policy_document(doc, value) {
            Ok((manifest, kind, name)) => Ok((StoreManifest::Policy(manifest), kind, name)),
            Err(PolicyManifestError::Kind(e)) => Err(StoreManifestError::Kind(KindError {
                reader: "the datastore takes",
                expected: STORE_KINDS,
                ..e
            })),
            Err(e) => Err(e.into()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyType, PortRef, Protocol};

    const FILE: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels:
    team: a
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: prod
  uid: 6c1f1c1e-0000-4000-8000-000000000001
  resourceVersion: \"42\"
  generation: 3
  creationTimestamp: \"2026-01-01T00:00:00Z\"
  managedFields:
  - manager: kubectl
    operation: Update
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - podSelector: {}
      namespaceSelector:
        matchExpressions:
        - {key: team, operator: In, values: [a, b]}
    - ipBlock:
        cidr: 10.0.0.0/8
        except:
        - 10.1.0.0/16
    ports:
    - port: 80
      endPort: 90
    - protocol: UDP
      port: dns
  egress:
  - to:
    - namespaceSelector: {}
  policyTypes: [Ingress, Egress]
status: {}
";

    fn refused(from: &str, to: &str) -> String {
        let text = FILE.replacen(from, to, 1);
        assert_ne!(text, FILE, "{from:?} is in the file");
        parse_policy_manifests(&text).unwrap_err().to_string()
    }

    #[test]
    fn a_file_of_namespaces_and_policies_parses_with_server_fields_ignored() {
        let objects = parse_policy_manifests(FILE).unwrap();
        let PolicyManifest::Namespace(ns) = &objects[0] else {
            panic!("{objects:?}")
        };
        assert_eq!(ns.labels()["kubernetes.io/metadata.name"], "prod");
        assert_eq!(ns.labels()["team"], "a");
        let PolicyManifest::NetworkPolicy(p) = &objects[1] else {
            panic!("{objects:?}")
        };
        assert_eq!((p.namespace(), p.name()), ("prod", "web"));
        let rule = &p.spec.ingress[0];
        assert_eq!(rule.from.len(), 2);
        assert_eq!(rule.ports[0].port, Some(PortRef::Number(80)));
        assert_eq!(rule.ports[0].end_port, Some(90));
        assert_eq!(rule.ports[1].protocol, Some(Protocol::Udp));
        assert_eq!(rule.ports[1].port, Some(PortRef::Name("dns".into())));
        assert_eq!(
            p.spec.policy_types,
            Some(vec![PolicyType::Ingress, PolicyType::Egress])
        );
        // The same object as JSON, as the API server returns it.
        let json = serde_json::to_string(p).unwrap();
        assert!(json.contains("\"podSelector\"") && json.contains("\"endPort\":90"));
        assert_eq!(parse_policy_manifests(&json).unwrap()[0], objects[1]);
    }

    #[test]
    fn a_policy_without_namespace_is_in_default_and_types_default() {
        let p = parse_policy_manifests(
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"x"},"spec":{"egress":[{}]}}"#,
        )
        .unwrap();
        let PolicyManifest::NetworkPolicy(p) = &p[0] else {
            panic!()
        };
        assert_eq!(p.namespace(), "default");
        assert_eq!(p.spec.policy_types(), (true, true));
        let mut ingress_only = p.clone();
        ingress_only.spec.egress.clear();
        assert_eq!(ingress_only.spec.policy_types(), (true, false));
        ingress_only.spec.policy_types = Some(vec![PolicyType::Egress]);
        assert_eq!(ingress_only.spec.policy_types(), (false, true));
    }

    #[test]
    fn every_invalid_field_is_refused_with_document_and_path() {
        let cases = [
            (
                "cidr: 10.0.0.0/8",
                "cidr: 10.0.0.0/33",
                "spec.ingress[0].from[1].ipBlock.cidr",
            ),
            (
                "cidr: 10.0.0.0/8",
                "cidr: 10.0.0.300/8",
                "spec.ingress[0].from[1].ipBlock.cidr",
            ),
            (
                "- 10.1.0.0/16",
                "- 11.1.0.0/16",
                "spec.ingress[0].from[1].ipBlock.except[0]: invalid value \"11.1.0.0/16\": must be a strict subset",
            ),
            ("- 10.1.0.0/16", "- 10.0.0.0/8", "ipBlock.except[0]"),
            ("- 10.1.0.0/16", "- nonsense", "ipBlock.except[0]"),
            ("port: 80", "port: 0", "spec.ingress[0].ports[0].port"),
            ("port: 80", "port: 65536", "spec.ingress[0].ports[0].port"),
            (
                "endPort: 90",
                "endPort: 79",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "endPort: 90",
                "endPort: 70000",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "port: dns",
                "port: dns\n      endPort: 90",
                "spec.ingress[0].ports[1].endPort",
            ),
            (
                "- port: 80\n      endPort: 90",
                "- endPort: 90",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "port: dns",
                "port: Not_A_Name",
                "spec.ingress[0].ports[1].port",
            ),
            ("port: dns", "port: \"80\"", "spec.ingress[0].ports[1].port"),
            (
                "protocol: UDP",
                "protocol: ICMP",
                "spec.ingress[0].ports[1].protocol",
            ),
            (
                "protocol: UDP",
                "protocol: udp",
                "spec.ingress[0].ports[1].protocol",
            ),
            (
                "operator: In",
                "operator: Is",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator",
            ),
            (
                "values: [a, b]",
                "values: []",
                "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
            ),
            ("app: web", "app: w e b", "spec.podSelector.matchLabels.app"),
            (
                "[Ingress, Egress]",
                "[Ingress, Sideways]",
                "spec.policyTypes[1]",
            ),
            (
                "[Ingress, Egress]",
                "[Ingress, Egress, Ingress]",
                "spec.policyTypes",
            ),
            (
                "    - namespaceSelector: {}",
                "    - namespaceSelector: {}\n      ipBlock: {cidr: 1.2.3.0/24}",
                "spec.egress[0].to[0]: invalid value \"\": may not specify both",
            ),
            (
                "    - namespaceSelector: {}",
                "    - {}",
                "spec.egress[0].to[0]: invalid value \"{}\": must specify a peer",
            ),
            ("name: web", "name: Web", "metadata.name"),
            ("namespace: prod", "namespace: a.b", "metadata.namespace"),
        ];
        for (from, to, expected) in cases {
            let msg = refused(from, to);
            assert!(
                msg.starts_with("document 2 (NetworkPolicy prod/web")
                    || to.contains("Web")
                    || to.contains("a.b"),
                "{msg}"
            );
            assert!(msg.contains(expected), "{to:?}: {msg}");
        }
        assert!(
            refused("team: a", "team: a b")
                .contains("document 1 (Namespace prod): metadata.labels.team")
        );
        assert!(
            refused(
                "podSelector:\n    matchLabels",
                "podSelecter:\n    matchLabels"
            )
            .contains("unknown field")
        );
        assert!(
            refused("kind: Namespace", "kind: Pod").contains("document 1: v1/Pod is not a kind")
        );
        assert!(
            refused("name: web", "name: prod\n  namespace: prod\n  x: y").contains("document 2")
        );
        assert!(matches!(
            parse_policy_manifests("---\n"),
            Err(PolicyManifestError::Empty)
        ));
        let twice = format!(
            "{FILE}---\n{}",
            &FILE[FILE.find("apiVersion: networking").unwrap()..]
        );
        assert!(
            parse_policy_manifests(&twice)
                .unwrap_err()
                .to_string()
                .contains("defined twice (documents 2 and 3)")
        );
    }

    #[test]
    fn a_store_file_mixes_bgp_peers_with_policy_objects_all_or_nothing() {
        let peer = "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 198.18.0.200, asNumber: 64600}\n";
        let objects = parse_store_manifests(&format!("{peer}---\n{FILE}")).unwrap();
        assert!(matches!(&objects[0], StoreManifest::BgpPeer(p) if p.metadata.name == "tor"));
        assert!(matches!(
            &objects[1],
            StoreManifest::Policy(PolicyManifest::Namespace(_))
        ));
        assert!(matches!(
            &objects[2],
            StoreManifest::Policy(PolicyManifest::NetworkPolicy(_))
        ));
        let refused = |text: &str| parse_store_manifests(text).unwrap_err().to_string();
        // Each kind's own checks, numbered in the whole file.
        let bad_port = FILE.replacen("port: 80", "port: 0", 1);
        assert!(
            refused(&format!("{peer}---\n{bad_port}"))
                .starts_with("document 3 (NetworkPolicy prod/web): spec.ingress[0].ports[0].port")
        );
        let bad_peer = peer.replace("64600", "0");
        assert!(
            refused(&format!("{FILE}---\n{bad_peer}"))
                .starts_with("document 3 (tor): spec.asNumber")
        );
        assert!(
            refused(&FILE.replacen("kind: Namespace", "kind: Pod", 1))
                .contains("document 1: v1/Pod is not a kind the datastore takes")
        );
        assert!(
            refused(&format!("{peer}---\n{peer}")).contains("BGPPeer \"tor\" is defined twice")
        );
        assert_eq!(
            refused("---\n"),
            "no BGPPeer, NetworkPolicy or Namespace in the input"
        );
    }

    #[test]
    fn ipv6_blocks_are_valid_api_objects() {
        let text = FILE
            .replacen("cidr: 10.0.0.0/8", "cidr: 2001:db8::/32", 1)
            .replacen("- 10.1.0.0/16", "- 2001:db8:1::/48", 1);
        assert!(parse_policy_manifests(&text).is_ok());
    }
}
