//! The cluster datastore, in its local embedded form: a directory shared by
//! the agents of one machine (the lab), watched for changes.
//!
//! ```text
//! <dir>/nodes/<node>.json                       NodeRecord
//! <dir>/endpoints/<node>/<container>_<ifname>.json  EndpointRecord
//! <dir>/bgppeers/<name>.json                     BgpPeer (weftctl lab apply)
//! ```
//! Each record is written whole (temp file and rename), so a reader never
//! sees half a record; a record that does not parse is skipped and logged,
//! never fatal. A Kubernetes-backed datastore later offers the same calls.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

pub mod fsutil;

use weft_model::{BgpPeer, EndpointRecord, NodeRecord};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    #[error("datastore {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch datastore {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

pub struct Datastore {
    dir: PathBuf,
}

impl Datastore {
    /// Opens the datastore directory, creating its layout.
    pub fn open(dir: &Path) -> Result<Datastore, DatastoreError> {
        for sub in ["nodes", "endpoints", "bgppeers"] {
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
        let path = self.dir.join("bgppeers").join(format!("{name}.json"));
        let existed = path.exists();
        fsutil::remove_if_exists(&path).map_err(|source| DatastoreError::Io { path, source })?;
        Ok(existed)
    }

    /// Wakes `tx` whenever anything under the datastore changes. Wake-ups
    /// are coalesced (a full channel means one is pending already): the
    /// receiver re-reads the whole state, so no event carries meaning.
    /// Reads are not changes ([`is_change`]).
    pub fn watch(
        &self,
        tx: mpsc::Sender<()>,
    ) -> Result<notify::RecommendedWatcher, DatastoreError> {
        use notify::Watcher;
        let watch_err = |source| DatastoreError::Watch {
            path: self.dir.clone(),
            source,
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // An error may mean lost events: wake up and re-read.
                if event.as_ref().is_ok_and(|e| !is_change(e)) {
                    return;
                }
                let _ = tx.try_send(());
            })
            .map_err(watch_err)?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::Recursive)
            .map_err(watch_err)?;
        Ok(watcher)
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
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DatastoreError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
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

    #[test]
    fn records_round_trip_and_malformed_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let node = NodeRecord {
            name: "node1".into(),
            underlay_ip: "198.18.0.11".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        };
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

    #[test]
    fn the_watch_wakes_on_changes_not_on_reads() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let node = NodeRecord {
            name: "node1".into(),
            underlay_ip: "198.18.0.11".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        };
        ds.put_node(&node).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _watcher = ds.watch(tx).unwrap();
        let settle = || std::thread::sleep(std::time::Duration::from_millis(300));
        settle();
        while rx.try_recv().is_ok() {}
        // A reader's passes (listing and reading every record) wake nobody.
        for _ in 0..3 {
            assert_eq!(ds.nodes().unwrap(), vec![node.clone()]);
            assert!(ds.bgp_peers().unwrap().is_empty());
        }
        settle();
        assert!(rx.try_recv().is_err(), "a read woke the watcher");
        // A write does.
        ds.put_node(&NodeRecord {
            name: "node2".into(),
            ..node.clone()
        })
        .unwrap();
        settle();
        assert!(rx.try_recv().is_ok(), "a write did not wake the watcher");
        // And so does a removal.
        while rx.try_recv().is_ok() {}
        fs::remove_file(dir.path().join("nodes/node2.json")).unwrap();
        settle();
        assert!(rx.try_recv().is_ok(), "a removal did not wake the watcher");
    }

    #[test]
    fn endpoints_are_per_node_and_deletion_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        let ep = EndpointRecord {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            node: "node1".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            address: "10.244.1.2".parse().unwrap(),
            host_ifname: "weft0123456789a".into(),
            netns: "/run/netns/x".into(),
        };
        ds.put_endpoint(&ep).unwrap();
        assert_eq!(ds.endpoints("node1").unwrap(), vec![ep.clone()]);
        assert!(ds.endpoints("node2").unwrap().is_empty());
        ds.delete_endpoint("node1", &ep.key()).unwrap();
        ds.delete_endpoint("node1", &ep.key()).unwrap();
        assert!(ds.endpoints("node1").unwrap().is_empty());
    }
}
