//! `weftctl lab netpol`: a policy case (the format of `weftctl policy
//! simulate`, [`weft_model::policy_case`]) run on a kernel lab, with real
//! pods wired by weft-cni, real agents compiling and programming the
//! policies, and real connections from inside the pods.
//!
//! A level-triggered reconciler first makes the lab match the case, doing
//! only what differs, so that a series of cases on one lab (the upstream
//! e2e translations: the same nine pods, other policies) costs little
//! more than its probes:
//!
//! - nodes: the case's /24s in address order are the lab's nodes in index
//!   order (a lab is brought up, or nodes added, when there are too few);
//! - pods: case pod `ns/name` is lab pod `ns-name` on its /24's node, with
//!   the case's namespace, labels and container ports (an echo server on
//!   the TCP and UDP ones); a pod on the wrong node or with other ports is
//!   made again, one with other labels relabelled, and pods the case does
//!   not have are deleted. Addresses are the lab's, not the case's `ip`;
//! - namespaces and policies: the datastore holds exactly the case's,
//!   with an ipBlock that names a pod's case address (a /32) moved to
//!   its lab address ([`lab_policies`]). On a Kubernetes lab that is the
//!   API server: pods through the lab's kubelet part, namespaces and
//!   policies each in one server-side `kubectl apply` of a List, what the
//!   case lacks in one `kubectl delete` (the server's own namespaces stay).
//!
//! Then it waits until every node's agent reports that its maps are
//! programmed from exactly these inputs (the digest of
//! [`weft_calc::policy::digest`], computed here from what was written and
//! the lab's addresses; on Kubernetes from the cluster Weft's own source
//! lists once the API server holds exactly what was written, since the
//! server adds namespaces and defaults of its own), and runs every probe at once, each on a thread:
//! TCP an exchange with the destination's echo server, UDP a datagram
//! echoed back, SCTP a crafted INIT sent from the source pod on a raw
//! socket and looked for at the destination pod (this kernel has no SCTP
//! sockets).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnetwork::Ipv4Network;
use weft_dataplane::netns::run_in;
use weft_datastore::Datastore;
use weft_model::namespace::{NAME_LABEL, Namespace};
use weft_model::policy::Protocol;
use weft_model::policy_case::{CasePod, CaseResults, PolicyCase, Probe, ProbeResult};
use weft_model::selector::Labels;
use weft_model::{ContainerPort, NetworkPolicy, PolicyPod, Snapshot};
use weft_twin::wire::{SctpCommonHeader, SctpInit};

use crate::objects::{LabelChange, label_namespace, label_pod};
use crate::probe::{self, ProbeError};
use crate::state::{LabState, Pod};
use crate::{LabRef, PodSpec, UpOptions, add_pod, agent_api, del_pod, kubernetes, topology};

/// How `lab netpol` finds or makes its lab and how long it waits.
#[derive(Debug, Clone)]
pub struct NetpolOptions {
    /// Where weft-agent, weft-cni and weftctl are, for a lab this run
    /// brings up.
    pub bin_dir: PathBuf,
    /// For agents to start (a new lab, a new node).
    pub ready_timeout: Duration,
    /// For every agent to program the case's policy inputs.
    pub converge_timeout: Duration,
    /// Leave a lab this run brought up in place afterwards.
    pub keep: bool,
}

impl NetpolOptions {
    pub fn new(bin_dir: PathBuf) -> NetpolOptions {
        NetpolOptions {
            bin_dir,
            ready_timeout: Duration::from_secs(60),
            converge_timeout: Duration::from_secs(30),
            keep: false,
        }
    }
}

/// The answer, and where the time went.
#[derive(Debug, Clone)]
pub struct NetpolRun {
    pub results: CaseResults,
    /// Whether this run brought the lab up.
    pub brought_up: bool,
    /// Finding the lab, or bringing it up or adding nodes.
    pub lab: Duration,
    /// Making the lab match the case (nodes, pods, namespaces, policies).
    pub reconcile: Duration,
    /// Until every agent had programmed the case's inputs.
    pub converge: Duration,
    /// Running the probes.
    pub probe: Duration,
}

/// Runs `case` on lab `lab` (see the module doc). A lab this run brings
/// up is torn down again afterwards, also on failure, unless `keep`.
pub fn run(lab: &LabRef, case: &PolicyCase, options: &NetpolOptions) -> Result<NetpolRun> {
    let names = lab_pod_names(case)?;
    check_case(case)?;
    let groups = case.nodes().len().max(1) as u32;
    let started = Instant::now();
    let (mut state, brought_up) = ensure_lab(lab, groups, options)?;
    let lab_took = started.elapsed();
    let ran = run_on(&mut state, case, &names, options);
    if brought_up && !options.keep {
        let down = crate::down(lab);
        match (&ran, down) {
            (_, Ok(_)) => {}
            (Ok(_), Err(e)) => return Err(e.context("tearing down the lab this run brought up")),
            (Err(_), Err(e)) => eprintln!("warning: tearing down lab {}: {e:#}", lab.lab),
        }
    }
    ran.map(|run| NetpolRun {
        brought_up,
        lab: lab_took,
        ..run
    })
}

