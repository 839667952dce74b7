//! The Kubernetes API server as a cluster source (issue #11): a reflector
//! per kind (Nodes, Pods cluster-wide, Namespaces, NetworkPolicies, Weft's
//! BGPPeers; the CRD must be installed, `deploy/crds.yaml`) keeps
//! the last listed state, and each watch event becomes the [`Change`] of
//! the one object it carries, converted by [`convert`].
//!
//! What a production agent needs from it, and where it is:
//! - an empty or partial list is never "everything was deleted": the
//!   source is not synced, and [`ClusterSource::snapshot`] refuses, until
//!   every kind has been listed once; after a watch restarts, the store is
//!   replaced only when the new list is complete, and the agent is told to
//!   take a new snapshot ([`SourceEvent::Resync`]);
//! - the API server going away stalls nothing: the stores keep their last
//!   state, the watches retry with kube-runtime's default backoff;
//! - a malformed object is logged with its name and field and skipped
//!   (a refused object that was known before is reported deleted).
//!
//! Nodes and endpoints are published by kubelet and the API server, not
//! by the agent, so the publish calls do nothing here; the one thing the
//! agent writes is its own Node's status: the `NetworkUnavailable`
//! condition and the underlay address it chose
//! ([`KubernetesSource::publish_node_status`]). A node's own pods take
//! their labels and ports from their Pod objects
//! ([`ClusterSource::pod_metadata`]).

pub mod bgp_peer;
pub mod convert;
pub mod crd;
pub mod pod;
pub mod prune;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weft_model::{Change, EndpointRecord, NodeRecord, Object, ObjectId, Snapshot, endpoint_key};

use crate::{ClusterSource, DatastoreError, PodMetadata, SourceEvent, Watch};
use convert::Refused;

/// Where changes go: every live [`ClusterSource::watch`], by its number.
type Subscribers = Arc<Mutex<Vec<(u64, mpsc::UnboundedSender<SourceEvent>)>>>;

/// Ends its subscription when dropped (the [`Watch`] holds it).
struct Subscription {
    id: u64,
    subscribers: Subscribers,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .retain(|(id, _)| *id != self.id);
    }
}

/// The API server as a [`ClusterSource`].
pub struct KubernetesSource {
    nodes: Store<core::Node>,
    pods: Store<pod::PodObject>,
    namespaces: Store<core::Namespace>,
    policies: Store<networking::NetworkPolicy>,
    peers: Store<bgp_peer::BgpPeerObject>,
    /// One flag per kind: listed completely at least once.
    synced: Vec<Arc<AtomicBool>>,
    subscribers: Subscribers,
    tasks: Vec<JoinHandle<()>>,
    client: Client,
}

/// Why no client could be made for the API server.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no --kubeconfig and not in a pod (in-cluster configuration: {0}); \
         give --kubeconfig or run the agent as the DaemonSet"
    )]
    InCluster(kube::config::InClusterError),
    #[error("API client: {0}")]
    Client(#[from] kube::Error),
}

/// A client for the API server: from the kubeconfig file when one is
/// given, else the pod's own service account (in-cluster).
pub async fn connect(kubeconfig: Option<&std::path::Path>) -> Result<Client, ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |source| ConnectError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
        None => kube::Config::incluster().map_err(ConnectError::InCluster)?,
    };
    Ok(Client::try_from(config)?)
}

/// The condition type the network plugin owns on a Node.
pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";
/// The reason Weft writes into it.
pub const NETWORK_UP_REASON: &str = "WeftIsUp";
/// The Node annotation holding the underlay address its agent chose
/// (`--node-ip`, `--underlay-ip`); other nodes use it in place of the
/// InternalIP, so an address found by `first-found` or `can-reach` is the
/// one the cluster tunnels and peers to (Calico keeps it in its own Node
/// resource). Written through `nodes/status` with the condition, as
/// Flannel writes its annotations: the agent needs no write access to
/// Nodes.
pub const UNDERLAY_ADDRESS_ANNOTATION: &str = "weft.dev/underlay-address";

