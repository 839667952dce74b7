//! Namespaces, the underlay bridge and veths, made with iproute2. Every
//! object is created inside a namespace the lab owns (veths are created in
//! the fabric namespace with their peer placed straight into the node
//! namespace), so the machine's own interfaces are never touched.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Runs `ip ARGS`, failing with the command line and ip's own message.
/// The IPv4 routes of a namespace, as `ip route` prints them.
pub fn routes(netns: &str) -> Result<String> {
    let output = Command::new("ip")
        .args(["-n", netns, "-4", "route", "show"])
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !output.status.success() {
        bail!(
            "`ip -n {netns} route` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Creates a named namespace with `lo` up.
pub fn create_netns(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Deletes a named namespace; Ok(false) when it did not exist.
pub fn delete_netns(name: &str) -> Result<bool> {
    if !netns_exists(name) {
        return Ok(false);
    }
    ip(&["netns", "delete", name])?;
    Ok(true)
}

/// The names under /run/netns.
pub fn list_netns() -> Result<Vec<String>> {
    match fs::read_dir(NETNS_DIR) {
        Ok(entries) => {
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {NETNS_DIR}")),
    }
}

/// The fabric: a namespace holding the underlay bridge.
pub fn create_fabric(netns: &str, bridge: &str) -> Result<()> {
    create_netns(netns)?;
    create_bridge(netns, bridge)
}

/// One more underlay bridge in the fabric namespace, up.
pub fn create_bridge(netns: &str, bridge: &str) -> Result<()> {
    ip(&["-n", netns, "link", "add", bridge, "type", "bridge"])?;
    ip(&["-n", netns, "link", "set", bridge, "up"])
}

/// A route in `netns` to `cidr` via `gateway` on `dev`.
pub fn add_route(netns: &str, cidr: &str, gateway: std::net::Ipv4Addr, dev: &str) -> Result<()> {
    ip(&[
        "-n",
        netns,
        "route",
        "add",
        cidr,
        "via",
        &gateway.to_string(),
        "dev",
        dev,
    ])
}

/// Plugs a node into the fabric: a veth whose fabric end is a bridge port
/// and whose node end is the node's uplink with its underlay address.
pub fn attach_node(
    fabric_netns: &str,
    bridge: &str,
    fabric_port: &str,
    node_netns: &str,
    uplink: &str,
    underlay_ip: Ipv4Addr,
    prefix_len: u8,
) -> Result<()> {
    ip(&[
        "-n",
        fabric_netns,
        "link",
        "add",
        fabric_port,
        "type",
        "veth",
        "peer",
        "name",
        uplink,
        "netns",
        node_netns,
    ])?;
    ip(&[
        "-n",
        fabric_netns,
        "link",
        "set",
        fabric_port,
        "master",
        bridge,
        "up",
    ])?;
    let address = format!("{underlay_ip}/{prefix_len}");
    ip(&["-n", node_netns, "addr", "add", &address, "dev", uplink])?;
    ip(&["-n", node_netns, "link", "set", uplink, "up"])
}

/// Unplugs a node from the fabric by deleting the fabric end of its veth,
/// which takes the node end with it at once. Deleting only the node's
/// namespace would leave the port to the kernel's asynchronous namespace
/// cleanup, and a node added right after under the same index would find
/// its port name still taken. Ok(false) when there was no such port.
pub fn detach_node(fabric_netns: &str, fabric_port: &str) -> Result<bool> {
    if !netns_exists(fabric_netns) {
        return Ok(false);
    }
    let shown = Command::new("ip")
        .args(["-n", fabric_netns, "link", "show", fabric_port])
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !shown.status.success() {
        return Ok(false);
    }
    ip(&["-n", fabric_netns, "link", "del", fabric_port])?;
    Ok(true)
}

/// Writes a sysctl under /proc/sys/net from a thread inside the namespace:
/// /proc/sys/net shows the namespace of the thread that opens it.
pub fn set_net_sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_string();
    let shown = file.clone();
    weft_dataplane::netns::run_in(&netns_path(netns), move || fs::write(&file, value))?
        .with_context(|| format!("setting {} in namespace {netns}", shown.display()))
}

/// Reads a sysctl under /proc/sys/net as seen from inside the namespace.
pub fn get_net_sysctl(netns: &str, key: &str) -> Result<String> {
    let file = Path::new("/proc/sys").join(key.replace('.', "/"));
    let shown = file.clone();
    let value =
        weft_dataplane::netns::run_in(&netns_path(netns), move || fs::read_to_string(&file))?
            .with_context(|| format!("reading {} in namespace {netns}", shown.display()))?;
    Ok(value.trim().to_string())
}