fn run_on(
    state: &mut LabState,
    case: &PolicyCase,
    names: &BTreeMap<String, String>,
    options: &NetpolOptions,
) -> Result<NetpolRun> {
    let started = Instant::now();
    let applied = reconcile(state, case, names, options)?;
    let reconcile_took = started.elapsed();
    let started = Instant::now();
    wait_programmed(state, case, &applied, options.converge_timeout)?;
    let converge = started.elapsed();
    let started = Instant::now();
    let results = run_probes(state, case, names)?;
    Ok(NetpolRun {
        results,
        brought_up: false,
        lab: Duration::ZERO,
        reconcile: reconcile_took,
        converge,
        probe: started.elapsed(),
    })
}

/// Each case pod's lab pod name, `namespace-name`: lab pods are named
/// once per lab, case pods once per namespace.
pub fn lab_pod_names(case: &PolicyCase) -> Result<BTreeMap<String, String>> {
    let mut names = BTreeMap::new();
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    for pod in &case.pods {
        let name = format!("{}-{}", pod.namespace, pod.name);
        crate::plan::validate_pod_name(&name)
            .with_context(|| format!("pod {} becomes lab pod {name:?}", pod.id()))?;
        if let Some(other) = taken.insert(name.clone(), pod.id()) {
            bail!(
                "pods {other} and {} would both be lab pod {name:?}; rename one",
                pod.id()
            );
        }
        names.insert(pod.id(), name);
    }
    Ok(names)
}

/// What the lab cannot run that the case format allows: probes nothing
/// would answer, and two policies of one name (the store keeps one).
fn check_case(case: &PolicyCase) -> Result<()> {
    let mut policies = BTreeMap::new();
    for (i, policy) in case.policies.iter().enumerate() {
        let id = format!("{}/{}", policy.namespace(), policy.name());
        if let Some(first) = policies.insert(id.clone(), i) {
            bail!("policies[{i}] is {id} as policies[{first}] is; a store holds one of them");
        }
    }
    for (i, p) in case.probes.iter().enumerate() {
        if p.protocol == Protocol::Sctp {
            continue; // seen or not seen at the pod: nothing needs to listen
        }
        let to = case.pod(&p.to).expect("parse_case checks probes' pods");
        if !to
            .ports
            .iter()
            .any(|c| c.container_port == p.port && c.protocol == p.protocol)
        {
            bail!(
                "probes[{i}] ({} -> {} {}/{}): {} has no {} container port {}, so nothing \
                 would answer it on the lab and a denial could not be told from a closed port",
                p.from,
                p.to,
                p.port,
                p.protocol.name(),
                p.to,
                p.protocol.name(),
                p.port
            );
        }
    }
    Ok(())
}

/// The running lab with at least `nodes` nodes: the existing one (nodes
/// added if too few), or a new one; and whether this made it.
fn ensure_lab(lab: &LabRef, nodes: u32, options: &NetpolOptions) -> Result<(LabState, bool)> {
    let running =
        LabState::load(&lab.state_dir)?.filter(|state| topology::netns_exists(&state.fabric.netns));
    let Some(mut state) = running else {
        let up = UpOptions {
            ready_timeout: options.ready_timeout,
            ..UpOptions::new(nodes, 0, options.bin_dir.clone())
        };
        return Ok((crate::up(lab, &up)?, true));
    };
    while (state.nodes.len() as u32) < nodes {
        crate::add_node(
            &mut state,
            crate::NodeAddOptions {
                ready_timeout: options.ready_timeout,
                wait_converged: true,
            },
        )?;
    }
    Ok((state, false))
}

/// Where the case's pods are in the lab: the lab node of each /24.
struct Placement {
    nodes: BTreeMap<Ipv4Network, String>,
}

impl Placement {
    fn node_of(&self, pod: &CasePod) -> &str {
        &self.nodes[&pod.node_subnet()]
    }
}

/// What the lab was made to hold.
struct Applied {
    placement: Placement,
    inputs: Inputs,
}

/// The policy inputs as written, by datastore.
enum Inputs {
    /// The case's policies as written to the directory store
    /// ([`lab_policies`]); namespaces and pods are the case's and the lab's.
    Store(Vec<NetworkPolicy>),
    /// Written to the API server of a Kubernetes lab.
    Api(ApiInputs),
}

/// What a Kubernetes lab's API server was made to hold, to recognise in
/// Weft's cluster source's snapshot once it has seen all of it.
struct ApiInputs {
    /// Every namespace but the API server's own, with its labels as
    /// selectors see them.
    namespaces: BTreeMap<String, Labels>,
    /// The policies as the API server returned them, converted as the
    /// source converts them.
    policies: BTreeMap<(String, String), NetworkPolicy>,
}

