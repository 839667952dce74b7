//! The cluster objects of a lab's datastore that an operator writes:
//! BGPPeers, NetworkPolicies and Namespaces (`lab apply`, `lab delete`),
//! and the labels of pods and namespaces (`lab label`), kubectl-style.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_datastore::Datastore;
use weft_model::bgp_peer::is_dns_subdomain;
use weft_model::manifest::{PolicyManifest, StoreManifest, is_dns_label, parse_store_manifests};
use weft_model::namespace::{self, NAME_LABEL, Namespace};
use weft_model::selector::{check_label_key, check_label_value};

use crate::state::{LabState, Pod};

/// How long `lab label pod` waits for the pod's agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A kind `lab delete` removes, named as kubectl names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Bgppeer,
    Networkpolicy,
    Namespace,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bgppeer => "bgppeer",
            Kind::Networkpolicy => "networkpolicy",
            Kind::Namespace => "namespace",
        }
    }
}

fn store(state: &LabState) -> Result<Datastore> {
    Ok(Datastore::open(&state.datastore_dir())?)
}

/// Writes a file of BGPPeer, NetworkPolicy and Namespace manifests into
/// the lab's datastore, all or nothing (the whole file is checked first);
/// returns what was written as `kind/name` (`networkpolicy/NS/NAME`). In a
/// Kubernetes lab the checked file goes to the API server with `kubectl
/// apply`, as an operator would apply it.
pub fn apply(state: &LabState, text: &str) -> Result<Vec<String>> {
    let objects = parse_store_manifests(text)?;
    if state.kubernetes.is_some() {
        crate::kubernetes::apply(state, text)?;
        return Ok(objects.iter().map(manifest_name).collect());
    }
    let store = store(state)?;
    let mut written = Vec::new();
    for object in &objects {
        match object {
            StoreManifest::BgpPeer(peer) => store.put_bgp_peer(peer)?,
            StoreManifest::Policy(PolicyManifest::NetworkPolicy(policy)) => {
                store.put_network_policy(policy)?
            }
            StoreManifest::Policy(PolicyManifest::Namespace(ns)) => {
                // Stored as the API server stores it: with its name label.
                let mut ns = ns.clone();
                ns.metadata.labels = ns.labels();
                store.put_namespace(&ns)?;
            }
        }
        written.push(manifest_name(object));
    }
    Ok(written)
}

/// An applied object as `apply` reports it: `kind/name`
/// (`networkpolicy/NS/NAME`).
fn manifest_name(object: &StoreManifest) -> String {
    match object {
        StoreManifest::BgpPeer(peer) => format!("bgppeer/{}", peer.metadata.name),
        StoreManifest::Policy(PolicyManifest::NetworkPolicy(policy)) => {
            format!("networkpolicy/{}/{}", policy.namespace(), policy.name())
        }
        StoreManifest::Policy(PolicyManifest::Namespace(ns)) => format!("namespace/{}", ns.name()),
    }
}

/// Removes an object from the lab's datastore; `false` if there was none.
/// A NetworkPolicy is named `NAMESPACE/NAME` (or `NAME`, in `default`).
pub fn delete(state: &LabState, kind: Kind, name: &str) -> Result<bool> {
    // Names become file names: only what the API server allows.
    let subdomain = |name: &str| {
        if !is_dns_subdomain(name) {
            bail!("{} name {name:?} must be a DNS-1123 subdomain", kind.name());
        }
        Ok(())
    };
    if state.kubernetes.is_some() {
        let (namespace, name) = match kind {
            Kind::Networkpolicy => {
                let (namespace, name) = name.split_once('/').unwrap_or(("default", name));
                check_namespace_name(namespace)?;
                (Some(namespace), name)
            }
            _ => (None, name),
        };
        match kind {
            Kind::Namespace => check_namespace_name(name)?,
            _ => subdomain(name)?,
        }
        return crate::kubernetes::delete(state, kind.name(), namespace, name);
    }
    let store = store(state)?;
    Ok(match kind {
        Kind::Bgppeer => {
            subdomain(name)?;
            store.delete_bgp_peer(name)?
        }
        Kind::Networkpolicy => {
            let (namespace, name) = name.split_once('/').unwrap_or(("default", name));
            check_namespace_name(namespace)?;
            subdomain(name)?;
            store.delete_network_policy(namespace, name)?
        }
        Kind::Namespace => {
            check_namespace_name(name)?;
            store.delete_namespace(name)?
        }
    })
}

