//! The weft-cni binary, invoked exactly as a container runtime would
//! (environment + config on stdin, from inside a "node" network namespace
//! via `ip netns exec`), against a real kernel.
//!
//! Until the real weft-agent can be started from a test, the gRPC side is a
//! small recording agent ([`TestAgent`]) serving the real `weft.v1.Agent`
//! service on a unix socket: it checks what the plugin sends and lets tests
//! make the agent fail. Needs root for everything but the pure error paths;
//! not root is a loud failure.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tonic::{Request, Response, Status};
use weft_dataplane::names;
use weft_proto::v1::*;

const BIN: &str = env!("CARGO_BIN_EXE_weft-cni");

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cni-plugin/tests/cni.rs needs root: run it as root"
    );
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What one run of the plugin printed and returned.
#[derive(Debug)]
struct Run {
    exit: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout {:?} is not JSON: {e}", self.stdout))
    }

    fn code(&self) -> u64 {
        assert_ne!(self.exit, 0, "expected failure: {self:?}");
        self.json()["code"].as_u64().expect("error code")
    }

    fn ok(&self) -> &Self {
        assert_eq!(self.exit, 0, "expected success: {self:?}");
        self
    }
}

/// Runs the plugin with `env` and `stdin`, in the namespace `netns` if given.
fn run_plugin(netns: Option<&str>, env: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, BIN]);
            c
        }
        None => Command::new(BIN),
    };
    for var in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn weft-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        exit: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------- pure paths

#[test]
fn version_prints_supported_versions() {
    let run = run_plugin(None, &[("CNI_COMMAND", "VERSION")], "");
    run.ok();
    assert_eq!(
        run.stdout,
        r#"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"#
    );
}