/// Makes the lab hold exactly the case: agents running on its nodes,
/// pods, namespaces, policies.
fn reconcile(
    state: &mut LabState,
    case: &PolicyCase,
    names: &BTreeMap<String, String>,
    options: &NetpolOptions,
) -> Result<Applied> {
    let mut lab_nodes: Vec<(u32, String)> = state
        .nodes
        .iter()
        .map(|n| (n.index, n.name.clone()))
        .collect();
    lab_nodes.sort();
    let placement = Placement {
        nodes: case
            .nodes()
            .into_keys()
            .zip(lab_nodes.into_iter().map(|(_, name)| name))
            .collect(),
    };
    for node in placement.nodes.values() {
        crate::start_agent(state, node, options.ready_timeout)?;
    }
    let on_kubernetes = state.kubernetes.is_some();
    let namespaces = case_namespaces(case);
    // A Pod needs its namespace; one apply makes or relabels them all.
    let listed = if on_kubernetes {
        let listed = kubernetes::get_all(state, "namespaces,networkpolicies")?;
        apply_namespaces(state, &namespaces)?;
        listed
    } else {
        Vec::new()
    };

    let desired: BTreeMap<&str, (&CasePod, &str)> = case
        .pods
        .iter()
        .map(|pod| (names[&pod.id()].as_str(), (pod, placement.node_of(pod))))
        .collect();
    // Gone, or to be made again: elsewhere, other ports, never attached.
    let stale: Vec<String> = state
        .pods
        .iter()
        .filter(|lab_pod| match desired.get(lab_pod.name.as_str()) {
            None => true,
            Some((pod, node)) => {
                lab_pod.namespace != pod.namespace
                    || lab_pod.node != *node
                    || lab_pod.ip.is_none()
                    || sorted(&lab_pod.ports) != sorted(&pod.ports)
            }
        })
        .map(|p| p.name.clone())
        .collect();
    for name in stale {
        del_pod(state, &name).with_context(|| format!("removing lab pod {name}"))?;
    }
    for (name, (pod, node)) in &desired {
        match state.pod(name).ok().map(|p| p.labels.clone()) {
            Some(labels) if labels == pod.labels => {}
            Some(labels) => {
                label_pod(state, name, &label_changes(&labels, &pod.labels))
                    .with_context(|| format!("relabelling pod {}", pod.id()))?;
            }
            None => {
                let spec = PodSpec {
                    namespace: pod.namespace.clone(),
                    labels: pod.labels.clone(),
                    ports: pod.ports.clone(),
                };
                add_pod(state, node, name, &spec)
                    .with_context(|| format!("adding pod {}", pod.id()))?;
            }
        }
    }

    let addresses: BTreeMap<Ipv4Addr, Ipv4Addr> = case
        .pods
        .iter()
        .filter_map(|pod| Some((pod.ip, state.pod(&names[&pod.id()]).ok()?.ip?)))
        .collect();
    let policies = lab_policies(case, &addresses)?;
    let inputs = if on_kubernetes {
        Inputs::Api(apply_policies(state, &listed, namespaces, &policies)?)
    } else {
        write_store(state, case, &policies)?;
        Inputs::Store(policies)
    };
    Ok(Applied { placement, inputs })
}

/// Every namespace a case needs, with the labels it gives it: its own
/// and those only its pods name (no labels); the name label is the
/// API server's to set.
fn case_namespaces(case: &PolicyCase) -> BTreeMap<String, Labels> {
    let mut namespaces: BTreeMap<String, Labels> = (case.pods.iter())
        .map(|pod| (pod.namespace.clone(), Labels::new()))
        .collect();
    for (name, ns) in &case.namespaces {
        let mut labels = ns.labels.clone();
        labels.remove(NAME_LABEL);
        namespaces.insert(name.clone(), labels);
    }
    namespaces
}

/// The namespaces of the API server's own, which a case neither needs
/// nor may delete.
fn is_system_namespace(name: &str) -> bool {
    name == "default" || name.starts_with("kube-")
}

/// Makes (or relabels) every namespace the case needs on a Kubernetes
/// lab in one apply; labels the apply cannot remove (set by someone
/// else than an apply) are removed one namespace at a time.
fn apply_namespaces(state: &LabState, namespaces: &BTreeMap<String, Labels>) -> Result<()> {
    let objects: Vec<serde_json::Value> = (namespaces.iter())
        .map(|(name, labels)| {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels},
            })
        })
        .collect();
    let held =
        kubernetes::apply_objects(state, &objects).context("applying the case's namespaces")?;
    for ns in held {
        let name = ns["metadata"]["name"].as_str().unwrap_or_default();
        let Some(want) = namespaces.get(name) else {
            continue;
        };
        let have: Labels =
            serde_json::from_value(ns["metadata"]["labels"].clone()).unwrap_or_default();
        let extra: Vec<String> = (have.keys())
            .filter(|k| !want.contains_key(*k) && *k != NAME_LABEL)
            .map(|k| format!("{k}-"))
            .collect();
        if !extra.is_empty() {
            kubernetes::label(state, "namespace", None, name, &extra)
                .with_context(|| format!("removing labels {extra:?} of namespace {name}"))?;
        }
    }
    Ok(())
}

