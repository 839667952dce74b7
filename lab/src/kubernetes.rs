//! A Kubernetes lab (`weftctl lab up --kubernetes`, issue #11): the control
//! plane ([`crate::control_plane`]) on the lab's underlay in a namespace of
//! its own, the agents reading the cluster from its API server with the
//! weft-agent ServiceAccount's token and deploy/rbac.yaml's role (so least
//! privilege is exercised, not assumed), and the lab playing the part of
//! the kubelet that no lab node runs: it registers each Node with its
//! InternalIP, binds each lab pod's Pod object to its node before calling
//! the CNI, and writes the Pod's addresses from the CNI result.
//!
//! Everything goes through the kubectl built next to the control plane, as
//! an operator's commands would; the lab keeps no client of its own.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::control_plane::{self, ControlPlane, ControlPlaneConfig, Credentials, KubectlTarget};
use crate::plan;
use crate::state::{Kubernetes, LabState, Node, Pod};
use crate::topology;

/// Weft's CustomResourceDefinitions and the agent's RBAC: the repository's
/// deploy/ files, built into the binary rather than looked up next to it,
/// so an installed weftctl (with no repository around it) works, and a lab
/// always gets the CRD and role of the build whose agent it runs.
const CRDS: &str = include_str!("../../deploy/crds.yaml");
const RBAC: &str = include_str!("../../deploy/rbac.yaml");
/// The agents' identity, as deploy/rbac.yaml names it.
const AGENT_NAMESPACE: &str = "kube-system";
const AGENT_SERVICE_ACCOUNT: &str = "weft-agent";
/// The agents' tokens outlive any lab (the API server caps nothing here).
const TOKEN_DURATION: &str = "8760h";
/// A Pod needs an image; no kubelet ever pulls this one.
const PLACEHOLDER_IMAGE: &str = "weft.invalid/lab-placeholder:none";
/// The controller manager makes a new namespace's `default` ServiceAccount
/// (which a Pod must have) within moments; a Pod create waits this long.
const SERVICE_ACCOUNT_WAIT: Duration = Duration::from_secs(15);
/// The directory under the lab's state directory holding the control
/// plane's files.
pub const DIR: &str = "kubernetes";
/// The control-plane components, as the processes are named.
const COMPONENTS: &[&str] = &["etcd", "kube-apiserver", "kube-controller-manager"];

/// The record of a Kubernetes lab's control plane, before it is started.
pub fn planned(lab: &str, state_dir: &Path, bin_dir: &Path) -> Kubernetes {
    let dir = state_dir.join(DIR);
    Kubernetes {
        netns: plan::control_plane_netns(lab),
        address: plan::CONTROL_PLANE_IP,
        fabric_port: plan::CONTROL_PLANE_PORT.to_string(),
        admin_kubeconfig: dir.join("admin.kubeconfig"),
        dir,
        bin_dir: bin_dir.to_path_buf(),
        processes: Vec::new(),
    }
}

/// The control plane's binaries: under the repository's tool directory
/// above `bin_dir` (where weft-agent is), else above the working directory.
pub fn find_bin_dir(bin_dir: &Path) -> Result<PathBuf> {
    control_plane::find_bin_dir(bin_dir).or_else(|first| {
        let cwd = std::env::current_dir().context("the working directory")?;
        control_plane::find_bin_dir(&cwd).map_err(|_| first)
    })
}

fn the(state: &LabState) -> Result<&Kubernetes> {
    state.kubernetes.as_ref().with_context(|| {
        format!(
            "lab {} is not a Kubernetes lab (bring it up with `weftctl lab up --kubernetes`)",
            state.lab
        )
    })
}

/// The administrator's kubeconfig of a Kubernetes lab; an error for a lab
/// on the directory store.
pub fn admin_kubeconfig(state: &LabState) -> Result<PathBuf> {
    Ok(the(state)?.admin_kubeconfig.clone())
}

