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
}

/// What the lab keeps from a successful ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub ip: Ipv4Addr,
    pub host_ifname: String,
}

/// The network configuration a runtime would read from /etc/cni/net.d.
pub fn network_config(agent_socket: &Path, labels: &BTreeMap<String, String>) -> serde_json::Value {
    let labels: Vec<_> = labels
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    json!({
        "cniVersion": CNI_VERSION,
        "name": "weft",
        "type": PLUGIN,
        "agentSocket": agent_socket.display().to_string(),
        "args": {"cni": {"labels": labels}},
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

/// Runs the plugin for `command` and returns its stdout on success; on
/// failure an error carrying the plugin's code, msg, details and stderr.
fn invoke(command: &str, inv: &Invocation) -> Result<String> {
    let plugin = inv.bin_dir.join(PLUGIN);
    let config = network_config(inv.agent_socket, inv.labels).to_string();
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
        Ok(e) => bail!(
            "{what} failed ({status}): CNI error {}: {} (details: {:?}){stderr}",
            e.code,
            e.msg,
            e.details
        ),
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
        let config = network_config(
            Path::new("/run/weft-lab/weft/nodes/node1/agent.sock"),
            &labels,
        );
        assert_eq!(
            config,
            json!({"cniVersion":"1.1.0","name":"weft","type":"weft-cni",
                   "agentSocket":"/run/weft-lab/weft/nodes/node1/agent.sock",
                   "args":{"cni":{"labels":[{"key":"app","value":"web"}]}}})
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