/// Makes a Kubernetes lab's API server hold exactly the case's policies
/// (one apply) and no namespace (with what is in it) that the case does
/// not have, but the server's own (one delete); `listed` is what it held
/// before. Returns what it then holds.
fn apply_policies(
    state: &LabState,
    listed: &[serde_json::Value],
    namespaces: BTreeMap<String, Labels>,
    policies: &[NetworkPolicy],
) -> Result<ApiInputs> {
    let wanted: BTreeSet<(&str, &str)> =
        policies.iter().map(|p| (p.namespace(), p.name())).collect();
    let unwanted: Vec<serde_json::Value> = (listed.iter())
        .filter(|object| {
            let meta = &object["metadata"];
            let name = meta["name"].as_str().unwrap_or_default();
            match object["kind"].as_str() {
                Some("Namespace") => !namespaces.contains_key(name) && !is_system_namespace(name),
                Some("NetworkPolicy") => {
                    !wanted.contains(&(meta["namespace"].as_str().unwrap_or_default(), name))
                }
                _ => false,
            }
        })
        .map(|object| {
            serde_json::json!({
                "apiVersion": object["apiVersion"],
                "kind": object["kind"],
                "metadata": {
                    "name": object["metadata"]["name"],
                    "namespace": object["metadata"]["namespace"],
                },
            })
        })
        .collect();
    kubernetes::delete_objects(state, &unwanted)
        .context("deleting the namespaces and policies the case does not have")?;
    let objects: Vec<serde_json::Value> = (policies.iter())
        .map(|p| serde_json::to_value(p).expect("a policy serializes to JSON"))
        .collect();
    let mut held =
        kubernetes::apply_objects(state, &objects).context("applying the case's policies")?;
    // A policy someone else wrote too (`lab apply`, kubectl) may keep
    // fields of theirs the case does not have: made again as the case's.
    let foreign: Vec<serde_json::Value> = (held.iter())
        .filter(|object| kubernetes::foreign_fields(object))
        .cloned()
        .collect();
    if !foreign.is_empty() {
        kubernetes::delete_objects(state, &foreign)
            .context("deleting policies others wrote fields of")?;
        held =
            kubernetes::apply_objects(state, &objects).context("applying the case's policies")?;
    }
    let policies = (held.iter())
        .map(|object| {
            let policy = kubernetes::model_policy(object)?;
            Ok((
                (policy.namespace().to_string(), policy.name().to_string()),
                policy,
            ))
        })
        .collect::<Result<_>>()?;
    let namespaces = (namespaces.into_iter())
        .map(|(name, labels)| {
            let labels = Namespace::new(&name, labels).labels();
            (name, labels)
        })
        .collect();
    Ok(ApiInputs {
        namespaces,
        policies,
    })
}

impl ApiInputs {
    /// Whether `snapshot` holds exactly what was written: these
    /// namespaces (and the server's own), these policies, and the lab's
    /// pods at their addresses; what differs first otherwise.
    fn check(&self, snapshot: &Snapshot, pods: &[PolicyPod]) -> std::result::Result<(), String> {
        let namespaces: BTreeMap<String, Labels> = (snapshot.namespaces.iter())
            .filter(|ns| !is_system_namespace(ns.name()) || self.namespaces.contains_key(ns.name()))
            .map(|ns| (ns.name().to_string(), ns.labels()))
            .collect();
        if namespaces != self.namespaces {
            return Err(format!(
                "namespaces {namespaces:?}, written {:?}",
                self.namespaces
            ));
        }
        let policies: BTreeMap<(String, String), NetworkPolicy> =
            (snapshot.network_policies.iter())
                .map(|p| ((p.namespace().to_string(), p.name().to_string()), p.clone()))
                .collect();
        if policies != self.policies {
            let differ: Vec<String> = (policies.keys().chain(self.policies.keys()))
                .filter(|id| policies.get(*id) != self.policies.get(*id))
                .map(|(ns, name)| format!("{ns}/{name}"))
                .collect();
            return Err(format!("policies {differ:?} differ from what was written"));
        }
        let by_id =
            |pods: &mut dyn Iterator<Item = PolicyPod>| -> BTreeMap<(String, String), PolicyPod> {
                pods.map(|mut pod| {
                    pod.ports.sort();
                    ((pod.namespace.clone(), pod.name.clone()), pod)
                })
                .collect()
            };
        let listed = by_id(&mut snapshot.endpoints.iter().map(PolicyPod::from));
        let lab = by_id(&mut pods.iter().cloned());
        if listed != lab {
            let differ: Vec<String> = (listed.keys().chain(lab.keys()))
                .filter(|id| listed.get(*id) != lab.get(*id))
                .map(|(ns, name)| format!("{ns}/{name}"))
                .collect();
            return Err(format!("pods {differ:?} differ from the lab's"));
        }
        Ok(())
    }
}

/// Makes the directory store hold exactly the case's namespaces and
/// `policies`.
fn write_store(state: &LabState, case: &PolicyCase, policies: &[NetworkPolicy]) -> Result<()> {
    let store = Datastore::open(&state.datastore_dir())?;
    for ns in store.namespaces()? {
        if !case.namespaces.contains_key(ns.name()) {
            store.delete_namespace(ns.name())?;
        }
    }
    for (name, ns) in &case.namespaces {
        let have = store.namespace(name)?.map(|n| n.labels());
        let want = Namespace::new(name, ns.labels.clone()).labels();
        if have.as_ref() != Some(&want) {
            let changes = match &have {
                Some(have) => label_changes(have, &want),
                None => label_changes(&BTreeMap::new(), &want),
            };
            let changes: Vec<LabelChange> = changes
                .into_iter()
                .filter(|c| !matches!(c, LabelChange::Set(k, _) | LabelChange::Remove(k) if k == NAME_LABEL))
                .collect();
            label_namespace(state, name, &changes)
                .with_context(|| format!("labelling namespace {name}"))?;
        }
    }

    let wanted: BTreeMap<(&str, &str), &NetworkPolicy> = policies
        .iter()
        .map(|p| ((p.namespace(), p.name()), p))
        .collect();
    for policy in store.network_policies()? {
        if !wanted.contains_key(&(policy.namespace(), policy.name())) {
            store.delete_network_policy(policy.namespace(), policy.name())?;
        }
    }
    let stored: BTreeMap<(String, String), NetworkPolicy> = store
        .network_policies()?
        .into_iter()
        .map(|p| ((p.namespace().to_string(), p.name().to_string()), p))
        .collect();
    for ((namespace, name), policy) in wanted {
        if stored.get(&(namespace.to_string(), name.to_string())) != Some(policy) {
            store.put_network_policy(policy)?;
        }
    }
    Ok(())
}

