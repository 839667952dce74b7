//! Calling weft-cni exactly as a container runtime does: the plugin binary
//! run in the node's namespace, the CNI_* environment, the network
//! configuration on stdin, a Result or an error JSON on stdout.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::json;

use weft_model::ContainerPort;
use weft_model::policy::{Protocol, validate_container_ports};

use crate::process::in_netns;
use crate::topology::netns_path;

pub const PLUGIN: &str = "weft-cni";
pub const CNI_VERSION: &str = "1.1.0";
/// A runtime gives up on a plugin eventually; so does the lab.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One CNI invocation's inputs.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub bin_dir: &'a Path,
    pub node_netns: &'a str,
    pub agent_socket: &'a Path,
    pub container_id: &'a str,
    pub pod_netns: &'a str,
    pub ifname: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub ports: &'a [ContainerPort],
}

/// What the lab keeps from a successful ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub ip: Ipv4Addr,
    pub host_ifname: String,
}

/// The network configuration a runtime would read from /etc/cni/net.d,
/// with the pod's labels and container ports in `args.cni` (as a runtime
/// passes a pod's metadata to the plugins that ask for it).
pub fn network_config(
    agent_socket: &Path,
    labels: &BTreeMap<String, String>,
    ports: &[ContainerPort],
) -> serde_json::Value {
    let labels: Vec<_> = labels
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    let mut args = json!({"labels": labels});
    if !ports.is_empty() {
        args["ports"] = json!(ports);
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": "weft",
        "type": PLUGIN,
        "agentSocket": agent_socket.display().to_string(),
        "args": {"cni": args},
    })
}

/// A random 64-hex container id, as containerd makes them.
pub fn new_container_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a container id")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn add(inv: &Invocation) -> Result<Attached> {
    let stdout = invoke("ADD", inv)?;
    parse_add_result(&stdout)
}

pub fn del(inv: &Invocation) -> Result<()> {
    invoke("DEL", inv).map(|_| ())
}

/// CNI's "try again later": a transient condition the runtime retries.
pub const TRY_AGAIN_LATER: u32 = 11;

/// ADD as the kubelet does it: an ADD that fails with "try again later"
/// (the agent is restarting, or its watch does not know the Pod yet) is
/// undone with DEL and retried, with backoff, for up to `within`; any
/// other failure is final at once.
pub fn add_retrying(inv: &Invocation, within: Duration) -> Result<Attached> {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(250);
    loop {
        match add(inv) {
            Err(e)
                if Instant::now() + pause < deadline
                    && e.downcast_ref::<PluginFailed>()
                        .is_some_and(|f| f.code == TRY_AGAIN_LATER) =>
            {
                let _ = del(inv);
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(4));
            }
            done => return done,
        }
    }
}