fn target(kube: &Kubernetes) -> KubectlTarget {
    KubectlTarget {
        bin_dir: kube.bin_dir.clone(),
        kubeconfig: kube.admin_kubeconfig.clone(),
        netns: kube.netns.clone(),
    }
}

/// kubectl as the lab's administrator.
pub fn kubectl(kube: &Kubernetes, args: &[&str], input: Option<&str>) -> Result<String> {
    control_plane::kubectl(&target(kube), args, input)
}

/// Starts the control plane of `state` (recorded, not yet running): its
/// namespace plugged into the first underlay subnet like a node, etcd, the
/// API server and the controller manager, their pids recorded, then
/// Weft's CRDs and RBAC applied.
pub fn start(state: &mut LabState) -> Result<()> {
    let kube = the(state)?.clone();
    topology::create_netns(&kube.netns)?;
    topology::attach_node(
        &state.fabric.netns,
        state.fabric.bridge_of(0),
        &kube.fabric_port,
        &kube.netns,
        plan::UPLINK,
        kube.address,
        plan::UNDERLAY_PREFIX_LEN,
    )
    .context("plugging the control plane into the fabric")?;
    for (cidr, via) in plan::subnet_routes(0, state.underlay_subnets) {
        topology::add_route(&kube.netns, &cidr, via, plan::UPLINK)
            .with_context(|| format!("routing the control plane to {cidr}"))?;
    }
    let plane = ControlPlane::start(ControlPlaneConfig {
        dir: kube.dir.clone(),
        netns: kube.netns.clone(),
        address: kube.address,
        bin_dir: kube.bin_dir.clone(),
    })?;
    if plane.admin_kubeconfig != kube.admin_kubeconfig {
        bail!(
            "the control plane wrote its kubeconfig to {}, the lab expected {}",
            plane.admin_kubeconfig.display(),
            kube.admin_kubeconfig.display()
        );
    }
    let processes = plane.detach();
    state.kubernetes.as_mut().expect("checked above").processes = processes;
    state.save()?;
    kubectl(&kube, &["apply", "-f", "-"], Some(CRDS)).context("applying deploy/crds.yaml")?;
    kubectl(
        &kube,
        &[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "-f",
            "-",
        ],
        Some(CRDS),
    )
    .context("waiting for Weft's CRDs to be established")?;
    kubectl(&kube, &["apply", "-f", "-"], Some(RBAC)).context("applying deploy/rbac.yaml")?;
    Ok(())
}

/// Ends the control plane of the lab whose state directory is
/// `state_dir`: the recorded pids and any other component still running
/// with its files there (a crash before they were recorded). Returns how
/// many were running.
pub fn stop(state_dir: &Path, recorded: Option<&Kubernetes>) -> Result<usize> {
    let dir = recorded.map_or_else(|| state_dir.join(DIR), |k| k.dir.clone());
    let mut processes: Vec<(String, u32)> =
        recorded.map(|k| k.processes.clone()).unwrap_or_default();
    for (name, pid) in running(&dir) {
        if !processes.iter().any(|(_, p)| *p == pid) {
            processes.push((name, pid));
        }
    }
    // The controller manager first, etcd last, whatever the record's order.
    processes.sort_by_key(|(name, _)| COMPONENTS.iter().position(|c| c == name));
    control_plane::stop_detached(&processes, &dir)
}

/// The control-plane components running with their files in `dir`.
fn running(dir: &Path) -> Vec<(String, u32)> {
    crate::process::pids()
        .into_iter()
        .filter_map(|pid| {
            COMPONENTS
                .iter()
                .find(|name| control_plane::is_process_of(pid, name, dir))
                .map(|name| (name.to_string(), pid))
        })
        .collect()
}

