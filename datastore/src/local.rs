//! The local embedded cluster source: a directory shared by the agents of
//! one machine (the lab, the demo), watched for changes.
//!
//! ```text
//! <dir>/nodes/<node>.json                       NodeRecord
//! <dir>/endpoints/<node>/<container>_<ifname>.json  EndpointRecord
//! <dir>/bgppeers/<name>.json                     BgpPeer (weftctl lab apply)
//! <dir>/networkpolicies/<namespace>/<name>.json  NetworkPolicy (weftctl lab apply)
//! <dir>/namespaces/<name>.json                   Namespace (weftctl lab apply, lab label)
//! ```
//! Each record is written whole (temp file and rename), so a reader never
//! sees half a record; a record that does not parse is skipped and logged,
//! never fatal. A change to one file is reported as a change to one
//! object ([`ClusterSource::watch`]), so an agent's work per change does
//! not grow with the cluster.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use weft_model::{
    BgpPeer, Change, EndpointRecord, Namespace, NetworkPolicy, NodeRecord, Object, ObjectId,
    Snapshot,
};

use crate::{ClusterSource, DatastoreError, SourceEvent, Watch, fsutil};

pub struct Datastore {
    dir: PathBuf,
}

impl Datastore {
    /// Opens the datastore directory, creating its layout.
    pub fn open(dir: &Path) -> Result<Datastore, DatastoreError> {
        for sub in [
            "nodes",
            "endpoints",
            "bgppeers",
            "networkpolicies",
            "namespaces",
        ] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| DatastoreError::Io { path, source })?;
        }
        Ok(Datastore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, DatastoreError> {
        read_records(&self.dir.join("nodes"))
    }

    pub fn put_node(&self, node: &NodeRecord) -> Result<(), DatastoreError> {
        self.put(
            &self.dir.join("nodes").join(format!("{}.json", node.name)),
            node,
        )
    }

    pub fn endpoints(&self, node: &str) -> Result<Vec<EndpointRecord>, DatastoreError> {
        read_records(&self.endpoints_dir(node))
    }

    pub fn put_endpoint(&self, ep: &EndpointRecord) -> Result<(), DatastoreError> {
        self.put(
            &self
                .endpoints_dir(&ep.node)
                .join(format!("{}.json", ep.key())),
            ep,
        )
    }

    pub fn delete_endpoint(&self, node: &str, key: &str) -> Result<(), DatastoreError> {
        let path = self.endpoints_dir(node).join(format!("{key}.json"));
        fsutil::remove_if_exists(&path).map_err(|source| DatastoreError::Io { path, source })
    }

    pub fn bgp_peers(&self) -> Result<Vec<BgpPeer>, DatastoreError> {
        read_records(&self.dir.join("bgppeers"))
    }

    /// Stores a peer (create or replace). Callers validate first
    /// ([`weft_model::bgp_peer::parse_manifests`] does).
    pub fn put_bgp_peer(&self, peer: &BgpPeer) -> Result<(), DatastoreError> {
        self.put(
            &self
                .dir
                .join("bgppeers")
                .join(format!("{}.json", peer.metadata.name)),
            peer,
        )
    }

    /// Removes a peer; `false` if there was none of that name.
    pub fn delete_bgp_peer(&self, name: &str) -> Result<bool, DatastoreError> {
        self.delete(self.dir.join("bgppeers").join(format!("{name}.json")))
    }

    /// Every namespace's policies.
    pub fn network_policies(&self) -> Result<Vec<NetworkPolicy>, DatastoreError> {
        let mut out = Vec::new();
        for namespace in subdirectories(&self.dir.join("networkpolicies"))? {
            out.extend(read_records(
                &self.dir.join("networkpolicies").join(namespace),
            )?);
        }
        Ok(out)
    }

    /// Stores a policy (create or replace) under its namespace. Callers
    /// validate first ([`weft_model::manifest::parse_policy_manifests`] does).
    pub fn put_network_policy(&self, policy: &NetworkPolicy) -> Result<(), DatastoreError> {
        self.put(
            &self.network_policy_path(policy.namespace(), policy.name()),
            policy,
        )
    }

    /// Removes a policy; `false` if there was none of that name.
    pub fn delete_network_policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<bool, DatastoreError> {
        self.delete(self.network_policy_path(namespace, name))
    }

    pub fn namespaces(&self) -> Result<Vec<Namespace>, DatastoreError> {
        read_records(&self.dir.join("namespaces"))
    }

    /// The namespace object of `name`, if one was stored (a namespace that
    /// exists only through its pods has none).
    pub fn namespace(&self, name: &str) -> Result<Option<Namespace>, DatastoreError> {
        let path = self.namespace_path(name);
        match fs::read(&path) {
            Ok(body) => Ok(serde_json::from_slice(&body)
                .inspect_err(
                    |e| tracing::warn!(path = %path.display(), error = %e, "malformed record"),
                )
                .ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DatastoreError::Io { path, source }),
        }
    }

    /// Stores a namespace's object (create or replace).
    pub fn put_namespace(&self, namespace: &Namespace) -> Result<(), DatastoreError> {
        self.put(&self.namespace_path(namespace.name()), namespace)
    }

    /// Removes a namespace's object; `false` if there was none.
    pub fn delete_namespace(&self, name: &str) -> Result<bool, DatastoreError> {
        self.delete(self.namespace_path(name))
    }

    fn network_policy_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir
            .join("networkpolicies")
            .join(namespace)
            .join(format!("{name}.json"))
    }

    fn namespace_path(&self, name: &str) -> PathBuf {
        self.dir.join("namespaces").join(format!("{name}.json"))
    }

    /// Removes a record; `false` if there was none.
    fn delete(&self, path: PathBuf) -> Result<bool, DatastoreError> {
        let existed = path.exists();
        fsutil::remove_if_exists(&path).map_err(|source| DatastoreError::Io { path, source })?;
        Ok(existed)
    }

    fn endpoints_dir(&self, node: &str) -> PathBuf {
        self.dir.join("endpoints").join(node)
    }

    fn put<T: Serialize>(&self, path: &Path, record: &T) -> Result<(), DatastoreError> {
        let body = serde_json::to_vec_pretty(record).expect("records serialize");
        fsutil::write_atomic(path, &body).map_err(|source| DatastoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl ClusterSource for Datastore {
    fn snapshot(&self) -> Result<Snapshot, DatastoreError> {
        let mut endpoints = Vec::new();
        for node in subdirectories(&self.dir.join("endpoints"))? {
            endpoints.extend(self.endpoints(&node)?);
        }
        Ok(Snapshot {
            nodes: self.nodes()?,
            endpoints,
            bgp_peers: self.bgp_peers()?,
            network_policies: self.network_policies()?,
            namespaces: self.namespaces()?,
        })
    }

    /// Each file event becomes the change of the one object the file
    /// holds: its record read again (an upsert) or its absence (a delete).
    /// Events are not coalesced here: the receiver drains what is queued
    /// before a pass. A watch error may mean lost events: a resync.
    fn watch(&self, tx: mpsc::UnboundedSender<SourceEvent>) -> Result<Watch, DatastoreError> {
        use notify::Watcher;
        let watch_err = |source| DatastoreError::Watch {
            path: self.dir.clone(),
            source,
        };
        let dir = self.dir.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let event = match event {
                    Ok(event) if !is_change(&event) => return,
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(error = %e, "datastore watch error; resyncing");
                        let _ = tx.send(SourceEvent::Resync);
                        return;
                    }
                };
                for path in &event.paths {
                    for change in changes_at(&dir, path) {
                        let _ = tx.send(SourceEvent::Changed(change));
                    }
                }
            })
            .map_err(watch_err)?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::Recursive)
            .map_err(watch_err)?;
        Ok(Watch::new(watcher))
    }

    fn publish_node(&self, node: &NodeRecord) -> Result<(), DatastoreError> {
        self.put_node(node)
    }

    fn publish_endpoint(&self, ep: &EndpointRecord) -> Result<(), DatastoreError> {
        self.put_endpoint(ep)
    }

    fn withdraw_endpoint(&self, node: &str, key: &str) -> Result<(), DatastoreError> {
        self.delete_endpoint(node, key)
    }
}