/// Kubernetes' rule for namespace names.
pub(crate) fn check_namespace_name(name: &str) -> Result<()> {
    if !is_dns_label(name) {
        bail!(
            "namespace {name:?} must be a DNS-1123 label (lowercase letters, digits, '-'; at most 63)"
        );
    }
    Ok(())
}

/// One edit of `lab label`: `key=value` sets, `key-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

/// Parses kubectl-style label edits, checking keys and values as the API
/// server checks `metadata.labels`.
pub fn parse_label_changes(args: &[String]) -> Result<Vec<LabelChange>> {
    if args.is_empty() {
        bail!("no label changes given (key=value sets a label, key- removes one)");
    }
    args.iter()
        .map(|arg| {
            let change = match arg.split_once('=') {
                Some((key, value)) => {
                    check_label_value(value, &format!("labels.{key}"))?;
                    LabelChange::Set(key.into(), value.into())
                }
                None => match arg.strip_suffix('-') {
                    Some(key) => LabelChange::Remove(key.into()),
                    None => bail!("label change {arg:?} is neither key=value nor key-"),
                },
            };
            let (LabelChange::Set(key, _) | LabelChange::Remove(key)) = &change;
            check_label_key(key, "labels")?;
            Ok(change)
        })
        .collect()
}

/// `changes` as `kubectl label` takes them.
fn kubectl_changes(changes: &[LabelChange]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            LabelChange::Set(k, v) => format!("{k}={v}"),
            LabelChange::Remove(k) => format!("{k}-"),
        })
        .collect()
}

/// `labels` with `changes` applied in order.
pub fn relabel(
    labels: &BTreeMap<String, String>,
    changes: &[LabelChange],
) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    for change in changes {
        match change {
            LabelChange::Set(k, v) => out.insert(k.clone(), v.clone()),
            LabelChange::Remove(k) => out.remove(k),
        };
    }
    out
}

/// Changes a pod's labels: the node's agent rewrites the endpoint's
/// record (and so republishes it), then the lab records them.
pub fn label_pod(state: &mut LabState, name: &str, changes: &[LabelChange]) -> Result<Pod> {
    let pod = state.pod(name)?.clone();
    let socket = state.node(&pod.node)?.socket.clone();
    let mut labels = relabel(&pod.labels, changes);
    if state.kubernetes.is_some() {
        // The Pod object's labels, which its agent watches.
        crate::kubernetes::label(
            state,
            "pod",
            Some(&pod.namespace),
            name,
            &kubectl_changes(changes),
        )
        .map(|now| labels = now)
    } else {
        crate::agent_api::block_on(crate::agent_api::update_endpoint_labels(
            &socket,
            AGENT_TIMEOUT,
            &pod.container_id,
            &pod.ifname,
            &labels,
        ))
        .map(|_| ())
    }
    .with_context(|| format!("relabelling pod {}/{name}", pod.namespace))?;
    let recorded = state
        .pods
        .iter_mut()
        .find(|p| p.name == name)
        .expect("found above");
    recorded.labels = labels;
    let pod = recorded.clone();
    state.save()?;
    Ok(pod)
}