/// The case's policies as the lab runs them: an ipBlock naming a pod's
/// case address alone (a /32, as upstream's tests write them) names its
/// lab address instead. Any other block must hold the same pods at
/// their lab addresses as at their case addresses, or the case is
/// refused: the lab cannot give pods the case's addresses.
fn lab_policies(
    case: &PolicyCase,
    addresses: &BTreeMap<Ipv4Addr, Ipv4Addr>,
) -> Result<Vec<NetworkPolicy>> {
    let mut policies = case.policies.clone();
    for (i, policy) in policies.iter_mut().enumerate() {
        let id = format!("policies[{i}] ({}/{})", policy.namespace(), policy.name());
        let spec = &mut policy.spec;
        let peers = (spec.ingress.iter_mut().flat_map(|r| r.from.iter_mut()))
            .chain(spec.egress.iter_mut().flat_map(|r| r.to.iter_mut()));
        for block in peers.filter_map(|peer| peer.ip_block.as_mut()) {
            for text in std::iter::once(&mut block.cidr).chain(block.except.iter_mut()) {
                *text = lab_cidr(text, case, addresses).with_context(|| id.clone())?;
            }
        }
    }
    Ok(policies)
}

/// One CIDR of an ipBlock on the lab (see [`lab_policies`]).
fn lab_cidr(
    text: &str,
    case: &PolicyCase,
    addresses: &BTreeMap<Ipv4Addr, Ipv4Addr>,
) -> Result<String> {
    let Ok(ipnetwork::IpNetwork::V4(net)) = text.parse::<ipnetwork::IpNetwork>() else {
        return Ok(text.to_string()); // IPv6 holds no lab pod
    };
    if net.prefix() == 32
        && let Some(lab) = addresses.get(&net.ip())
    {
        return Ok(format!("{lab}/32"));
    }
    for pod in &case.pods {
        let Some(&lab) = addresses.get(&pod.ip) else {
            continue;
        };
        if net.contains(pod.ip) != net.contains(lab) {
            bail!(
                "ipBlock CIDR {text} holds pod {} at {} {} but not at {}: the lab gives pods \
                 its own addresses and moves only a pod's /32 to them",
                pod.id(),
                if net.contains(pod.ip) {
                    "its case address"
                } else {
                    "its lab address"
                },
                if net.contains(pod.ip) { pod.ip } else { lab },
                if net.contains(pod.ip) { lab } else { pod.ip },
            );
        }
    }
    Ok(text.to_string())
}

fn sorted(ports: &[ContainerPort]) -> Vec<ContainerPort> {
    let mut ports = ports.to_vec();
    ports.sort();
    ports
}

/// The `lab label` edits that turn `have` into `want`.
fn label_changes(
    have: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> Vec<LabelChange> {
    let removed = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .map(|k| LabelChange::Remove(k.clone()));
    let set = want
        .iter()
        .filter(|(k, v)| have.get(*k) != Some(v))
        .map(|(k, v)| LabelChange::Set(k.clone(), v.clone()));
    removed.chain(set).collect()
}

/// How often an agent is asked for its digest while waiting.
const POLL: Duration = Duration::from_millis(20);

/// The digest of the policy inputs as the lab holds them: on the
/// directory store, of the case's namespaces, the lab's pods and the
/// policies as written; on Kubernetes, of the cluster Weft's own source
/// lists from the API server once it holds everything written (the
/// server adds namespaces and defaults of its own), computed as the
/// agents compute theirs.
fn inputs_digest(
    state: &LabState,
    case: &PolicyCase,
    inputs: &Inputs,
    timeout: Duration,
) -> Result<String> {
    let pods: Vec<PolicyPod> = state.pods.iter().map(policy_pod).collect();
    match inputs {
        Inputs::Store(policies) => Ok(weft_calc::policy::digest::digest(
            &case.namespace_objects(),
            &pods,
            policies,
        )),
        Inputs::Api(api) => {
            let snapshot = kubernetes::wait_snapshot(state, timeout, |s| api.check(s, &pods))?;
            let mut cluster = weft_calc::Cluster::default();
            cluster.reset(snapshot);
            Ok(weft_calc::policy::digest::cluster_digest(&cluster))
        }
    }
}

/// Waits until the agent of every node of the case reports the digest of
/// the case's inputs as the lab holds them ([`inputs_digest`]); fails
/// naming the first node that does not within `timeout`.
fn wait_programmed(
    state: &LabState,
    case: &PolicyCase,
    applied: &Applied,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let want = inputs_digest(state, case, &applied.inputs, timeout)?;
    agent_api::block_on(async {
        for name in applied.placement.nodes.values() {
            let node = state.node(name)?;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let have = agent_api::status(&node.socket, left.max(POLL)).await;
                match &have {
                    Ok(status) if status.policy_digest == want => break,
                    _ if Instant::now() < deadline => {
                        tokio::time::sleep(POLL).await;
                    }
                    Ok(status) => bail!(
                        "{name}'s agent has not programmed the case's policy inputs after {timeout:?}: \
                         it reports digest {}, the case's is {want} ({} pods, {} namespaces, \
                         {} policies); see its log {}",
                        if status.policy_digest.is_empty() {
                            "none (no policy programmed yet, or an agent without digests)"
                        } else {
                            &status.policy_digest
                        },
                        state.pods.len(),
                        case.namespaces.len(),
                        case.policies.len(),
                        node.state_dir.join("agent.log").display()
                    ),
                    Err(e) => bail!(
                        "{name}'s agent did not answer within {timeout:?} while the lab waited for \
                         it to program the case's policy inputs: {e:#}"
                    ),
                }
            }
        }
        Ok(())
    })
}