/// Plays the kubelet's registration of the nodes at `indices` of `state`:
/// each one's Node object and status addresses (InternalIP: the underlay
/// address); then, once the controller manager's node IPAM has given each
/// its pod CIDR, records that as the node's and writes the kubeconfig its
/// agent reads the cluster with (a fresh weft-agent ServiceAccount token).
pub fn join_nodes(state: &mut LabState, indices: &[usize], timeout: Duration) -> Result<()> {
    let kube = the(state)?.clone();
    for &i in indices {
        register_node(&kube, &state.nodes[i])?;
    }
    let deadline = Instant::now() + timeout;
    for &i in indices {
        let node = state.nodes[i].clone();
        let pod_cidr = wait_pod_cidr(&kube, &node.name, deadline, timeout)?;
        write_agent_kubeconfig(&kube, &node)?;
        state.nodes[i].pod_cidr = pod_cidr;
        state.save()?;
    }
    Ok(())
}

/// A node's Node object (as its kubelet creates it) and its addresses (as
/// the kubelet reports them through nodes/status).
fn register_node(kube: &Kubernetes, node: &Node) -> Result<()> {
    let object = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
            },
        },
    });
    kubectl(
        kube,
        &[
            "apply",
            "--server-side",
            "--field-manager=weft-lab",
            "-f",
            "-",
        ],
        Some(&object.to_string()),
    )
    .with_context(|| format!("registering Node {}", node.name))?;
    let status = json!({"status": {"addresses": node_addresses(node)}});
    kubectl(
        kube,
        &[
            "patch",
            "node",
            &node.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .with_context(|| format!("writing Node {}'s addresses", node.name))?;
    Ok(())
}

/// What a kubelet reports as a node's addresses.
fn node_addresses(node: &Node) -> serde_json::Value {
    json!([
        {"type": "InternalIP", "address": node.underlay_ip.to_string()},
        {"type": "Hostname", "address": node.name},
    ])
}

fn wait_pod_cidr(
    kube: &Kubernetes,
    node: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<String> {
    loop {
        let cidr = kubectl(
            kube,
            &["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"],
            None,
        )?;
        let cidr = cidr.trim();
        if !cidr.is_empty() {
            return Ok(cidr.to_string());
        }
        if Instant::now() >= deadline {
            bail!(
                "Node {node} has no spec.podCIDR after {} s: is the controller manager's node IPAM running? Its log: {}",
                timeout.as_secs(),
                kube.dir.join("kube-controller-manager.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `<node state>/kubeconfig`: the API server, the cluster CA, and a token
/// of the weft-agent ServiceAccount.
fn write_agent_kubeconfig(kube: &Kubernetes, node: &Node) -> Result<()> {
    let token = kubectl(
        kube,
        &[
            "create",
            "token",
            AGENT_SERVICE_ACCOUNT,
            "-n",
            AGENT_NAMESPACE,
            &format!("--duration={TOKEN_DURATION}"),
        ],
        None,
    )
    .with_context(|| format!("creating a token for {AGENT_NAMESPACE}/{AGENT_SERVICE_ACCOUNT}"))?;
    std::fs::create_dir_all(&node.state_dir)
        .with_context(|| format!("creating {}", node.state_dir.display()))?;
    control_plane::write_kubeconfig(
        &node.kubeconfig(),
        &format!("https://{}:{}", kube.address, control_plane::API_PORT),
        &kube.dir.join("pki").join("ca.crt"),
        Credentials::Token(token.trim()),
    )
}

/// Removes node `name`'s Node object (and with it, for the other agents,
/// the node); none is fine.
pub fn delete_node(state: &LabState, name: &str) -> Result<()> {
    kubectl(
        the(state)?,
        &["delete", "node", name, "--ignore-not-found"],
        None,
    )?;
    Ok(())
}

/// Creates `pod`'s Pod object bound to its node (what the scheduler and
/// the API would have done before a kubelet calls the CNI): its namespace
/// first if there is none, its labels and container ports, no address yet.
pub fn create_pod(state: &LabState, pod: &Pod) -> Result<()> {
    let kube = the(state)?;
    ensure_namespace(kube, &pod.namespace)?;
    let ports: Vec<serde_json::Value> = pod
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({
                "containerPort": p.container_port,
                "protocol": p.protocol.name(),
            });
            if let Some(name) = &p.name {
                port["name"] = json!(name);
            }
            port
        })
        .collect();
    let object = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": pod.labels,
        },
        "spec": {
            "nodeName": pod.node,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": PLACEHOLDER_IMAGE,
                "ports": ports,
            }],
        },
    })
    .to_string();
    let started = Instant::now();
    loop {
        match kubectl(kube, &["create", "-f", "-"], Some(&object)) {
            Ok(_) => return Ok(()),
            // A namespace made just now: its default ServiceAccount follows.
            Err(e)
                if e.to_string().contains("serviceaccount")
                    && started.elapsed() < SERVICE_ACCOUNT_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e.context(format!("creating Pod {}/{}", pod.namespace, pod.name)));
            }
        }
    }
}