/// Changes a namespace's labels: its Namespace object in the datastore,
/// created if the namespace so far existed only through its pods. The
/// name label stays what the API server makes it.
pub fn label_namespace(state: &LabState, name: &str, changes: &[LabelChange]) -> Result<Namespace> {
    if changes.iter().any(|c| match c {
        LabelChange::Set(k, v) => k == NAME_LABEL && v != name,
        LabelChange::Remove(k) => k == NAME_LABEL,
    }) {
        bail!("{NAME_LABEL} is the namespace's name ({name}); it cannot be changed or removed");
    }
    check_namespace_name(name)?;
    if state.kubernetes.is_some() {
        let labels =
            crate::kubernetes::label(state, "namespace", None, name, &kubectl_changes(changes))?;
        return Ok(Namespace::new(name, labels));
    }
    let store = store(state)?;
    let mut ns = store
        .namespace(name)?
        .unwrap_or_else(|| Namespace::new(name, BTreeMap::new()));
    ns.metadata.labels = namespace::labels_of(name, Some(&relabel(&ns.metadata.labels, changes)));
    ns.validate()
        .with_context(|| format!("namespace {name:?}"))?;
    store.put_namespace(&ns)?;
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_changes_read_as_kubectl_label_reads_them() {
        let changes = parse_label_changes(&args(&["app=db", "tier-", "empty="])).unwrap();
        assert_eq!(
            changes,
            [
                LabelChange::Set("app".into(), "db".into()),
                LabelChange::Remove("tier".into()),
                LabelChange::Set("empty".into(), "".into())
            ]
        );
        let before = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "front".to_string()),
        ]);
        let after = relabel(&before, &changes);
        assert_eq!(
            after,
            BTreeMap::from([
                ("app".to_string(), "db".to_string()),
                ("empty".to_string(), String::new())
            ])
        );
        let refused = |a: &[&str]| format!("{:#}", parse_label_changes(&args(a)).unwrap_err());
        assert!(refused(&[]).contains("no label changes"));
        assert!(refused(&["app"]).contains("neither key=value nor key-"));
        assert!(refused(&["a b=c"]).starts_with("labels: invalid value \"a b\""));
        assert!(refused(&["app=w e b"]).starts_with("labels.app: invalid value \"w e b\""));
        assert!(refused(&["-"]).starts_with("labels: invalid value \"\""));
    }

    fn lab_in(dir: &std::path::Path) -> LabState {
        LabState::planned(
            "t",
            dir,
            std::path::Path::new("/nonexistent"),
            std::path::Path::new(crate::BPFFS_ROOT),
            1,
        )
    }

    const FILE: &str = "\
apiVersion: weft.dev/v1alpha1
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 198.18.0.200, asNumber: 64600}
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec: {podSelector: {}}
";

    #[test]
    fn apply_writes_every_kind_and_delete_removes_each() {
        let dir = tempfile::tempdir().unwrap();
        let state = lab_in(dir.path());
        assert_eq!(
            apply(&state, FILE).unwrap(),
            ["bgppeer/tor", "namespace/prod", "networkpolicy/prod/web"]
        );
        let bad = FILE
            .replace("name: tor", "name: tor2")
            .replace("{}}", "{}, policyTypes: [Up]}");
        assert!(format!("{:#}", apply(&state, &bad).unwrap_err()).contains("document 3"));
        assert_eq!(
            store(&state).unwrap().bgp_peers().unwrap().len(),
            1,
            "nothing of a refused file"
        );
        let prod = store(&state).unwrap().namespace("prod").unwrap().unwrap();
        assert_eq!(
            prod.metadata.labels[NAME_LABEL], "prod",
            "stored with its name label"
        );
        assert!(delete(&state, Kind::Networkpolicy, "prod/web").unwrap());
        assert!(!delete(&state, Kind::Networkpolicy, "prod/web").unwrap());
        assert!(delete(&state, Kind::Namespace, "prod").unwrap());
        assert!(delete(&state, Kind::Bgppeer, "tor").unwrap());
        for (kind, name) in [
            (Kind::Bgppeer, "../nodes/node1"),
            (Kind::Networkpolicy, "../x/web"),
            (Kind::Namespace, "a.b"),
        ] {
            assert!(delete(&state, kind, name).is_err(), "{name}");
        }
    }

    #[test]
    fn a_namespace_is_labelled_with_its_name_label_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = lab_in(dir.path());
        let set = |a: &[&str]| parse_label_changes(&args(a)).unwrap();
        let ns = label_namespace(&state, "dev", &set(&["team=b"])).unwrap();
        assert_eq!(
            ns.metadata.labels,
            BTreeMap::from([
                (NAME_LABEL.to_string(), "dev".to_string()),
                ("team".to_string(), "b".to_string())
            ])
        );
        let ns = label_namespace(&state, "dev", &set(&["team-", "env=x"])).unwrap();
        assert_eq!(
            store(&state).unwrap().namespace("dev").unwrap(),
            Some(ns.clone())
        );
        assert_eq!(ns.metadata.labels.len(), 2);
        assert!(label_namespace(&state, "dev", &set(&[&format!("{NAME_LABEL}-")])).is_err());
        assert!(label_namespace(&state, "dev", &set(&[&format!("{NAME_LABEL}=x")])).is_err());
        assert!(label_namespace(&state, "Dev", &set(&["a=b"])).is_err());
    }

    #[test]
    fn kinds_are_named_as_kubectl_names_them() {
        use clap::ValueEnum;
        for kind in Kind::value_variants() {
            assert_eq!(Kind::from_str(kind.name(), false), Ok(*kind));
        }
    }
}