/// A lab pod as the agents' policy compiler sees it.
fn policy_pod(pod: &Pod) -> PolicyPod {
    PolicyPod {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        labels: pod.labels.clone(),
        address: pod.ip,
        node: pod.node.clone(),
        ports: pod.ports.clone(),
    }
}

/// Per try of a TCP connection or a UDP or SCTP exchange: a denied probe
/// costs its tries times this, about a second.
const TRY_TIMEOUT: Duration = Duration::from_millis(300);
/// Tries: an allowed probe's first packet may wait for ARP or be lost.
const TRIES: u32 = 3;

/// Runs every probe at once, one thread each; the answers in probe order.
fn run_probes(
    state: &LabState,
    case: &PolicyCase,
    names: &BTreeMap<String, String>,
) -> Result<CaseResults> {
    let pod_of = |id: &str| -> Result<(PathBuf, Ipv4Addr)> {
        let pod = state.pod(&names[id])?;
        let ip = pod
            .ip
            .with_context(|| format!("pod {id} has no address (its ADD never completed)"))?;
        Ok((topology::netns_path(&pod.netns), ip))
    };
    let mut jobs = Vec::new();
    for probe in &case.probes {
        let (from, from_ip) = pod_of(&probe.from)?;
        let (to, to_ip) = pod_of(&probe.to)?;
        let probe = probe.clone();
        jobs.push(std::thread::spawn(move || {
            let allowed = run_probe(&probe, &from, from_ip, &to, to_ip);
            (probe, allowed)
        }));
    }
    let mut results = Vec::new();
    for job in jobs {
        let (probe, allowed) = job
            .join()
            .map_err(|_| anyhow::anyhow!("a probe thread panicked"))?;
        let allowed = allowed.with_context(|| {
            format!(
                "probe {} -> {} {}/{}",
                probe.from,
                probe.to,
                probe.port,
                probe.protocol.name()
            )
        })?;
        results.push(ProbeResult::of(&probe, allowed));
    }
    Ok(CaseResults { results })
}

/// One probe: whether the connection or exchange got through. An error
/// only when the probe itself could not be run (no namespace, no socket).
fn run_probe(
    probe: &Probe,
    from: &Path,
    from_ip: Ipv4Addr,
    to: &Path,
    to_ip: Ipv4Addr,
) -> Result<bool> {
    let dst = SocketAddrV4::new(to_ip, probe.port);
    let message = format!("netpol {} -> {}", probe.from, probe.to);
    let verdict = |r: Result<(), ProbeError>| match r {
        Ok(()) => Ok(true),
        Err(ProbeError::Netns(e)) => Err(anyhow::Error::new(e)),
        Err(e @ ProbeError::WrongEcho { .. }) => Err(anyhow::Error::new(e)),
        Err(_) => Ok(false),
    };
    match probe.protocol {
        Protocol::Tcp => verdict(probe::tcp_exchange(from, dst, &message, TRY_TIMEOUT, TRIES)),
        Protocol::Udp => verdict(probe::udp_exchange(from, dst, &message, TRY_TIMEOUT, TRIES)),
        Protocol::Sctp => sctp_init_seen(from, from_ip, to, dst, TRY_TIMEOUT, TRIES),
        Protocol::Unknown(ref name) => bail!("protocol {name} cannot be probed"),
    }
}

