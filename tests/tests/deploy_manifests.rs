//! deploy/ against a real API server (the test control plane): the API
//! server accepts every manifest (`kubectl apply --dry-run=server`), the
//! BGPPeer CRD serves objects of the model's shape and refuses others, and
//! the agent's ServiceAccount may do exactly what the agent does: read
//! the cluster and patch Node status, nothing else. Needs root.
//!
//! And the DaemonSet against what it runs (no root): every variable it sets
//! is a flag of the real weft-agent, its probes ask the agent's health
//! address, the agent's paths are on the host where weft-cni looks for
//! them, its init container (the real `weftctl install-cni`, its paths
//! mapped into a temporary directory) installs the plugin and the
//! ConfigMap's network config, and its image is the one `make image` builds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, ServiceAccount, VolumeMount};
use weft_tests::deploy::{Flag, help_flags, makefile_var, manifest, manifests};
use weft_tests::{TestControlPlane, bin, bin_dir, require_root, show};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const AGENT: &str = "system:serviceaccount:kube-system:weft-agent";
/// Where the image holds the binaries (scripts/build-image.sh).
const IMAGE_BIN_DIR: &str = "/usr/local/bin";

/// `RESOURCE[.GROUP]/NAME`, as `kubectl apply` reports an object.
fn kubectl_name(object: &serde_json::Value) -> String {
    let kind = object["kind"].as_str().expect("a kind").to_lowercase();
    let api_version = object["apiVersion"].as_str().expect("an apiVersion");
    let name = object["metadata"]["name"].as_str().expect("a name");
    match api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

#[test]
fn deploy_manifests_are_accepted_and_least_privilege() {
    require_root();
    let cp = TestControlPlane::start("wdp");
    // Every object of every file is accepted, not just the first ones.
    let dry_run = cp.kubectl(&["apply", "--dry-run=server", "-f", DEPLOY]);
    let objects = manifests();
    assert!(objects.len() >= 6, "deploy/ holds {objects:?}");
    for (file, object) in &objects {
        let want = format!("{} created (server dry run)", kubectl_name(object));
        assert!(
            dry_run.contains(&want),
            "{file}: no `{want}` in:\n{dry_run}"
        );
    }
    cp.kubectl(&["apply", "-f", DEPLOY]);
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/bgppeers.weft.dev",
        "--timeout=30s",
    ]);

    // A BGPPeer as `weftctl lab apply` takes it is served back unchanged;
    // a wrongly typed field is refused by the schema, naming it.
    cp.apply(
        "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor-a}\n\
         spec: {peerIP: 198.18.0.200, asNumber: 64600, node: node1}\n",
    );
    let peer = cp.kubectl(&["get", "bgppeer", "tor-a", "-o", "jsonpath={.spec.asNumber}"]);
    assert_eq!(peer, "64600");
    let bad = cp.plane.kubectl_with_input(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: weft.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: bad}\n\
             spec: {peerIP: 198.18.0.201, asNumber: many}\n",
        ),
    );
    let e = bad.expect_err("a string AS number is refused").to_string();
    assert!(e.contains("spec.asNumber"), "{e}");

    let can = |verb: &str, resource: &str| cp.can_i(verb, resource, Some(AGENT));
    let mut wrong = Vec::new();
    for resource in [
        "nodes",
        "pods",
        "namespaces",
        "networkpolicies.networking.k8s.io",
        "bgppeers.weft.dev",
    ] {
        for verb in ["get", "list", "watch"] {
            if !can(verb, resource) {
                wrong.push(format!("may not {verb} {resource}"));
            }
        }
    }
    if !can("patch", "nodes/status") {
        wrong.push("may not patch nodes/status".into());
    }
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "pods/exec"),
        ("delete", "nodes"),
        ("patch", "nodes"),
        ("create", "pods"),
        ("update", "pods"),
        ("patch", "pods"),
        ("delete", "pods"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("create", "bgppeers.weft.dev"),
        ("update", "configmaps"),
    ] {
        if can(verb, resource) {
            wrong.push(format!("may {verb} {resource}"));
        }
    }
    assert!(wrong.is_empty(), "the agent's role is wrong: {wrong:?}");
}