impl KubernetesSource {
    /// Starts the reflectors on `client` (they run on the current tokio
    /// runtime until the source is dropped).
    pub fn start(client: Client) -> KubernetesSource {
        let subscribers: Subscribers = Arc::default();
        let (nodes, n) = reflect(
            Api::all(client.clone()),
            subscribers.clone(),
            prune::node,
            node_change,
        );
        let (pods, p) = reflect(
            Api::all(client.clone()),
            subscribers.clone(),
            prune::meta_of,
            pod_change,
        );
        let (namespaces, ns) = reflect(
            Api::all(client.clone()),
            subscribers.clone(),
            prune::namespace,
            namespace_change,
        );
        let (policies, np) = reflect(
            Api::all(client.clone()),
            subscribers.clone(),
            prune::meta_of,
            policy_change,
        );
        let (peers, bp) = reflect(
            Api::all(client.clone()),
            subscribers.clone(),
            prune::meta_of,
            peer_change,
        );
        let (synced, tasks) = [n, p, ns, np, bp].into_iter().unzip();
        KubernetesSource {
            nodes,
            pods,
            namespaces,
            policies,
            peers,
            synced,
            subscribers,
            tasks,
            client,
        }
    }

    /// Node `name` as last listed, pruned to what Weft reads ([`prune::node`]).
    pub fn node(&self, name: &str) -> Option<Arc<core::Node>> {
        self.nodes.get(&ObjectRef::new(name))
    }

    /// Whether Node `name` says what [`KubernetesSource::publish_node_status`]
    /// writes: `NetworkUnavailable=False` with Weft's reason, and
    /// `address` as its underlay address.
    pub fn node_status_published(&self, name: &str, address: Ipv4Addr) -> bool {
        let Some(node) = self.node(name) else {
            return false;
        };
        let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
        let available = conditions.into_iter().flatten().any(|c| {
            c.type_ == NETWORK_UNAVAILABLE
                && c.status == "False"
                && c.reason.as_deref() == Some(NETWORK_UP_REASON)
        });
        available && convert::underlay_annotation(&node) == Ok(Some(address))
    }

    /// Publishes on Node `name` that its pod network is programmed
    /// (`NetworkUnavailable=False`, as Calico and Flannel do; the
    /// scheduler's `node.kubernetes.io/network-unavailable` taint follows
    /// it) and that it is reached at underlay `address`
    /// ([`UNDERLAY_ADDRESS_ANNOTATION`]). One strategic merge through
    /// `nodes/status`: kubelet's own conditions and other annotations are
    /// left alone.
    pub async fn publish_node_status(
        &self,
        name: &str,
        address: Ipv4Addr,
    ) -> Result<(), kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = serde_json::json!({
            "metadata": {"annotations": {UNDERLAY_ADDRESS_ANNOTATION: address.to_string()}},
            "status": {"conditions": [{
                "type": NETWORK_UNAVAILABLE,
                "status": "False",
                "reason": NETWORK_UP_REASON,
                "message": "Weft's agent has programmed this node's pod network",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]},
        });
        Api::<core::Node>::all(self.client.clone())
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        Ok(())
    }

    /// Whether every kind has been listed completely.
    pub fn is_synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }

    /// Waits until [`KubernetesSource::is_synced`].
    pub async fn wait_synced(&self) {
        while !self.is_synced() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for KubernetesSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Runs a reflector over `api`: every object is pruned to what Weft reads
/// before it is stored, every complete list marks the kind synced and
/// asks for a resync, every single event becomes `change`'s answer.
fn reflect<K>(
    api: Api<K>,
    subscribers: Subscribers,
    prune: fn(&mut K),
    change: fn(&K, bool) -> Option<Change>,
) -> (Store<K>, (Arc<AtomicBool>, JoinHandle<()>))
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let synced = Arc::new(AtomicBool::new(false));
    let flag = synced.clone();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(prune)
        .reflect(writer);
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    // The watcher retries with backoff; the store keeps its state.
                    tracing::warn!(kind, error = %e, "watch failed; retrying");
                    continue;
                }
            };
            let out = match event {
                watcher::Event::Apply(obj) => change(&obj, true).map(SourceEvent::Changed),
                watcher::Event::Delete(obj) => change(&obj, false).map(SourceEvent::Changed),
                watcher::Event::Init | watcher::Event::InitApply(_) => None,
                watcher::Event::InitDone => {
                    flag.store(true, Ordering::Release);
                    Some(SourceEvent::Resync)
                }
            };
            if let Some(out) = out {
                subscribers
                    .lock()
                    .expect("subscribers lock")
                    .retain(|(_, tx)| tx.send(out.clone()).is_ok());
            }
        }
    });
    (store, (synced, task))
}

/// Logs an object that cannot be used, once per event.
fn skipped(refused: &Refused) {
    tracing::warn!(%refused, "object skipped");
}