/// Which object a record file of the store names, from its path alone.
fn object_at(dir: &Path, path: &Path) -> Option<ObjectId> {
    let rel = path.strip_prefix(dir).ok()?;
    let parts: Vec<&str> = rel.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
    fn stem(file: &str) -> Option<&str> {
        file.strip_suffix(".json")
            .filter(|s| !s.is_empty() && !s.starts_with('.'))
    }
    match parts.as_slice() {
        ["nodes", file] => Some(ObjectId::Node(stem(file)?.to_string())),
        ["endpoints", node, file] => Some(ObjectId::Endpoint {
            node: node.to_string(),
            key: stem(file)?.to_string(),
        }),
        ["bgppeers", file] => Some(ObjectId::BgpPeer(stem(file)?.to_string())),
        ["networkpolicies", namespace, file] => Some(ObjectId::NetworkPolicy {
            namespace: namespace.to_string(),
            name: stem(file)?.to_string(),
        }),
        ["namespaces", file] => Some(ObjectId::Namespace(stem(file)?.to_string())),
        _ => None,
    }
}

/// The changes an event at `path` means: a record file's own, or, for a
/// directory, those of every record under it. inotify watches a new
/// directory only once told of it, so records written into a directory
/// just made (a namespace's first policy, a node's first endpoint) or
/// moved in with it raise no event of their own: reading the directory
/// is how they are not lost. A record also seen by its own event is
/// reported twice, which a level-triggered change makes harmless.
fn changes_at(dir: &Path, path: &Path) -> Vec<Change> {
    if !path.is_dir() {
        return change_at(dir, path).into_iter().collect();
    }
    let mut out = Vec::new();
    for entry in entries(path).unwrap_or_default() {
        out.extend(changes_at(dir, &entry.path()));
    }
    out
}