/// The DaemonSet's pod spec and its two containers.
struct AgentPod {
    spec: PodSpec,
    agent: Container,
    install: Container,
}

fn agent_pod(ds: &DaemonSet) -> AgentPod {
    let spec = ds
        .spec
        .template
        .spec
        .clone()
        .expect("the DaemonSet has a pod spec");
    let find = |list: &[Container], name: &str| {
        list.iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no container {name}"))
    };
    AgentPod {
        agent: find(&spec.containers, "weft-agent"),
        install: find(
            spec.init_containers.as_deref().unwrap_or_default(),
            "install-cni",
        ),
        spec,
    }
}

impl AgentPod {
    /// The host path a volume is, if it is a hostPath volume.
    fn host_path(&self, volume: &str) -> Option<String> {
        self.spec
            .volumes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.name == volume)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    }

    /// The mount of `container` that holds `path` (the longest mountPath
    /// above it).
    fn mount_of<'c>(container: &'c Container, path: &str) -> Option<&'c VolumeMount> {
        container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|m| Path::new(path).starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
    }

    /// Fails unless `path` in the agent's container is the same path on the
    /// host (a hostPath volume mounted at its own path).
    fn agent_path_on_host(&self, what: &str, path: &str) -> VolumeMount {
        let mount = Self::mount_of(&self.agent, path)
            .unwrap_or_else(|| panic!("{what} {path} is on no volume of the agent's container"));
        let host = self.host_path(&mount.name);
        assert_eq!(
            host.as_deref(),
            Some(mount.mount_path.as_str()),
            "{what} {path}: volume {} must be the host's {} (a hostPath at the same path)",
            mount.name,
            mount.mount_path
        );
        mount.clone()
    }
}

/// A flag's value in the agent's container: the variable the DaemonSet
/// sets, else the agent's default.
fn effective(flags: &BTreeMap<String, Flag>, env: &BTreeMap<String, String>, flag: &str) -> String {
    let f = flags
        .get(flag)
        .unwrap_or_else(|| panic!("weft-agent has no --{flag}"));
    f.env
        .as_ref()
        .and_then(|e| env.get(e).cloned())
        .or_else(|| f.default.clone())
        .unwrap_or_else(|| panic!("--{flag} has neither a value in the DaemonSet nor a default"))
}

