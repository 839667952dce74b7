//! The `kubernetes` section (issue #11): weft-agent with `--datastore
//! kubernetes` against a real API server (the test control plane), as the
//! DaemonSet's ServiceAccount, first in a cluster holding only its own
//! Node (the baseline), then, in the same control plane, in one holding
//! 100 Nodes and 10,000 Pods, then 1,000 NetworkPolicies more, written
//! through the API by a Rust client (what kubelet and users would have
//! written). Its time to the first complete list and to ready, and its
//! memory: bytes per pod and per policy against the baseline.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use weft_tests::{ClusterAgent, TestControlPlane};

/// The default sizes (`--k8s-nodes`, `--k8s-pods`, `--k8s-policies`).
pub const NODES: u32 = 100;
pub const PODS: u32 = 10_000;
pub const POLICIES: u32 = 1_000;
/// Nodes' InternalIPs are 198.18.250.1 and up (the first, the agent's, is
/// the control plane's veth, so the agent's uplink); their pod CIDRs /24s
/// of 10.244.0.0/16 from the controller manager.
pub const MAX_NODES: u32 = 250;
/// Pods per node at most: .2 to .251 of its /24.
pub const MAX_PODS_PER_NODE: u32 = 250;
/// Requests the populating client keeps in flight.
const IN_FLIGHT: u32 = 48;
/// Namespaces of the pods, ns00..ns09: those [`super::policy::memory_policy`]'s
/// selectors name (its pods' labels are the `policy-memory` section's too).
const POD_NAMESPACES: u32 = 10;
/// The agent's node; the other nodes are `wbench-n001`...
const AGENT_NODE: &str = "wbench-n000";
/// How long an agent may take to be ready, or the API to give pod CIDRs.
const WITHIN: Duration = Duration::from_secs(600);
/// How often the agent's log and `/readyz` are looked at.
const POLL: Duration = Duration::from_millis(20);
/// Ready, then this long before its memory is read (the watches' first
/// events and the Node condition's patch are done by then).
const SETTLE: Duration = Duration::from_secs(5);

/// The sizes of the loaded cluster.
#[derive(Debug, PartialEq, Clone, Copy)]
pub struct Scale {
    pub nodes: u32,
    pub pods: u32,
    pub policies: u32,
}

impl Scale {
    /// Sizes the section can build, or why not.
    pub fn check(self) -> Result<Scale, String> {
        if self.nodes > MAX_NODES {
            return Err(format!(
                "--k8s-nodes {} is more than {MAX_NODES} (InternalIPs 198.18.250.1-{MAX_NODES})",
                self.nodes
            ));
        }
        if self.pods > self.nodes * MAX_PODS_PER_NODE {
            return Err(format!(
                "--k8s-pods {} is more than {MAX_PODS_PER_NODE} per node on {} nodes",
                self.pods, self.nodes
            ));
        }
        Ok(self)
    }
}

fn node_name(i: u32) -> String {
    format!("wbench-n{i:03}")
}

/// Node `i`: InternalIP 198.18.250.(i+1), no pod CIDR (node IPAM gives it).
fn node(i: u32) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node_name(i), "labels": {"weft.dev/bench": "kubernetes"}},
        "status": {"addresses": [
            {"type": "InternalIP", "address": Ipv4Addr::new(198, 18, 250, 1 + i as u8).to_string()},
            {"type": "Hostname", "address": node_name(i)},
        ]},
    }))
    .expect("a Node")
}

/// Pod `k`: on node `k % nodes`, in namespace `ns(k % 10)`, labelled
/// `app=app(k % 100)` and `slot=s(k % 4)`, container port `http` 8080/TCP
/// (the `policy-memory` section's remote pods, as Pod objects).
fn pod(k: u32, nodes: u32) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("pod-{k:05}"),
            "namespace": format!("ns{:02}", k % POD_NAMESPACES),
            "labels": {"app": format!("app{:03}", k % 100), "slot": format!("s{}", k % 4)},
        },
        "spec": {
            "nodeName": node_name(k % nodes),
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "none",
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
        },
    }))
    .expect("a Pod")
}

/// Pod `k`'s address: the `k / nodes`th after .1 of its node's pod CIDR.
fn pod_ip(k: u32, nodes: u32, cidr: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 2 + k / nodes)
}

/// What kubelet writes after CNI ADD (Pod create ignores status).
fn running(ip: Ipv4Addr) -> serde_json::Value {
    json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}})
}

