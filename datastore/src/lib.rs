//! Where the agent reads the cluster from: one seam, [`ClusterSource`],
//! with a backend per kind of datastore. Each backend turns its own
//! representation into weft-model's plain types and reports changes one
//! object at a time; the agent's calculation never knows which backend
//! it reads.
//!
//! - [`local`]: the embedded directory store (one machine: the lab, the demo);
//! - [`kubernetes`]: the API server's Nodes, Pods, Namespaces,
//!   NetworkPolicies and BGPPeers through reflectors (`--datastore
//!   kubernetes`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use weft_model::{Change, ContainerPort, EndpointRecord, NodeRecord, Snapshot};

pub mod fsutil;
pub mod kubernetes;
pub mod local;

pub use local::{Datastore, read_records};

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
    /// The Kubernetes source has not listed every kind yet: a snapshot now
    /// would be partial, and a partial list is not "the rest was deleted".
    #[error("the Kubernetes API has not been listed completely yet")]
    NotSynced,
}

/// What a source reports while watched.
// Nearly every event is a change; boxing them to shrink the rare resync
// would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// One object changed.
    Changed(Change),
    /// Changes may have been lost: take a new [`ClusterSource::snapshot`].
    Resync,
}

/// A pod's labels and container ports, as a source that is their
/// authority holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMetadata {
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
}

/// A running watch; dropping it stops it.
pub struct Watch(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Watch {
    pub fn new<T: Send + Sync + 'static>(inner: T) -> Watch {
        Watch(Box::new(inner))
    }
}

/// A backend of the cluster: a snapshot, then changes; and where a node
/// publishes itself and its endpoints for the others (a backend whose
/// cluster publishes them by other means may do nothing).
pub trait ClusterSource: Send + Sync {
    /// The whole cluster now.
    fn snapshot(&self) -> Result<Snapshot, DatastoreError>;
    /// Reports every change from now on into `tx` until the [`Watch`] is
    /// dropped. Take the snapshot after starting the watch, so no change
    /// falls between the two.
    fn watch(&self, tx: mpsc::UnboundedSender<SourceEvent>) -> Result<Watch, DatastoreError>;
    fn publish_node(&self, node: &NodeRecord) -> Result<(), DatastoreError>;
    fn publish_endpoint(&self, ep: &EndpointRecord) -> Result<(), DatastoreError>;
    fn withdraw_endpoint(&self, node: &str, key: &str) -> Result<(), DatastoreError>;
    /// Whether the source, not the CNI call, says which labels and ports
    /// a node's own pods have (Kubernetes: the Pod object).
    fn owns_pod_metadata(&self) -> bool {
        false
    }
    /// Pod `namespace/name`'s labels and ports, where
    /// [`ClusterSource::owns_pod_metadata`] and the pod is known.
    fn pod_metadata(&self, _namespace: &str, _name: &str) -> Option<PodMetadata> {
        None
    }
}

/// A shared source is a source (the agent keeps a typed handle beside the
/// node's).
impl<T: ClusterSource + ?Sized> ClusterSource for Arc<T> {
    fn snapshot(&self) -> Result<Snapshot, DatastoreError> {
        (**self).snapshot()
    }
    fn watch(&self, tx: mpsc::UnboundedSender<SourceEvent>) -> Result<Watch, DatastoreError> {
        (**self).watch(tx)
    }
    fn publish_node(&self, node: &NodeRecord) -> Result<(), DatastoreError> {
        (**self).publish_node(node)
    }
    fn publish_endpoint(&self, ep: &EndpointRecord) -> Result<(), DatastoreError> {
        (**self).publish_endpoint(ep)
    }
    fn withdraw_endpoint(&self, node: &str, key: &str) -> Result<(), DatastoreError> {
        (**self).withdraw_endpoint(node, key)
    }
    fn owns_pod_metadata(&self) -> bool {
        (**self).owns_pod_metadata()
    }
    fn pod_metadata(&self, namespace: &str, name: &str) -> Option<PodMetadata> {
        (**self).pod_metadata(namespace, name)
    }
}