/// Sends an SCTP INIT (the twin's, [`SctpInit`]) from namespace `from` (whose pod address is
/// `from_ip`) to `dst` on a raw IP socket, up to `tries` times, and says
/// whether it arrived in namespace `to`: a packet capture there sees an
/// INIT with these addresses, ports and initiate tag. Nothing has to
/// answer it: this kernel has no SCTP, only what crosses the policy
/// programs counts.
pub fn sctp_init_seen(
    from: &Path,
    from_ip: Ipv4Addr,
    to: &Path,
    dst: SocketAddrV4,
    timeout: Duration,
    tries: u32,
) -> Result<bool> {
    let capture =
        run_in(to, open_capture)?.with_context(|| format!("capturing in {}", to.display()))?;
    let sender = run_in(from, || {
        raw_socket(libc::SOCK_RAW, libc::AF_INET, libc::IPPROTO_SCTP)
    })?
    .with_context(|| format!("opening a raw SCTP socket in {}", from.display()))?;
    let random = random_u64()?;
    let source_port = 32768 + (random % 28000) as u16;
    let tag = ((random >> 32) as u32).max(1);
    let init = SctpInit {
        src_port: source_port,
        dst_port: dst.port(),
        initiate_tag: tag,
    }
    .bytes();
    let addr = probe::sockaddr(*dst.ip());
    let mut buf = [0u8; 2048];
    for _ in 0..tries.max(1) {
        // SAFETY: buffer and address are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                sender.as_raw_fd(),
                init.as_ptr().cast(),
                init.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending an SCTP INIT to {dst}"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !probe::wait_readable(&capture, left)? {
                break;
            }
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(capture.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e).context("reading the capture");
            }
            if is_our_init(&buf[..n as usize], from_ip, dst, source_port, tag) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// An AF_PACKET socket receiving every IPv4 packet of its namespace,
/// without link-layer headers.
fn open_capture() -> std::io::Result<OwnedFd> {
    raw_socket(
        libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
        libc::AF_PACKET,
        i32::from((libc::ETH_P_IP as u16).to_be()),
    )
}

fn raw_socket(kind: i32, family: i32, protocol: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn random_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom into a buffer of the given length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    Ok(u64::from_ne_bytes(bytes))
}

/// Whether `packet` (IPv4, from the capture) is the INIT this probe sent.
fn is_our_init(
    packet: &[u8],
    from: Ipv4Addr,
    dst: SocketAddrV4,
    source_port: u16,
    tag: u32,
) -> bool {
    let Ok((ip, payload)) = etherparse::Ipv4Slice::from_slice(packet)
        .map(|s| (s.header().to_header(), s.payload().payload.to_vec()))
    else {
        return false;
    };
    let Some(header) = SctpCommonHeader::parse(&payload) else {
        return false;
    };
    // The INIT chunk: type 1, flags, length, then the initiate tag.
    let initiate_tag = payload
        .get(16..20)
        .map(|t| u32::from_be_bytes(t.try_into().expect("four bytes")));
    ip.protocol.0 == libc::IPPROTO_SCTP as u8
        && Ipv4Addr::from(ip.source) == from
        && Ipv4Addr::from(ip.destination) == *dst.ip()
        && header.src_port == source_port
        && header.dst_port == dst.port()
        && header.verification_tag == 0
        && payload.get(12) == Some(&1)
        && initiate_tag == Some(tag)
}