/// One agent run, timed from its spawn.
struct Run {
    /// The agent logged "starting": every kind listed, its Node's pod
    /// CIDR and address known.
    synced: Duration,
    /// `/readyz` answered 200: the first full pass applied (no BGP
    /// session is wanted with `--routing static`).
    ready: Duration,
    /// The first full pass's own time, from its debug line.
    full_pass: Option<Duration>,
    /// VmRSS and VmHWM, in bytes, [`SETTLE`] after ready.
    rss: u64,
    hwm: u64,
}

pub fn agent_at_scale(scale: Scale) {
    let Scale {
        nodes,
        pods,
        policies,
    } = scale;
    println!(
        "Kubernetes datastore: weft-agent (--datastore kubernetes --routing static, as the DaemonSet's \
         ServiceAccount) against the test control plane, started three times in the same control plane: \
         in a cluster holding only its own Node (the baseline); after {nodes} Nodes and {pods} Pods \
         (Running, podIP set through pods/status, over {POD_NAMESPACES} namespaces, a container port each) \
         were created through the API; and after {policies} NetworkPolicies more ({IN_FLIGHT} requests in \
         flight). synced = its first complete list (its \"starting\" line), ready = /readyz 200 (its first \
         full pass applied; with static routing no BGP session is waited for: no speaker is behind the other \
         nodes). No pod of the agent's node has a CNI endpoint, so no policy selects a local pod."
    );
    let cp = TestControlPlane::start("wbench-k8s");
    let dir = tempfile::Builder::new()
        .prefix("weft-bench-k8s-")
        .tempdir()
        .expect("a temporary directory");
    let kubeconfig = dir.path().join("agent.kubeconfig");
    cp.prepare_agent(&kubeconfig);
    let cidrs = with_client(&cp, move |client| async move {
        create_all(&client, 1, |_| async { Ok(node(0)) }, Api::all).await?;
        pod_cidrs(&client, 1).await
    })
    .unwrap_or_else(|e| panic!("{e}"));
    println!("agent's node {AGENT_NODE}: pod CIDR {}", cidrs[0]);

    let empty = agent_run(&cp, &kubeconfig, &dir.path().join("empty"));

    let created = with_client(&cp, move |client| populate_pods(client, nodes, pods))
        .unwrap_or_else(|e| panic!("populating the cluster: {e}"));
    print_created(&created);
    let with_pods = agent_run(&cp, &kubeconfig, &dir.path().join("pods"));

    let created = with_client(&cp, move |client| populate_policies(client, policies))
        .unwrap_or_else(|e| panic!("populating the cluster: {e}"));
    print_created(&created);
    let loaded = agent_run(&cp, &kubeconfig, &dir.path().join("loaded"));

    println!(
        "{:<36} {:>8} {:>8} {:>10} {:>11} {:>11}",
        "cluster", "synced", "ready", "full pass", "VmRSS", "VmHWM"
    );
    let rows = [
        ("its Node only (baseline)".to_string(), &empty),
        (format!("{nodes} Nodes, {pods} Pods"), &with_pods),
        (format!("  and {policies} NetworkPolicies"), &loaded),
    ];
    for (label, run) in rows {
        println!(
            "{:<36} {:>8} {:>8} {:>10} {:>11} {:>11}",
            label,
            secs(run.synced),
            secs(run.ready),
            run.full_pass.map_or("?".into(), super::ms),
            super::policy::mib(run.rss),
            super::policy::mib(run.hwm)
        );
    }
    let per = |count: u32, more: &Run, less: &Run| {
        let n = f64::from(count.max(1));
        (
            (more.rss as f64 - less.rss as f64) / n,
            (more.hwm as f64 - less.hwm as f64) / n,
        )
    };
    let (rss, hwm) = per(pods, &with_pods, &empty);
    println!(
        "per pod ({nodes} Nodes, {pods} Pods - baseline) / {pods}: VmRSS {}, VmHWM {} \
         (the Nodes counted in; Cilium's agent is quoted at about 10 KiB per pod)",
        bytes(rss),
        bytes(hwm)
    );
    let (rss, hwm) = per(pods, &loaded, &empty);
    println!(
        "per pod, the policies counted in (all - baseline) / {pods}: VmRSS {}, VmHWM {}",
        bytes(rss),
        bytes(hwm)
    );
    let (rss, hwm) = per(policies, &loaded, &with_pods);
    println!(
        "per NetworkPolicy (all - without them) / {policies}: VmRSS {}, VmHWM {}",
        bytes(rss),
        bytes(hwm)
    );
}

fn print_created(created: &[(String, Duration)]) {
    for (what, took) in created {
        println!("created {what} in {:.1} s", took.as_secs_f64());
    }
}