fn node_change(node: &core::Node, applied: bool) -> Option<Change> {
    let name = node.metadata.name.clone()?;
    let record = match convert::node_record(node) {
        Ok(record) => record,
        Err(e) => {
            skipped(&e);
            None
        }
    };
    Some(match record {
        Some(record) if applied => Change::Upsert(Object::Node(record)),
        _ => Change::Delete(ObjectId::Node(name)),
    })
}

fn pod_change(pod: &pod::PodObject, applied: bool) -> Option<Change> {
    let record = match convert::endpoint_record(pod) {
        Ok(record) => record,
        Err(e) => {
            skipped(&e);
            None
        }
    };
    match record {
        Some(record) if applied => Some(Change::Upsert(Object::Endpoint(record))),
        // Deleted, or no longer an endpoint (finished, address gone).
        _ => {
            let node = pod.spec.node_name.clone()?;
            let uid = pod.metadata.uid.as_deref()?;
            Some(Change::Delete(ObjectId::Endpoint {
                node,
                key: endpoint_key(uid, convert::API_IFNAME),
            }))
        }
    }
}

fn namespace_change(ns: &core::Namespace, applied: bool) -> Option<Change> {
    let model = convert::namespace(ns);
    Some(if applied {
        Change::Upsert(Object::Namespace(model))
    } else {
        Change::Delete(ObjectId::Namespace(model.name().to_string()))
    })
}

fn policy_change(policy: &networking::NetworkPolicy, applied: bool) -> Option<Change> {
    let id = ObjectId::NetworkPolicy {
        namespace: policy.metadata.namespace.clone()?,
        name: policy.metadata.name.clone()?,
    };
    if !applied {
        return Some(Change::Delete(id));
    }
    Some(match convert::network_policy(policy) {
        Ok(model) => Change::Upsert(Object::NetworkPolicy(Box::new(model))),
        Err(e) => {
            // A policy the API server stored but Weft cannot read: as if
            // absent (the compiler never sees half a policy).
            skipped(&e);
            Change::Delete(id)
        }
    })
}

fn peer_change(peer: &bgp_peer::BgpPeerObject, applied: bool) -> Option<Change> {
    let id = ObjectId::BgpPeer(peer.metadata.name.clone()?);
    if !applied {
        return Some(Change::Delete(id));
    }
    Some(match bgp_peer::to_model(peer) {
        Ok(model) => Change::Upsert(Object::BgpPeer(model)),
        Err(e) => {
            skipped(&e);
            Change::Delete(id)
        }
    })
}

/// Every object of `store` that converts, the others logged and left out.
fn converted<K, T>(store: &Store<K>, convert: impl Fn(&K) -> Result<Option<T>, Refused>) -> Vec<T>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .iter()
        .filter_map(|obj| match convert(obj) {
            Ok(t) => t,
            Err(e) => {
                skipped(&e);
                None
            }
        })
        .collect()
}

impl ClusterSource for KubernetesSource {
    fn snapshot(&self) -> Result<Snapshot, DatastoreError> {
        if !self.is_synced() {
            return Err(DatastoreError::NotSynced);
        }
        Ok(Snapshot {
            nodes: converted(&self.nodes, convert::node_record),
            endpoints: converted(&self.pods, convert::endpoint_record),
            bgp_peers: converted(&self.peers, |p| bgp_peer::to_model(p).map(Some)),
            network_policies: converted(&self.policies, |p| convert::network_policy(p).map(Some)),
            namespaces: converted(&self.namespaces, |n| Ok(Some(convert::namespace(n)))),
        })
    }

    fn watch(&self, tx: mpsc::UnboundedSender<SourceEvent>) -> Result<Watch, DatastoreError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .lock()
            .expect("subscribers lock")
            .push((id, tx));
        Ok(Watch::new(Subscription {
            id,
            subscribers: self.subscribers.clone(),
        }))
    }

    fn publish_node(&self, _node: &NodeRecord) -> Result<(), DatastoreError> {
        Ok(())
    }

    fn publish_endpoint(&self, _ep: &EndpointRecord) -> Result<(), DatastoreError> {
        Ok(())
    }

    fn withdraw_endpoint(&self, _node: &str, _key: &str) -> Result<(), DatastoreError> {
        Ok(())
    }

    fn owns_pod_metadata(&self) -> bool {
        true
    }

    fn pod_metadata(&self, namespace: &str, name: &str) -> Option<PodMetadata> {
        let pod = self.pods.get(&ObjectRef::new(name).within(namespace))?;
        match convert::pod_metadata(&pod) {
            Ok(meta) => Some(meta),
            Err(e) => {
                skipped(&e);
                None
            }
        }
    }
}