fn ensure_namespace(kube: &Kubernetes, namespace: &str) -> Result<()> {
    match kubectl(kube, &["create", "namespace", namespace], None) {
        Err(e) if !e.to_string().contains("AlreadyExists") => {
            Err(e.context(format!("creating namespace {namespace}")))
        }
        _ => Ok(()),
    }
}

/// Writes what a kubelet reports once the pod's sandbox is up: phase
/// Running, its address from the CNI result, its node's address, and its
/// one container running and ready (so `kubectl get pods` reads 1/1).
pub fn set_pod_running(state: &LabState, pod: &Pod, ip: Ipv4Addr) -> Result<()> {
    let kube = the(state)?;
    let host_ip = state.node(&pod.node)?.underlay_ip.to_string();
    let conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        .map(|kind| json!({"type": kind, "status": "True"}));
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "conditions": conditions,
        "containerStatuses": [{
            "name": "main",
            "image": PLACEHOLDER_IMAGE,
            "imageID": "",
            "ready": true,
            "started": true,
            "restartCount": 0,
            "state": {"running": {}},
        }],
    }});
    kubectl(
        kube,
        &[
            "patch",
            "pod",
            &pod.name,
            "-n",
            &pod.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )
    .with_context(|| format!("writing Pod {}/{}'s status", pod.namespace, pod.name))?;
    Ok(())
}

/// Deletes `pod`'s Pod object at once (no kubelet would confirm a graceful
/// deletion); none is fine.
pub fn delete_pod(state: &LabState, pod: &Pod) -> Result<()> {
    kubectl(
        the(state)?,
        &[
            "delete",
            "pod",
            &pod.name,
            "-n",
            &pod.namespace,
            "--grace-period=0",
            "--force",
            "--ignore-not-found",
        ],
        None,
    )
    .with_context(|| format!("deleting Pod {}/{}", pod.namespace, pod.name))?;
    Ok(())
}

/// `kubectl apply -f -` of manifests already checked by the caller.
pub fn apply(state: &LabState, text: &str) -> Result<()> {
    kubectl(the(state)?, &["apply", "-f", "-"], Some(text))?;
    Ok(())
}

/// `kubectl delete` of one object (`namespace` for namespaced kinds);
/// whether there was one.
pub fn delete(
    state: &LabState,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<bool> {
    let mut args = vec![
        "delete",
        resource,
        name,
        "--ignore-not-found",
        "--wait=false",
    ];
    if let Some(namespace) = namespace {
        args.extend(["-n", namespace]);
    }
    let out = kubectl(the(state)?, &args, None)?;
    Ok(!out.trim().is_empty())
}

/// `kubectl label --overwrite` of one object; `changes` as kubectl takes
/// them (`k=v`, `k-`). A namespace is created first if there is none (it
/// may so far exist only in the lab's pods). Returns the object's labels
/// after the change.
pub fn label(
    state: &LabState,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
    changes: &[String],
) -> Result<BTreeMap<String, String>> {
    let kube = the(state)?;
    if resource == "namespace" {
        ensure_namespace(kube, name)?;
    }
    let mut args = vec!["label", "--overwrite", "-o", "json", resource, name];
    if let Some(namespace) = namespace {
        args.extend(["-n", namespace]);
    }
    args.extend(changes.iter().map(String::as_str));
    let out = kubectl(kube, &args, None)?;
    let object: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("kubectl label printed {out:?}"))?;
    Ok(serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default())
}