#[test]
fn daemonset_matches_the_agent_the_cni_config_and_the_image() {
    let ds: DaemonSet = manifest("DaemonSet", "weft-agent");
    let sa: ServiceAccount = manifest("ServiceAccount", "weft-agent");
    let cm: ConfigMap = manifest("ConfigMap", "weft-cni-config");
    let pod = agent_pod(&ds);
    let flags = help_flags(&bin("weft-agent"));
    let mut wrong = Vec::new();

    // Where and how it runs.
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    assert_eq!(pod.spec.service_account_name, sa.metadata.name);
    assert_eq!(pod.spec.host_network, Some(true));
    assert_eq!(
        pod.spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let strategy = ds.spec.update_strategy.clone().expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.and_then(|r| r.max_unavailable),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let tolerations = pod.spec.tolerations.clone().unwrap_or_default();
    for effect in ["NoSchedule", "NoExecute"] {
        let tolerated = tolerations.iter().any(|t| {
            t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.as_deref().is_none_or(|e| e == effect)
        });
        if !tolerated {
            wrong.push(format!("not every {effect} taint is tolerated"));
        }
    }
    let image = makefile_var("IMAGE");
    for c in [&pod.agent, &pod.install] {
        if c.image.as_deref() != Some(image.as_str()) {
            wrong.push(format!(
                "{} runs {:?}, `make image` builds {image}",
                c.name, c.image
            ));
        }
        if c.image_pull_policy.as_deref() != Some("IfNotPresent") {
            wrong.push(format!("{} would pull its image", c.name));
        }
    }
    assert_eq!(
        pod.agent
            .security_context
            .as_ref()
            .and_then(|s| s.privileged),
        Some(true)
    );

    // Every variable is a flag of the real agent.
    let env_flags: BTreeSet<&str> = flags.values().filter_map(|f| f.env.as_deref()).collect();
    let mut env = BTreeMap::new();
    for var in pod.agent.env.as_deref().unwrap_or_default() {
        if !env_flags.contains(var.name.as_str()) {
            wrong.push(format!("{} is no flag of weft-agent", var.name));
        }
        match (&var.value, &var.value_from) {
            (Some(value), _) => {
                let flag = flags.values().find(|f| f.env.as_ref() == Some(&var.name));
                if let Some(flag) = flag.filter(|f| !f.possible.is_empty())
                    && !flag.possible.contains(value)
                {
                    wrong.push(format!(
                        "{}={value} is none of {:?}",
                        var.name, flag.possible
                    ));
                }
                env.insert(var.name.clone(), value.clone());
            }
            (None, Some(from)) => {
                let field = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                if var.name == "WEFT_NODE_NAME" && field != Some("spec.nodeName") {
                    wrong.push(format!("WEFT_NODE_NAME comes from {from:?}"));
                }
            }
            (None, None) => wrong.push(format!("{} has no value", var.name)),
        }
    }
    // Environment from a ConfigMap (the API server's own address) must be
    // optional: a missing one would keep the agent from starting.
    for source in pod.agent.env_from.as_deref().unwrap_or_default() {
        let optional = (source.config_map_ref.as_ref()).and_then(|c| c.optional);
        if source.secret_ref.is_some() || optional != Some(true) {
            wrong.push(format!("envFrom {source:?} is not an optional ConfigMap"));
        }
    }
    if !env.contains_key("WEFT_DATASTORE") || env["WEFT_DATASTORE"] != "kubernetes" {
        wrong.push(format!("WEFT_DATASTORE is {:?}", env.get("WEFT_DATASTORE")));
    }
    assert!(wrong.is_empty(), "the DaemonSet is wrong: {wrong:#?}");

    // The probes ask the agent where it serves its health.
    let health: SocketAddr = effective(&flags, &env, "health-address")
        .parse()
        .expect("the health address is ADDR:PORT");
    for (probe, path) in [
        (&pod.agent.liveness_probe, "/healthz"),
        (&pod.agent.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .unwrap_or_else(|| panic!("no httpGet probe of {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.host, Some(health.ip().to_string()), "{path}");
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(health.port().into()),
            "{path}"
        );
    }

    // The agent's paths are the host's: its state survives restarts, its
    // pins too (propagated to the host), and weft-cni on the host finds
    // the socket where the network config says.
    pod.agent_path_on_host("--state-dir", &effective(&flags, &env, "state-dir"));
    let socket = effective(&flags, &env, "socket");
    pod.agent_path_on_host("--socket", &socket);
    let bpffs = pod.agent_path_on_host("--bpffs-dir", &effective(&flags, &env, "bpffs-dir"));
    assert_eq!(bpffs.mount_path, "/sys/fs/bpf");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"));

    let data = cm.data.clone().unwrap_or_default();
    let (file, conflist) = data.iter().next().expect("the ConfigMap holds the config");
    assert_eq!(data.len(), 1, "one network config");
    weftctl::install_cni::validate_network_config(file, conflist.as_bytes())
        .unwrap_or_else(|e| panic!("the ConfigMap's {file}: {e:#}"));
    let conf: serde_json::Value = serde_json::from_str(conflist).unwrap();
    assert_eq!(
        conf["plugins"][0]["agentSocket"].as_str(),
        Some(socket.as_str()),
        "weft-cni must dial the agent's socket"
    );

    // Every mount names a volume, every volume is mounted.
    let volumes: BTreeSet<String> = pod
        .spec
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| v.name.clone())
        .collect();
    let mounted: BTreeSet<String> = [&pod.agent, &pod.install]
        .iter()
        .flat_map(|c| c.volume_mounts.clone().unwrap_or_default())
        .map(|m| m.name)
        .collect();
    assert_eq!(volumes, mounted, "volumes and mounts differ");

    install_cni_as_the_init_container_would(&pod, &cm, file, conflist);
}

/// Runs the init container's command with the real weftctl, every path
/// inside one of its mounts mapped to a directory per volume, the image's
/// binaries to [`bin_dir`]; then the node's /opt/cni/bin holds weft-cni and
/// its /etc/cni/net.d the ConfigMap's config.
fn install_cni_as_the_init_container_would(
    pod: &AgentPod,
    cm: &ConfigMap,
    file: &str,
    conflist: &str,
) {
    let root = tempfile::tempdir().unwrap();
    let volume_dir = |name: &str| root.path().join(name);
    let cm_volume = pod
        .spec
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.config_map.as_ref().map(|c| c.name.as_str()) == cm.metadata.name.as_deref())
        .expect("a volume of the ConfigMap");
    std::fs::create_dir_all(volume_dir(&cm_volume.name)).unwrap();
    std::fs::write(volume_dir(&cm_volume.name).join(file), conflist).unwrap();

    let map = |arg: &str| -> String {
        let (flag, path) = match arg.split_once('=') {
            Some((flag, path)) => (format!("{flag}="), path),
            None => (String::new(), arg),
        };
        if let Some(rest) = path.strip_prefix(IMAGE_BIN_DIR) {
            return format!("{flag}{}{rest}", bin_dir().display());
        }
        match AgentPod::mount_of(&pod.install, path) {
            Some(m) => {
                let rest = Path::new(path).strip_prefix(&m.mount_path).unwrap();
                format!("{flag}{}", volume_dir(&m.name).join(rest).display())
            }
            // A path outside every mount would be the container's own,
            // lost with it (and here it would be this machine's).
            None if path.starts_with('/') => {
                panic!("the init container's {arg} is on none of its volumes")
            }
            None => arg.to_string(),
        }
    };
    let command: Vec<String> = pod
        .install
        .command
        .iter()
        .flatten()
        .chain(pod.install.args.iter().flatten())
        .map(|a| map(a))
        .collect();
    let out = std::process::Command::new(&command[0])
        .args(&command[1..])
        .output()
        .expect("the init container's command runs");
    assert!(out.status.success(), "{command:?}: {}", show(&out));

    let on_host = |host: &str| -> PathBuf {
        let volume = pod
            .install
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.clone())
            .find(|name| pod.host_path(name).as_deref() == Some(host))
            .unwrap_or_else(|| panic!("the init container mounts no hostPath {host}"));
        volume_dir(&volume)
    };
    let plugin = on_host("/opt/cni/bin").join("weft-cni");
    assert!(
        std::fs::read(&plugin).ok() == std::fs::read(bin("weft-cni")).ok(),
        "weft-cni is not installed as {} (the node's /opt/cni/bin)",
        plugin.display()
    );
    assert_eq!(
        std::fs::read_to_string(on_host("/etc/cni/net.d").join(file)).ok(),
        Some(conflist.to_string()),
        "the network config is in the node's /etc/cni/net.d"
    );
}

#[test]
fn kind_config_leaves_the_network_to_weft() {
    let text = std::fs::read_to_string(Path::new(DEPLOY).join("kind/config.yaml"))
        .expect("deploy/kind/config.yaml");
    let config: serde_json::Value = serde_norway::from_str(&text).expect("YAML");
    assert_eq!(config["kind"], "Cluster");
    assert_eq!(config["apiVersion"], "kind.x-k8s.io/v1alpha4");
    let net = &config["networking"];
    assert_eq!(net["disableDefaultCNI"], true);
    assert_eq!(net["podSubnet"], "10.244.0.0/16");
    // Service addresses must be inside what the agent takes for Services.
    let services: ipnetwork::Ipv4Network = net["serviceSubnet"].as_str().unwrap().parse().unwrap();
    let flags = help_flags(&bin("weft-agent"));
    let agent: ipnetwork::Ipv4Network = flags["service-cluster-ip-range"]
        .default
        .as_deref()
        .expect("a default range")
        .parse()
        .unwrap();
    assert!(
        agent.contains(services.network()) && agent.contains(services.broadcast()),
        "kind's {services} is not inside the agent's {agent}"
    );
}