/// The namespaces and nodes a case needs, for the one-line summary.
pub fn summary(case: &PolicyCase) -> String {
    let namespaces: BTreeSet<&str> = case.pods.iter().map(|p| p.namespace.as_str()).collect();
    format!(
        "{} pods in {} namespaces on {} nodes, {} policies, {} probes",
        case.pods.len(),
        namespaces.len(),
        case.nodes().len(),
        case.policies.len(),
        case.probes.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::EndpointRecord;

    #[test]
    fn only_this_probes_init_is_recognised() {
        let init = SctpInit {
            src_port: 40000,
            dst_port: 80,
            initiate_tag: 0xdead_beef,
        }
        .bytes();
        let from = Ipv4Addr::new(10, 244, 1, 2);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 3), 80);
        let header = etherparse::Ipv4Header::new(
            init.len() as u16,
            64,
            etherparse::IpNumber(132),
            from.octets(),
            dst.ip().octets(),
        )
        .unwrap();
        let mut packet = header.to_bytes().to_vec();
        packet.extend_from_slice(&init);
        assert!(is_our_init(&packet, from, dst, 40000, 0xdead_beef));
        assert!(!is_our_init(&packet, from, dst, 40000, 1));
        assert!(!is_our_init(&packet, from, dst, 40001, 0xdead_beef));
        assert!(!is_our_init(&packet[..30], from, dst, 40000, 0xdead_beef));
    }

    #[test]
    fn label_changes_turn_one_set_into_the_other() {
        let have = weft_model::policy::labels([("a", "1"), ("b", "2")]);
        let want = weft_model::policy::labels([("b", "3"), ("c", "4")]);
        let changes = label_changes(&have, &want);
        assert_eq!(crate::objects::relabel(&have, &changes), want);
        assert!(label_changes(&want, &want).is_empty());
    }

    #[test]
    fn ip_blocks_follow_pods_to_their_lab_addresses() {
        let case = weft_model::policy_case::parse_case(
            r#"{"pods": [
              {"namespace": "x", "name": "a", "ip": "10.244.1.10"},
              {"namespace": "x", "name": "b", "ip": "10.244.2.11"}],
            "policies": [{"metadata": {"name": "p", "namespace": "x"},
              "spec": {"podSelector": {}, "egress": [{"to": [
                {"ipBlock": {"cidr": "0.0.0.0/4", "except": ["10.244.2.11/32"]}},
                {"ipBlock": {"cidr": "10.244.1.10/32"}}]}]}}]}"#,
        )
        .unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let addresses = BTreeMap::from([
            (ip("10.244.1.10"), ip("10.244.1.3")),
            (ip("10.244.2.11"), ip("10.244.2.7")),
        ]);
        let policies = lab_policies(&case, &addresses).unwrap();
        let to = &policies[0].spec.egress[0].to;
        let block = |i: usize| to[i].ip_block.clone().unwrap();
        assert_eq!(block(0).cidr, "0.0.0.0/4");
        assert_eq!(block(0).except, ["10.244.2.7/32"]);
        assert_eq!(block(1).cidr, "10.244.1.3/32");
        // A /24 holding a pod at its case address but not at its lab one.
        let moved = BTreeMap::from([(ip("10.244.1.10"), ip("10.244.3.3"))]);
        let e = format!(
            "{:#}",
            lab_cidr("10.244.1.0/24", &case, &moved).unwrap_err()
        );
        assert!(e.contains("x/a") && e.contains("10.244.3.3"), "{e}");
    }

    #[test]
    fn a_snapshot_is_accepted_only_when_it_holds_exactly_what_was_written() {
        let case = weft_model::policy_case::parse_case(
            r#"{"namespaces": {"x": {"labels": {"ns": "x", "kubernetes.io/metadata.name": "x"}}},
              "pods": [{"namespace": "x", "name": "a", "ip": "10.244.1.10"},
                       {"namespace": "y", "name": "b", "ip": "10.244.2.10"}],
              "policies": [{"metadata": {"name": "p", "namespace": "x"},
                "spec": {"podSelector": {}}}]}"#,
        )
        .unwrap();
        // Pods' namespaces the case does not declare get no labels; the
        // name label is the server's.
        let namespaces = case_namespaces(&case);
        assert_eq!(
            namespaces,
            BTreeMap::from([
                ("x".to_string(), weft_model::policy::labels([("ns", "x")])),
                ("y".to_string(), Labels::new()),
            ])
        );
        let written = ApiInputs {
            namespaces: (namespaces.iter())
                .map(|(n, l)| (n.clone(), Namespace::new(n, l.clone()).labels()))
                .collect(),
            policies: BTreeMap::from([(
                ("x".to_string(), "p".to_string()),
                case.policies[0].clone(),
            )]),
        };
        let endpoint = EndpointRecord {
            container_id: "uid".into(),
            ifname: "eth0".into(),
            node: "node1".into(),
            pod_name: "x-a".into(),
            pod_namespace: "x".into(),
            labels: BTreeMap::new(),
            address: Ipv4Addr::new(10, 244, 0, 3),
            host_ifname: String::new(),
            netns: String::new(),
            ports: Vec::new(),
        };
        let lab_pods = [PolicyPod::from(&endpoint)];
        let server_namespaces = ["default", "kube-system", "x", "y"]
            .map(|n| Namespace::new(n, namespaces.get(n).cloned().unwrap_or_default()));
        let snapshot = Snapshot {
            nodes: Vec::new(),
            endpoints: vec![endpoint.clone()],
            bgp_peers: Vec::new(),
            network_policies: case.policies.clone(),
            namespaces: server_namespaces.to_vec(),
        };
        written.check(&snapshot, &lab_pods).unwrap();

        let mut stale = snapshot.clone();
        stale.namespaces.push(Namespace::new("z", Labels::new()));
        let e = written.check(&stale, &lab_pods).unwrap_err();
        assert!(e.contains("\"z\""), "a namespace being deleted: {e}");
        let mut stale = snapshot.clone();
        stale.network_policies[0].spec.policy_types = Some(Vec::new());
        let e = written.check(&stale, &lab_pods).unwrap_err();
        assert!(e.contains("x/p"), "an older version of a policy: {e}");
        let mut stale = snapshot.clone();
        stale.endpoints[0].address = Ipv4Addr::new(10, 244, 0, 9);
        let e = written.check(&stale, &lab_pods).unwrap_err();
        assert!(e.contains("x/x-a"), "a pod at another address: {e}");
        let mut stale = snapshot;
        stale.endpoints.clear();
        let e = written.check(&stale, &lab_pods).unwrap_err();
        assert!(e.contains("x/x-a"), "a pod not yet listed: {e}");
    }

    const CASE: &str = r#"{"pods": [
        {"namespace": "x", "name": "a", "ip": "10.244.1.10",
         "ports": [{"containerPort": 80, "protocol": "TCP"}]},
        {"namespace": "x-a", "name": "b", "ip": "10.244.2.10"},
        {"namespace": "x", "name": "a-b", "ip": "10.244.2.11"}],
      "probes": [{"from": "x/a", "to": "x/a", "port": 81, "protocol": "TCP"}]}"#;

    #[test]
    fn lab_names_must_not_collide_and_probes_need_a_listener() {
        let case = weft_model::policy_case::parse_case(CASE).unwrap();
        let e = lab_pod_names(&case).unwrap_err().to_string();
        assert!(e.contains("x-a/b") && e.contains("x/a-b"), "{e}");
        let e = check_case(&case).unwrap_err().to_string();
        assert!(
            e.contains("probes[0]") && e.contains("no TCP container port 81"),
            "{e}"
        );
        let fine = CASE.replace("\"port\": 81", "\"port\": 80");
        check_case(&weft_model::policy_case::parse_case(&fine).unwrap()).unwrap();
    }
}