/// Bytes, and KiB to compare with figures quoted in KiB.
fn bytes(b: f64) -> String {
    format!("{b:.0} B ({:.1} KiB)", b / 1024.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Starts the agent for [`AGENT_NODE`] with its state in `dir`, waits
/// until it is ready, reads its memory and ends it.
fn agent_run(cp: &TestControlPlane, kubeconfig: &Path, dir: &Path) -> Run {
    std::fs::create_dir_all(dir).expect("the agent's directory");
    let started = Instant::now();
    let mut agent = cp.spawn_agent(
        AGENT_NODE,
        kubeconfig,
        dir,
        // The pass times (debug) without the rest of the debug output.
        "info,weft_agent::node=debug",
        &["--routing", "static"],
    );
    let mut synced = None;
    let ready = loop {
        if let Some(exited) = agent.exited() {
            panic!("{exited}");
        }
        let now = started.elapsed();
        if now > WITHIN {
            panic!(
                "the agent was not ready within {WITHIN:?}: {}\n{}",
                cp.agent_health("/readyz").1,
                tail(&agent)
            );
        }
        if synced.is_none() && agent.log().lines().any(|l| l.contains(" starting node=")) {
            synced = Some(now);
        }
        if synced.is_some() && cp.agent_health("/readyz").0 == 200 {
            break now;
        }
        std::thread::sleep(POLL);
    };
    std::thread::sleep(SETTLE);
    let (rss, hwm) = memory(&agent).unwrap_or_else(|e| panic!("{e}"));
    let full_pass = super::policy::parse_pass_times(&agent.log(), true)
        .first()
        .map(|us| Duration::from_micros(*us));
    drop(agent);
    Run {
        synced: synced.expect("set before ready"),
        ready,
        full_pass,
        rss,
        hwm,
    }
}

fn tail(agent: &ClusterAgent) -> String {
    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// VmRSS and VmHWM of the agent (`ip netns exec` execs it: the child's
/// pid is the agent's), in bytes.
fn memory(agent: &ClusterAgent) -> Result<(u64, u64), String> {
    let pid = agent.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        super::proc_status_kib(&status, name)
            .map(|kib| kib * 1024)
            .ok_or(format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS")?, field("VmHWM")?))
}

/// Runs `work` with an administrator's client on a runtime of its own,
/// on a thread inside the control plane's namespace (where the API server
/// is reachable).
fn with_client<T, F, Fut>(cp: &TestControlPlane, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(kube::Client) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
{
    let kubeconfig = cp.plane.admin_kubeconfig.clone();
    weft_dataplane::netns::run_in(&weft_lab::topology::netns_path(&cp.netns), move || {
        // Worker threads are made by this thread: they are in its namespace.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("a tokio runtime: {e}"))?;
        runtime.block_on(async move {
            let client = weft_datastore::kubernetes::connect(Some(&kubeconfig))
                .await
                .map_err(|e| format!("the API server: {e}"))?;
            work(client).await
        })
    })
    .map_err(|e| e.to_string())?
}

/// Runs `job(i)` for every `i` in `0..count`, [`IN_FLIGHT`] at a time;
/// the first error is the result.
async fn concurrently<J, Fut>(count: u32, job: J) -> Result<(), String>
where
    J: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicU32::new(0));
    let mut workers: tokio::task::JoinSet<Result<(), String>> = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT.min(count) {
        let (job, next) = (job.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok(());
                }
                job(i).await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| format!("a worker failed: {e}"))??;
    }
    Ok(())
}

/// Creates `make(i)` for `i` in `0..count` through the `Api` that `api`
/// makes of the client for the object's namespace.
async fn create_all<K, M, MFut>(
    client: &kube::Client,
    count: u32,
    make: M,
    api: fn(kube::Client) -> Api<K>,
) -> Result<(), String>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
    M: Fn(u32) -> MFut + Send + Sync + 'static,
    MFut: Future<Output = Result<K, String>> + Send,
{
    let client = client.clone();
    concurrently(count, move |i| {
        let (client, object) = (client.clone(), make(i));
        async move {
            let object = object.await?;
            let name = object.meta().name.clone().unwrap_or_default();
            api(client)
                .create(&PostParams::default(), &object)
                .await
                .map(drop)
                .map_err(|e| format!("creating {name}: {e}"))
        }
    })
    .await
}

/// The pod CIDRs of nodes `0..nodes`, once node IPAM has given each one.
async fn pod_cidrs(client: &kube::Client, nodes: u32) -> Result<Vec<Ipv4Network>, String> {
    let api: Api<Node> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let mut cidrs = Vec::new();
        for i in 0..nodes {
            let name = node_name(i);
            let node = api
                .get(&name)
                .await
                .map_err(|e| format!("Node {name}: {e}"))?;
            match node.spec.and_then(|s| s.pod_cidr) {
                Some(cidr) => cidrs.push(
                    cidr.parse()
                        .map_err(|e| format!("Node {name}'s pod CIDR {cidr}: {e}"))?,
                ),
                None => break,
            }
        }
        if cidrs.len() == nodes as usize {
            return Ok(cidrs);
        }
        if started.elapsed() > WITHIN {
            return Err(format!(
                "node IPAM gave {} of {nodes} Nodes a pod CIDR within {WITHIN:?}",
                cidrs.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates Nodes 1.. (node 0 exists already), the pods' namespaces and
/// the Pods; returns how long each kind took.
async fn populate_pods(
    client: kube::Client,
    nodes: u32,
    pods: u32,
) -> Result<Vec<(String, Duration)>, String> {
    let mut took = Vec::new();

    let t = Instant::now();
    create_all(
        &client,
        nodes - 1,
        |i| async move { Ok(node(i + 1)) },
        Api::all,
    )
    .await?;
    let cidrs = Arc::new(pod_cidrs(&client, nodes).await?);
    took.push((
        format!("{} Nodes (and node IPAM's pod CIDRs)", nodes - 1),
        t.elapsed(),
    ));

    let t = Instant::now();
    create_all(
        &client,
        POD_NAMESPACES,
        |i| async move {
            serde_json::from_value::<Namespace>(json!({"metadata": {"name": format!("ns{i:02}")}}))
                .map_err(|e| e.to_string())
        },
        Api::all,
    )
    .await?;
    // A Pod is refused until its namespace's default ServiceAccount (the
    // controller manager's) exists.
    for i in 0..POD_NAMESPACES {
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &format!("ns{i:02}"));
        while api
            .get_opt("default")
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            if t.elapsed() > WITHIN {
                return Err(format!("no default ServiceAccount in ns{i:02}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    took.push((format!("{POD_NAMESPACES} namespaces"), t.elapsed()));

    let t = Instant::now();
    let pod_client = client.clone();
    concurrently(pods, move |k| {
        let client = pod_client.clone();
        let cidrs = cidrs.clone();
        async move {
            let pod = pod(k, nodes);
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(
                client,
                pod.metadata.namespace.as_deref().unwrap_or_default(),
            );
            api.create(&PostParams::default(), &pod)
                .await
                .map_err(|e| format!("creating Pod {name}: {e}"))?;
            let ip = pod_ip(k, nodes, cidrs[(k % nodes) as usize]);
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(running(ip)))
                .await
                .map(drop)
                .map_err(|e| format!("Pod {name}'s status: {e}"))
        }
    })
    .await?;
    took.push((
        format!("{pods} Pods (create, then status Running with its podIP)"),
        t.elapsed(),
    ));
    Ok(took)
}

/// Creates the NetworkPolicies; returns how long they took.
async fn populate_policies(
    client: kube::Client,
    policies: u32,
) -> Result<Vec<(String, Duration)>, String> {
    let t = Instant::now();
    create_all(
        &client,
        policies,
        |i| async move {
            serde_json::from_value::<NetworkPolicy>(super::policy::memory_policy(i))
                .map_err(|e| format!("policy {i}: {e}"))
        },
        |client| Api::namespaced(client, super::policy::NAMESPACE),
    )
    .await?;
    Ok(vec![(format!("{policies} NetworkPolicies"), t.elapsed())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_fit_their_ranges() {
        let cidr: Ipv4Network = "10.244.7.0/24".parse().unwrap();
        assert_eq!(pod_ip(3, 100, cidr), Ipv4Addr::new(10, 244, 7, 2));
        assert_eq!(pod_ip(9_999, 100, cidr), Ipv4Addr::new(10, 244, 7, 101));
        // The last pod of the largest scale stays inside its /24.
        let last = MAX_NODES * MAX_PODS_PER_NODE - 1;
        assert!(cidr.contains(pod_ip(last, MAX_NODES, cidr)));
        let p = pod(1_234, 100);
        assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("wbench-n034"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns04"));
        assert_eq!(p.metadata.labels.unwrap()["app"], "app034");
        let n = node(MAX_NODES - 1).status.unwrap().addresses.unwrap();
        assert_eq!(n[0].address, "198.18.250.250");
        assert!(
            Scale {
                nodes: 2,
                pods: 501,
                policies: 1
            }
            .check()
            .unwrap_err()
            .contains("250 per node")
        );
        assert!(
            Scale {
                nodes: MAX_NODES + 1,
                pods: 1,
                policies: 1
            }
            .check()
            .is_err()
        );
    }
}