/// The parts of a CNI 1.1.0 Result the lab needs. The host veth is the
/// interface without a sandbox; the pod address is `ips[0]`.
pub fn parse_add_result(stdout: &str) -> Result<Attached> {
    #[derive(Deserialize)]
    struct CniResult {
        #[serde(default)]
        interfaces: Vec<Interface>,
        #[serde(default)]
        ips: Vec<IpConfig>,
    }
    #[derive(Deserialize)]
    struct Interface {
        name: String,
        #[serde(default)]
        sandbox: Option<String>,
    }
    #[derive(Deserialize)]
    struct IpConfig {
        address: String,
    }
    let result: CniResult = serde_json::from_str(stdout)
        .with_context(|| format!("weft-cni ADD printed no CNI Result: {stdout:?}"))?;
    let address = &result
        .ips
        .first()
        .context("weft-cni ADD result has no ips")?
        .address;
    let ip = address
        .split('/')
        .next()
        .unwrap_or_default()
        .parse::<Ipv4Addr>()
        .with_context(|| {
            format!("weft-cni ADD result has ips[0].address {address:?}, not an IPv4 CIDR")
        })?;
    let host = result
        .interfaces
        .iter()
        .find(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
        .or(result.interfaces.first())
        .context("weft-cni ADD result has no interfaces")?;
    Ok(Attached {
        ip,
        host_ifname: host.name.clone(),
    })
}

/// A CNI error as the spec prints it.
#[derive(Debug, Deserialize)]
struct CniError {
    code: u32,
    msg: String,
    #[serde(default)]
    details: String,
}

/// A plugin call that failed with a CNI error.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed ({status}): CNI error {code}: {msg} (details: {details:?}){stderr}")]
pub struct PluginFailed {
    what: String,
    status: std::process::ExitStatus,
    pub code: u32,
    msg: String,
    details: String,
    stderr: String,
}

/// Runs the plugin for `command` and returns its stdout on success; on
/// failure an error carrying the plugin's code, msg, details and stderr.
fn invoke(command: &str, inv: &Invocation) -> Result<String> {
    let plugin = inv.bin_dir.join(PLUGIN);
    let config = network_config(inv.agent_socket, inv.labels, inv.ports).to_string();
    let mut cmd = Command::new(&plugin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", netns_path(inv.pod_netns))
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.bin_dir)
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                inv.pod_namespace, inv.pod_name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_netns(&mut cmd, inv.node_netns, false)?;
    let what = format!(
        "{} {command} for pod {}/{}",
        plugin.display(),
        inv.pod_namespace,
        inv.pod_name
    );
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = thread::spawn(move || stdin.write_all(config.as_bytes()));
    let stdout = read_all(child.stdout.take().expect("piped"));
    let stderr = read_all(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not finish within {} s and was killed",
                PLUGIN_TIMEOUT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    let stdout = stdout
        .join()
        .map_err(|_| anyhow!("reading stdout of {what}"))?;
    let stderr = stderr
        .join()
        .map_err(|_| anyhow!("reading stderr of {what}"))?;
    if status.success() {
        return Ok(stdout);
    }
    let stderr = stderr_tail(&stderr);
    match serde_json::from_str::<CniError>(&stdout) {
        Ok(e) => Err(PluginFailed {
            what,
            status,
            code: e.code,
            msg: e.msg,
            details: e.details,
            stderr,
        }
        .into()),
        Err(_) => bail!(
            "{what} failed ({status}) without a CNI error JSON; stdout: {:?}{stderr}",
            stdout.trim()
        ),
    }
}

/// The plugin's last few log lines, for the error message.
fn stderr_tail(stderr: &str) -> String {
    const LINES: usize = 5;
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "; stderr:\n{}",
        lines[lines.len().saturating_sub(LINES)..].join("\n")
    )
}

fn read_all(mut from: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Parses `--labels k=v,k2=v2`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("label {pair:?} is not key=value"))?;
        if key.is_empty() {
            bail!("label {pair:?} has an empty key");
        }
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

/// Parses `--ports name:port/proto,...`: a pod's container ports, each
/// `[NAME:]PORT[/tcp|udp|sctp]` (TCP when no protocol is given), checked
/// as the API server checks a pod spec's.
pub fn parse_ports(text: &str) -> Result<Vec<ContainerPort>> {
    let mut ports = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, rest) = match entry.split_once(':') {
            Some((name, rest)) => (Some(name.to_string()), rest),
            None => (None, entry),
        };
        let (number, protocol) = rest.split_once('/').unwrap_or((rest, "tcp"));
        let container_port = number
            .parse::<u16>()
            .ok()
            .filter(|&n| n != 0)
            .with_context(|| {
                format!("port {entry:?}: {number:?} is not a port number (1-65535)")
            })?;
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => bail!("port {entry:?}: protocol {protocol:?} is not tcp, udp or sctp"),
        };
        ports.push(ContainerPort {
            name,
            container_port,
            protocol,
        });
    }
    validate_container_ports(&ports).map_err(|e| {
        // The entry the error's path (`ports[i]...`) points at.
        let index = e.path.trim_start_matches("ports[").split(']').next();
        let entry = index.and_then(|i| i.parse().ok()).and_then(|i| {
            text.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .nth(i)
        });
        anyhow!(
            "port {:?}: invalid value {:?}: {}",
            entry.unwrap_or_default(),
            e.value,
            e.reason
        )
    })?;
    Ok(ports)
}