/// The field manager of the lab's server-side applies.
pub const FIELD_MANAGER: &str = "weft-lab";

/// `kubectl apply --server-side` of `objects` as one List (one process
/// however many; a server-side apply also spares kubectl the OpenAPI
/// schema a client-side one fetches, 0.13 s instead of 0.34): the objects
/// as the API server holds them afterwards, defaults filled in and their
/// managed fields shown. A field the lab applied before and no longer
/// does is removed; one another manager set stays (see [`foreign_fields`]).
pub fn apply_objects(
    state: &LabState,
    objects: &[serde_json::Value],
) -> Result<Vec<serde_json::Value>> {
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string();
    let manager = format!("--field-manager={FIELD_MANAGER}");
    let out = kubectl(
        the(state)?,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            &manager,
            "--show-managed-fields",
            "-f",
            "-",
            "-o",
            "json",
        ],
        Some(&list),
    )?;
    items(&out, "kubectl apply")
}

/// Whether some manager other than the lab's applies owns fields of
/// `object` (as [`apply_objects`] returns it): fields the lab's apply
/// neither sets nor removes.
pub fn foreign_fields(object: &serde_json::Value) -> bool {
    (object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten())
    .any(|entry| entry["manager"] != FIELD_MANAGER)
}

/// `kubectl delete -f -` of `objects` (kind, name and namespace are
/// enough) as one List, without waiting for finalizers; gone ones are fine.
pub fn delete_objects(state: &LabState, objects: &[serde_json::Value]) -> Result<()> {
    if objects.is_empty() {
        return Ok(());
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string();
    kubectl(
        the(state)?,
        &["delete", "-f", "-", "--ignore-not-found", "--wait=false"],
        Some(&list),
    )?;
    Ok(())
}

/// Every object of `resources` (kubectl's comma-separated list) in every
/// namespace.
pub fn get_all(state: &LabState, resources: &str) -> Result<Vec<serde_json::Value>> {
    let out = kubectl(the(state)?, &["get", resources, "-A", "-o", "json"], None)?;
    items(&out, "kubectl get")
}

/// The objects of kubectl's JSON output: a List's items, or one object.
fn items(out: &str, what: &str) -> Result<Vec<serde_json::Value>> {
    let value: serde_json::Value =
        serde_json::from_str(out).with_context(|| format!("{what} printed {out:?}"))?;
    Ok(match value["items"].as_array() {
        Some(items) if value["kind"] == "List" => items.clone(),
        _ => vec![value],
    })
}

/// A NetworkPolicy as the API server printed it, in the model's shape as
/// Weft's cluster source makes it (pruned, converted, checked): what the
/// source's snapshot holds once it has seen this version.
pub fn model_policy(object: &serde_json::Value) -> Result<weft_model::NetworkPolicy> {
    let id = format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    );
    let mut policy: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_value(object.clone())
            .with_context(|| format!("NetworkPolicy {id} as the API server printed it"))?;
    weft_datastore::kubernetes::prune::meta_of(&mut policy);
    weft_datastore::kubernetes::convert::network_policy(&policy)
        .map_err(|e| anyhow::anyhow!("NetworkPolicy {id} as the API server holds it: {e}"))
}