#[test]
fn error_paths_print_the_spec_error_json() {
    let del = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let conf = |v: &str| json!({"cniVersion": v, "name": "weft", "type": "weft-cni"}).to_string();

    let bad_json = run_plugin(None, &del, "{not json");
    assert_eq!(bad_json.code(), 6);
    assert_eq!(bad_json.json()["cniVersion"], "1.1.0");
    assert!(bad_json.json()["msg"].is_string() && bad_json.json()["details"].is_string());

    assert_eq!(run_plugin(None, &del, &conf("0.3.1")).code(), 1);
    assert_eq!(
        run_plugin(None, &del, r#"{"cniVersion":"1.0.0","type":"weft-cni"}"#).code(),
        7
    );
    let missing_ifname = run_plugin(None, &del[..2], &conf("0.4.0"));
    assert_eq!(missing_ifname.code(), 4);
    assert_eq!(
        missing_ifname.json()["cniVersion"],
        "0.4.0",
        "errors speak the config's version"
    );
    assert_eq!(
        run_plugin(None, &[("CNI_COMMAND", "GC")], &conf("1.0.0")).code(),
        1
    );
    assert_eq!(
        run_plugin(None, &[("CNI_COMMAND", "STATUS")], &conf("0.4.0")).code(),
        1
    );
    assert!(
        bad_json.stderr.contains("code=6"),
        "logs go to stderr: {}",
        bad_json.stderr
    );
}

// ------------------------------------------------------------- test agent

/// Knobs and a record of what the plugin asked.
#[derive(Default)]
struct AgentState {
    fail_register: bool,
    exhausted: bool,
    ready: bool,
    next_host: u8,
    allocated: HashMap<(String, String), String>,
    registered: HashMap<(String, String), RegisterEndpointRequest>,
    allocate_calls: usize,
    released: Vec<(String, String)>,
    gc_valid: Option<Vec<(String, String)>>,
}

#[derive(Clone, Default)]
struct TestAgent(Arc<Mutex<AgentState>>);

fn key(a: &Option<Attachment>) -> (String, String) {
    let a = a.clone().unwrap_or_default();
    (a.container_id, a.ifname)
}

#[tonic::async_trait]
impl weft_proto::Agent for TestAgent {
    async fn allocate_address(
        &self,
        req: Request<AllocateAddressRequest>,
    ) -> Result<Response<AllocateAddressReply>, Status> {
        let mut s = self.0.lock().unwrap();
        s.allocate_calls += 1;
        if s.exhausted {
            return Err(Status::resource_exhausted("10.244.88.0/24 is full"));
        }
        let k = key(&req.get_ref().attachment);
        let next = s.next_host;
        let address = s
            .allocated
            .entry(k)
            .or_insert_with(|| format!("10.244.88.{}", next + 2))
            .clone();
        s.next_host += 1;
        Ok(Response::new(AllocateAddressReply {
            address,
            prefix_len: 32,
            gateway: "169.254.1.1".into(),
            mtu: 1450,
            pod_cidr: "10.244.88.0/24".into(),
        }))
    }

    async fn register_endpoint(
        &self,
        req: Request<RegisterEndpointRequest>,
    ) -> Result<Response<RegisterEndpointReply>, Status> {
        let mut s = self.0.lock().unwrap();
        if s.fail_register {
            return Err(Status::internal("cannot attach the anti-spoofing guard"));
        }
        let req = req.into_inner();
        s.registered.insert(key(&req.attachment), req);
        Ok(Response::new(RegisterEndpointReply {}))
    }

    async fn update_endpoint_labels(
        &self,
        _req: Request<UpdateEndpointLabelsRequest>,
    ) -> Result<Response<UpdateEndpointLabelsReply>, Status> {
        Err(Status::unimplemented("the CNI never relabels"))
    }

    async fn release_endpoint(
        &self,
        req: Request<ReleaseEndpointRequest>,
    ) -> Result<Response<ReleaseEndpointReply>, Status> {
        let mut s = self.0.lock().unwrap();
        let k = key(&req.get_ref().attachment);
        s.registered.remove(&k);
        let released = s.allocated.remove(&k).is_some();
        s.released.push(k);
        Ok(Response::new(ReleaseEndpointReply { released }))
    }

    async fn check_endpoint(
        &self,
        req: Request<CheckEndpointRequest>,
    ) -> Result<Response<CheckEndpointReply>, Status> {
        let s = self.0.lock().unwrap();
        let k = key(&req.get_ref().attachment);
        let r = s
            .registered
            .get(&k)
            .ok_or_else(|| Status::not_found("no such endpoint"))?;
        Ok(Response::new(CheckEndpointReply {
            endpoint: Some(Endpoint {
                attachment: r.attachment.clone(),
                address: r.address.clone(),
                host_ifname: r.host_ifname.clone(),
                ..Default::default()
            }),
        }))
    }

    async fn garbage_collect(
        &self,
        req: Request<GarbageCollectRequest>,
    ) -> Result<Response<GarbageCollectReply>, Status> {
        let valid: Vec<_> = req
            .into_inner()
            .valid
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        self.0.lock().unwrap().gc_valid = Some(valid);
        Ok(Response::new(GarbageCollectReply::default()))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let ready = self.0.lock().unwrap().ready;
        Ok(Response::new(StatusReply {
            ready,
            node_name: "node-t".into(),
            message: if ready {
                String::new()
            } else {
                "datastore not synced".into()
            },
            ..Default::default()
        }))
    }

    async fn list_endpoints(
        &self,
        _: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsReply>, Status> {
        Ok(Response::new(ListEndpointsReply::default()))
    }

    async fn get_counters(
        &self,
        _: Request<GetCountersRequest>,
    ) -> Result<Response<GetCountersReply>, Status> {
        Ok(Response::new(GetCountersReply::default()))
    }

    async fn bgp_peers(
        &self,
        _: Request<BgpPeersRequest>,
    ) -> Result<Response<BgpPeersReply>, Status> {
        Err(Status::unimplemented("the plugin never asks for BGP peers"))
    }

    async fn get_policy(
        &self,
        _: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyReply>, Status> {
        Err(Status::unimplemented("the plugin never asks for policy"))
    }
}

// ------------------------------------------------------------------- lab

/// A node namespace, a pod namespace and a test agent; all removed on drop.
struct Lab {
    node: String,
    pod: String,
    dir: PathBuf,
    agent: TestAgent,
    _runtime: tokio::runtime::Runtime,
}

impl Lab {
    fn new(test: &str) -> Self {
        require_root();
        let prefix = format!("weft-t-cni-{}-{test}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            node: format!("{prefix}-node"),
            pod: format!("{prefix}-pod"),
            dir,
            agent: TestAgent::default(),
            _runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        };
        lab.agent.0.lock().unwrap().ready = true;
        for ns in [&lab.node, &lab.pod] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let listener = {
            let _guard = lab._runtime.enter();
            tokio::net::UnixListener::bind(lab.socket()).unwrap()
        };
        let agent = lab.agent.clone();
        lab._runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(weft_proto::AgentServer::new(agent))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
        lab
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.pod)
    }

    fn conf(&self, version: &str, extra: Value) -> String {
        let mut conf = json!({
            "cniVersion": version, "name": "weft-test", "type": "weft-cni",
            "agentSocket": self.socket(), "timeoutSeconds": 5,
        });
        if let (Value::Object(c), Value::Object(e)) = (&mut conf, extra) {
            c.extend(e);
        }
        conf.to_string()
    }

    /// Runs a verb for attachment (`container_id`, eth0) in the node netns.
    fn cni(&self, command: &str, container_id: &str, conf: &str) -> Run {
        let netns = self.netns_path();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
            ),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        run_plugin(Some(&self.node), &env, conf)
    }

    fn node_links(&self) -> String {
        ip(&["-n", &self.node, "-o", "link", "show"])
    }

    fn pod_links(&self) -> String {
        ip(&["-n", &self.pod, "-o", "link", "show"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.node, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------ kernel paths

#[test]
fn add_without_agent_is_try_again_later_and_leaves_nothing() {
    let lab = Lab::new("noagent");
    let conf = json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni",
                      "agentSocket": lab.dir.join("nobody.sock")})
    .to_string();
    let run = lab.cni("ADD", "c-noagent", &conf);
    assert_eq!(run.code(), 11, "{run:?}");
    assert!(!lab.node_links().contains("weft"), "{}", lab.node_links());
    assert!(!lab.pod_links().contains("eth0"), "{}", lab.pod_links());
    assert_eq!(
        lab.cni("DEL", "c-noagent", &conf).code(),
        11,
        "DEL must not lose the address silently"
    );
}

#[test]
fn add_check_del_roundtrip_per_version() {
    let lab = Lab::new("roundtrip");
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let cid = format!("c-roundtrip-{i}");
        let host_ifname = names::host_ifname(&cid, "eth0");
        let labels = json!({"args": {"cni": {
            "labels": [{"key": "app", "value": "web"}],
            "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}],
        }}});
        let add = lab.cni("ADD", &cid, &lab.conf(version, labels));
        add.ok();
        let result = add.json();
        assert_eq!(result["cniVersion"], version);
        assert_eq!(result["interfaces"][0]["name"], host_ifname.as_str());
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(
            result["interfaces"][1]["sandbox"],
            lab.netns_path().as_str()
        );
        let address = result["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(
            address.starts_with("10.244.88.") && address.ends_with("/32"),
            "{result}"
        );
        assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(result["ips"][0]["interface"], 1);
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version == "0.4.0",
            "{result}"
        );
        assert_eq!(
            result["interfaces"][1].get("mtu").is_some(),
            version == "1.1.0",
            "{result}"
        );
        assert_eq!(
            result["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
        );

        // The kernel holds what the result says.
        let mac = result["interfaces"][1]["mac"].as_str().unwrap();
        let pod_eth0 = ip(&["-n", &lab.pod, "-o", "link", "show", "dev", "eth0"]);
        assert!(
            pod_eth0.contains(mac) && pod_eth0.contains("mtu 1450"),
            "{pod_eth0}"
        );
        let addr = ip(&["-n", &lab.pod, "-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&format!("inet {address}")), "{addr}");
        let host_mac = result["interfaces"][0]["mac"].as_str().unwrap();
        let neigh = ip(&["-n", &lab.pod, "neigh", "show", "dev", "eth0"]);
        assert!(
            neigh.contains(&format!("169.254.1.1 lladdr {host_mac} PERMANENT")),
            "{neigh}"
        );

        // The agent heard what the runtime said.
        {
            let s = lab.agent.0.lock().unwrap();
            let reg = &s.registered[&(cid.clone(), "eth0".to_string())];
            assert_eq!(reg.host_ifname, host_ifname);
            assert_eq!(format!("{}/32", reg.address), address);
            assert_eq!(
                (reg.pod_name.as_str(), reg.pod_namespace.as_str()),
                ("web-0", "shop")
            );
            assert_eq!(reg.labels.get("app").map(String::as_str), Some("web"));
            let ports: Vec<_> = reg
                .ports
                .iter()
                .map(|p| (p.name.as_str(), p.container_port, p.protocol.as_str()))
                .collect();
            assert_eq!(ports, [("http", 8080, ""), ("", 53, "UDP")]);
            assert_eq!(reg.netns, lab.netns_path());
        }

        // The plugin leaves the host end down; the real agent brings it up
        // once the guard is attached (this recording agent does not).
        let host_link = ip(&["-n", &lab.node, "-o", "link", "show", "dev", &host_ifname]);
        assert!(!host_link.contains(",UP"), "{host_link}");
        ip(&["-n", &lab.node, "link", "set", &host_ifname, "up"]);

        // CHECK against the previous result passes, prints nothing.
        let with_prev = lab.conf(version, json!({"prevResult": result}));
        let check = lab.cni("CHECK", &cid, &with_prev);
        check.ok();
        assert!(check.stdout.is_empty(), "{check:?}");

        // A broken attachment fails CHECK, saying what is wrong.
        ip(&["-n", &lab.pod, "route", "del", "default"]);
        let check = lab.cni("CHECK", &cid, &with_prev);
        assert_eq!(check.code(), 104, "{check:?}");
        assert!(
            check.json()["details"]
                .as_str()
                .unwrap()
                .contains("default route"),
            "{check:?}"
        );

        // DEL removes both ends and releases; a second DEL is still success.
        lab.cni("DEL", &cid, &with_prev).ok();
        assert!(
            !lab.node_links().contains(&host_ifname),
            "{}",
            lab.node_links()
        );
        assert!(!lab.pod_links().contains("eth0"), "{}", lab.pod_links());
        assert!(
            lab.agent
                .0
                .lock()
                .unwrap()
                .released
                .contains(&(cid.clone(), "eth0".into()))
        );
        lab.cni("DEL", &cid, &lab.conf(version, json!({}))).ok();
    }
}

#[test]
fn del_without_netns_still_cleans_up() {
    let lab = Lab::new("delnons");
    lab.cni("ADD", "c-delnons", &lab.conf("1.1.0", json!({})))
        .ok();
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c-delnons"),
        ("CNI_IFNAME", "eth0"),
    ];
    run_plugin(Some(&lab.node), &env, &lab.conf("1.1.0", json!({}))).ok();
    assert!(!lab.node_links().contains("weft"), "{}", lab.node_links());
    assert_eq!(lab.agent.0.lock().unwrap().released.len(), 1);
}

#[test]
fn add_undoes_everything_when_register_fails() {
    let lab = Lab::new("undo");
    lab.agent.0.lock().unwrap().fail_register = true;
    let run = lab.cni("ADD", "c-undo", &lab.conf("1.1.0", json!({})));
    assert_eq!(run.code(), 103, "{run:?}");
    assert!(
        run.json()["details"]
            .as_str()
            .unwrap()
            .contains("anti-spoofing"),
        "{run:?}"
    );
    assert!(!lab.node_links().contains("weft"), "{}", lab.node_links());
    assert!(!lab.pod_links().contains("eth0"), "{}", lab.pod_links());
    let s = lab.agent.0.lock().unwrap();
    assert!(s.allocated.is_empty(), "address not released");
}

#[test]
fn add_reports_exhaustion_and_existing_interfaces() {
    let lab = Lab::new("refuse");
    lab.agent.0.lock().unwrap().exhausted = true;
    let run = lab.cni("ADD", "c-full", &lab.conf("1.0.0", json!({})));
    assert_eq!(run.code(), 100, "{run:?}");
    assert!(!lab.node_links().contains("weft"), "{}", lab.node_links());

    lab.agent.0.lock().unwrap().exhausted = false;
    ip(&[
        "-n", &lab.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ]);
    let calls_before = lab.agent.0.lock().unwrap().allocate_calls;
    let run = lab.cni("ADD", "c-exists", &lab.conf("1.0.0", json!({})));
    assert_eq!(run.code(), 101, "{run:?}");
    assert_eq!(
        lab.agent.0.lock().unwrap().allocate_calls,
        calls_before,
        "allocated although eth0 exists"
    );
    assert!(
        lab.pod_links().contains("eth0"),
        "the existing eth0 must survive"
    );
}

#[test]
fn gc_and_status_talk_to_the_agent() {
    let lab = Lab::new("gcstatus");
    let valid = json!({"cni.dev/valid-attachments": [{"containerID": "c-keep", "ifname": "eth0"}]});
    let gc = run_plugin(
        Some(&lab.node),
        &[("CNI_COMMAND", "GC")],
        &lab.conf("1.1.0", valid),
    );
    gc.ok();
    assert!(gc.stdout.is_empty(), "{gc:?}");
    assert_eq!(
        lab.agent.0.lock().unwrap().gc_valid,
        Some(vec![("c-keep".to_string(), "eth0".to_string())])
    );

    run_plugin(
        Some(&lab.node),
        &[("CNI_COMMAND", "STATUS")],
        &lab.conf("1.1.0", json!({})),
    )
    .ok();
    lab.agent.0.lock().unwrap().ready = false;
    let status = run_plugin(
        Some(&lab.node),
        &[("CNI_COMMAND", "STATUS")],
        &lab.conf("1.1.0", json!({})),
    );
    assert_eq!(status.code(), 50, "{status:?}");
    assert!(
        status.json()["details"]
            .as_str()
            .unwrap()
            .contains("datastore not synced"),
        "{status:?}"
    );
}