/// The plugin binary, checked before anything is created.
pub fn plugin_path(bin_dir: &Path) -> Result<PathBuf> {
    let path = bin_dir.join(PLUGIN);
    if !path.is_file() {
        bail!(
            "{} not found (build it with `cargo build -p weft-cni`, or pass --bin-dir)",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_carries_socket_and_labels() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let socket = Path::new("/run/weft-lab/weft/nodes/node1/agent.sock");
        let config = network_config(socket, &labels, &[]);
        assert_eq!(
            config,
            json!({"cniVersion":"1.1.0","name":"weft","type":"weft-cni",
                   "agentSocket":"/run/weft-lab/weft/nodes/node1/agent.sock",
                   "args":{"cni":{"labels":[{"key":"app","value":"web"}]}}})
        );
    }

    #[test]
    fn config_carries_ports_as_a_pod_spec_writes_them() {
        let ports = parse_ports("http:8080/tcp,53/udp").unwrap();
        let config = network_config(Path::new("/s"), &BTreeMap::new(), &ports);
        assert_eq!(
            config["args"]["cni"]["ports"],
            json!([{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                   {"containerPort": 53, "protocol": "UDP"}])
        );
    }

    #[test]
    fn ports_parse_with_precise_errors() {
        let ports = parse_ports("http:8080, 9000, dns:53/UDP,x-1:7/sctp").unwrap();
        let seen: Vec<_> = ports
            .iter()
            .map(|p| (p.name.as_deref(), p.container_port, p.protocol.name()))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("http"), 8080, "TCP"),
                (None, 9000, "TCP"),
                (Some("dns"), 53, "UDP"),
                (Some("x-1"), 7, "SCTP")
            ]
        );
        assert!(parse_ports("").unwrap().is_empty());
        let refused = |text: &str| format!("{:#}", parse_ports(text).unwrap_err());
        assert_eq!(
            refused("http:0"),
            "port \"http:0\": \"0\" is not a port number (1-65535)"
        );
        assert!(refused("70000/udp").contains("\"70000\" is not a port number"));
        assert_eq!(
            refused("80/icmp"),
            "port \"80/icmp\": protocol \"icmp\" is not tcp, udp or sctp"
        );
        let e = refused("80,Web:81");
        assert!(
            e.starts_with("port \"Web:81\": invalid value \"Web\": must be a port name"),
            "{e}"
        );
        assert!(
            refused("web:80,web:81/udp")
                .starts_with("port \"web:81/udp\": invalid value \"web\": duplicate")
        );
    }

    #[test]
    fn add_result_gives_address_and_host_veth() {
        let stdout = r#"{"cniVersion":"1.1.0",
            "interfaces":[{"name":"weft1a2b3c4d","mac":"aa:bb:cc:dd:ee:ff"},
                          {"name":"eth0","sandbox":"/run/netns/weft-pod-node1-a"}],
            "ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1}]}"#;
        let attached = parse_add_result(stdout).unwrap();
        assert_eq!(
            attached,
            Attached {
                ip: Ipv4Addr::new(10, 244, 1, 5),
                host_ifname: "weft1a2b3c4d".into()
            }
        );
        assert!(parse_add_result(r#"{"ips":[],"interfaces":[]}"#).is_err());
        assert!(parse_add_result("nonsense").is_err());
    }

    #[test]
    fn labels_parse() {
        let labels = parse_labels("app=web, tier=front,empty=").unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["tier"], "front");
        assert_eq!(labels["empty"], "");
        assert!(parse_labels("app").is_err());
        assert!(parse_labels("=x").is_err());
        assert!(parse_labels("").unwrap().is_empty());
    }

    #[test]
    fn container_ids_are_64_hex() {
        let id = new_container_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, new_container_id().unwrap());
    }
}