/// The change a file event at `path` means: the record there now, or its
/// deletion. A record that does not parse, or names another object than
/// its file does, is logged and skipped (the object keeps its last good
/// state).
fn change_at(dir: &Path, path: &Path) -> Option<Change> {
    let id = object_at(dir, path)?;
    let body = match fs::read(path) {
        Ok(body) => body,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Change::Delete(id)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read record");
            return None;
        }
    };
    let object = match &id {
        ObjectId::Node(_) => serde_json::from_slice(&body).map(Object::Node),
        ObjectId::Endpoint { .. } => serde_json::from_slice(&body).map(Object::Endpoint),
        ObjectId::BgpPeer(_) => serde_json::from_slice(&body).map(Object::BgpPeer),
        ObjectId::NetworkPolicy { .. } => {
            serde_json::from_slice(&body).map(|p| Object::NetworkPolicy(Box::new(p)))
        }
        ObjectId::Namespace(_) => serde_json::from_slice(&body).map(Object::Namespace),
    };
    match object {
        Ok(object) if object.id() == id => Some(Change::Upsert(object)),
        Ok(object) => {
            tracing::warn!(path = %path.display(), holds = ?object.id(), "skipping a record filed under another name");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "skipping malformed record");
            None
        }
    }
}

/// The entries of `dir` (missing directory: none).
fn entries(dir: &Path) -> Result<Vec<fs::DirEntry>, DatastoreError> {
    match fs::read_dir(dir) {
        Ok(e) => Ok(e.flatten().collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(DatastoreError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The names of the directories in `dir` (missing: none).
fn subdirectories(dir: &Path) -> Result<Vec<String>, DatastoreError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// Whether a watch event is a change to the datastore. notify's inotify
/// backend also reports opening and closing a file unwritten: a reader's
/// own reads. A reconcile pass reads the whole store, so waking on those
/// would have every agent sharing the store wake itself and the others
/// for ever, each pass a few milliseconds of CPU, back to back.
fn is_change(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Reads every `*.json` record of a directory (missing directory: none).
pub fn read_records<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, DatastoreError> {
    let mut out = Vec::new();
    for entry in entries(dir)? {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match fs::read(&path).map(|b| serde_json::from_slice::<T>(&b)) {
            Ok(Ok(record)) => out.push(record),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping malformed record")
            }
            // Removed between listing and reading: not a record any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read record"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node1() -> NodeRecord {
        NodeRecord {
            name: "node1".into(),
            underlay_ip: "198.18.0.11".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn records_round_trip_and_malformed_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let node = node1();
        ds.put_node(&node).unwrap();
        fs::write(dir.path().join("nodes/broken.json"), b"{not json").unwrap();
        assert_eq!(ds.nodes().unwrap(), vec![node]);
    }

    #[test]
    fn bgp_peers_are_stored_replaced_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let mut peer = weft_model::bgp_peer::parse_manifests(
            "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 198.18.0.200, asNumber: 64600}\n",
        )
        .unwrap()
        .remove(0);
        ds.put_bgp_peer(&peer).unwrap();
        peer.spec.as_number = 64601;
        ds.put_bgp_peer(&peer).unwrap();
        assert_eq!(ds.bgp_peers().unwrap(), vec![peer]);
        assert!(ds.delete_bgp_peer("tor").unwrap());
        assert!(!ds.delete_bgp_peer("tor").unwrap());
        assert!(ds.bgp_peers().unwrap().is_empty());
    }

    fn policy(namespace: &str, name: &str) -> NetworkPolicy {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{podSelector: {{}}}}\n"
        );
        match weft_model::manifest::parse_policy_manifests(&text)
            .unwrap()
            .remove(0)
        {
            weft_model::manifest::PolicyManifest::NetworkPolicy(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn policies_and_namespaces_are_stored_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let (web, db) = (policy("prod", "web"), policy("dev", "web"));
        ds.put_network_policy(&web).unwrap();
        ds.put_network_policy(&db).unwrap();
        let prod = Namespace::new("prod", [("team".to_string(), "a".to_string())].into());
        ds.put_namespace(&prod).unwrap();
        let snapshot = ds.snapshot().unwrap();
        let mut names: Vec<_> = snapshot
            .network_policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace(), p.name()))
            .collect();
        names.sort();
        assert_eq!(names, ["dev/web", "prod/web"]);
        assert_eq!(snapshot.namespaces, vec![prod.clone()]);
        assert_eq!(ds.namespace("prod").unwrap(), Some(prod));
        assert_eq!(ds.namespace("dev").unwrap(), None);
        assert!(ds.delete_network_policy("prod", "web").unwrap());
        assert!(!ds.delete_network_policy("prod", "web").unwrap());
        assert!(ds.delete_namespace("prod").unwrap());
        assert!(!ds.delete_namespace("prod").unwrap());
        let snapshot = ds.snapshot().unwrap();
        assert_eq!(snapshot.network_policies, vec![db]);
        assert!(snapshot.namespaces.is_empty());
    }

    #[test]
    fn the_watch_reports_policies_and_namespaces_one_object_each() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watch = ds.watch(tx).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let web = policy("prod", "web");
        ds.put_network_policy(&web).unwrap();
        assert!(reported(
            &mut rx,
            Change::Upsert(Object::NetworkPolicy(Box::new(web)))
        ));
        ds.delete_network_policy("prod", "web").unwrap();
        assert!(reported(
            &mut rx,
            Change::Delete(ObjectId::NetworkPolicy {
                namespace: "prod".into(),
                name: "web".into()
            })
        ));
        let prod = Namespace::new("prod", Default::default());
        ds.put_namespace(&prod).unwrap();
        assert!(reported(&mut rx, Change::Upsert(Object::Namespace(prod))));
        while rx.try_recv().is_ok() {}
        ds.delete_namespace("prod").unwrap();
        assert!(reported(
            &mut rx,
            Change::Delete(ObjectId::Namespace("prod".into()))
        ));
        // A policy filed under another namespace than its own is skipped.
        let elsewhere = serde_json::to_vec(&policy("dev", "x")).unwrap();
        fs::write(dir.path().join("networkpolicies/prod/x.json"), elsewhere).unwrap();
        while let Some(event) = next(&mut rx) {
            assert!(
                !matches!(event, SourceEvent::Changed(Change::Upsert(_))),
                "{event:?}"
            );
        }
    }

    #[test]
    fn records_in_a_directory_that_appears_whole_are_reported() {
        // A directory moved into the store with its record already inside
        // raises one event, for the directory: the deterministic form of
        // a namespace's first policy written before the new directory is
        // watched.
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watch = ds.watch(tx).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let outside = tempfile::tempdir().unwrap();
        let staged = outside.path().join("y");
        fs::create_dir(&staged).unwrap();
        let web = policy("y", "web");
        fs::write(staged.join("web.json"), serde_json::to_vec(&web).unwrap()).unwrap();
        fs::rename(&staged, dir.path().join("networkpolicies/y")).unwrap();
        assert!(reported(
            &mut rx,
            Change::Upsert(Object::NetworkPolicy(Box::new(web)))
        ));
    }

    /// The next event within a second, if any.
    fn next(rx: &mut mpsc::UnboundedReceiver<SourceEvent>) -> Option<SourceEvent> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            if let Ok(event) = rx.try_recv() {
                return Some(event);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    /// Waits up to 5 s for `want`, skipping other events: a write's
    /// trailing events (a rename is reported more than once) may arrive
    /// after the queue was drained, the later under load.
    fn reported(rx: &mut mpsc::UnboundedReceiver<SourceEvent>, want: Change) -> bool {
        let want = SourceEvent::Changed(want);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match rx.try_recv() {
                Ok(event) if event == want => return true,
                Ok(_) => {}
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        false
    }

    #[test]
    fn the_watch_reports_each_changed_object_and_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let node = node1();
        ds.put_node(&node).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watch = ds.watch(tx).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        while rx.try_recv().is_ok() {}
        // A reader's passes (listing and reading every record) report nothing.
        for _ in 0..3 {
            assert_eq!(ds.snapshot().unwrap().nodes, vec![node.clone()]);
        }
        assert_eq!(next(&mut rx), None, "a read was reported");
        // A write is the object's upsert, whole.
        let node2 = NodeRecord {
            name: "node2".into(),
            ..node.clone()
        };
        ds.put_node(&node2).unwrap();
        assert!(reported(&mut rx, Change::Upsert(Object::Node(node2))));
        while rx.try_recv().is_ok() {}
        // A removal is its deletion.
        fs::remove_file(dir.path().join("nodes/node2.json")).unwrap();
        assert!(reported(
            &mut rx,
            Change::Delete(ObjectId::Node("node2".into()))
        ));
        // A malformed record, or one filed under another name, is skipped.
        fs::write(dir.path().join("nodes/broken.json"), b"{not json").unwrap();
        let mut renamed = serde_json::to_vec(&node).unwrap();
        fs::write(dir.path().join("nodes/other.json"), &mut renamed).unwrap();
        while let Some(event) = next(&mut rx) {
            assert!(
                !matches!(event, SourceEvent::Changed(Change::Upsert(_))),
                "{event:?}"
            );
        }
    }

    fn web_on_node1() -> EndpointRecord {
        EndpointRecord {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            node: "node1".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            address: "10.244.1.2".parse().unwrap(),
            host_ifname: "weft0123456789a".into(),
            netns: "/run/netns/x".into(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn the_snapshot_holds_every_nodes_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let mut ep = web_on_node1();
        ds.put_endpoint(&ep).unwrap();
        ep.node = "node2".into();
        ds.put_endpoint(&ep).unwrap();
        assert_eq!(ds.snapshot().unwrap().endpoints.len(), 2);
    }

    #[test]
    fn endpoints_are_per_node_and_deletion_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let ep = web_on_node1();
        ds.put_endpoint(&ep).unwrap();
        assert_eq!(ds.endpoints("node1").unwrap(), vec![ep.clone()]);
        assert!(ds.endpoints("node2").unwrap().is_empty());
        ds.delete_endpoint("node1", &ep.key()).unwrap();
        ds.delete_endpoint("node1", &ep.key()).unwrap();
        assert!(ds.endpoints("node1").unwrap().is_empty());
    }
}