/// Weft's own cluster source ([`weft_datastore::kubernetes::KubernetesSource`],
/// what every agent of the lab runs) on the lab's API server as its
/// administrator: waits until it has listed everything and its snapshot
/// passes `accept` (which says what is still missing otherwise), and
/// returns that snapshot. It runs on a thread of its own that enters the
/// control plane's network namespace, where the API server's address is.
pub fn wait_snapshot(
    state: &LabState,
    timeout: Duration,
    accept: impl Fn(&weft_model::Snapshot) -> std::result::Result<(), String> + Send,
) -> Result<weft_model::Snapshot> {
    let kube = the(state)?;
    let netns = topology::netns_path(&kube.netns);
    let kubeconfig = kube.admin_kubeconfig.clone();
    let deadline = Instant::now() + timeout;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                weft_dataplane::netns::enter(&netns)
                    .with_context(|| format!("entering {}", netns.display()))?;
                crate::agent_api::block_on(async {
                    let client = weft_datastore::kubernetes::connect(Some(&kubeconfig))
                        .await
                        .context("a client for the lab's API server")?;
                    let source = weft_datastore::kubernetes::KubernetesSource::start(client);
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, source.wait_synced())
                        .await
                        .with_context(|| {
                            format!("Weft's cluster source had not listed the lab's API server after {timeout:?}")
                        })?;
                    loop {
                        use weft_datastore::ClusterSource;
                        let snapshot = source.snapshot()?;
                        let missing = match accept(&snapshot) {
                            Ok(()) => return Ok(snapshot),
                            Err(missing) => missing,
                        };
                        if Instant::now() >= deadline {
                            bail!(
                                "the lab's API server, as Weft's cluster source lists it, does not \
                                 hold what was written after {timeout:?}: {missing}"
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the cluster source's thread panicked"))?
    })
}

/// Crashes control-plane component `name` (SIGKILL) and, after `down`,
/// starts it again with the same command line, recording its new pid;
/// returns once the API server answers `/readyz` again (which needs etcd).
/// What the fault tests do to a running lab.
pub fn restart_component(state: &mut LabState, name: &str, down: Duration) -> Result<()> {
    let kube = state
        .kubernetes
        .as_mut()
        .context("not a Kubernetes lab (lab up --kubernetes)")?;
    let (_, pid) = (kube.processes.iter())
        .find(|(n, _)| n == name)
        .cloned()
        .with_context(|| format!("no control-plane component {name} recorded"))?;
    let new = control_plane::respawn_detached(&kube.netns, &kube.dir, name, pid, down)?;
    for (n, p) in &mut kube.processes {
        if n == name {
            *p = new;
        }
    }
    state.save()?;
    let kube = state.kubernetes.as_ref().expect("checked above");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match kubectl(kube, &["get", "--raw", "/readyz"], None) {
            Ok(out) if out.trim() == "ok" => break,
            _ if Instant::now() >= deadline => {
                bail!("the API server is not ready 60 s after {name} restarted")
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_kubernetes_lab_has_a_kubeconfig() {
        let dir = Path::new("/run/weft-lab/k");
        let mut state = LabState::planned("k", dir, Path::new("/bin"), Path::new("/bpf"), 1);
        let err = admin_kubeconfig(&state).unwrap_err().to_string();
        assert!(
            err.contains("lab k is not a Kubernetes lab") && err.contains("--kubernetes"),
            "{err}"
        );
        state.kubernetes = Some(planned("k", dir, Path::new("/tools/bin")));
        assert_eq!(
            admin_kubeconfig(&state).unwrap(),
            Path::new("/run/weft-lab/k/kubernetes/admin.kubeconfig")
        );
        let kube = state.kubernetes.as_ref().unwrap();
        assert_eq!(kube.netns, "k-kube");
        assert!(plan::is_lab_netns("k", &kube.netns));
        assert_eq!(kube.address, plan::CONTROL_PLANE_IP);
    }

    /// The manifests the lab applies are the repository's: the CRD the
    /// agent watches and the role it runs with.
    #[test]
    fn the_lab_applies_the_repositorys_manifests() {
        assert!(CRDS.contains("name: bgppeers.weft.dev"));
        assert!(RBAC.contains(&format!(
            "kind: ServiceAccount\nmetadata:\n  name: {AGENT_SERVICE_ACCOUNT}\n  namespace: {AGENT_NAMESPACE}"
        )));
    }
}
