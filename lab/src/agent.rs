//! Starting, waiting for and stopping a lab node's weft-agent.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agent_api;
use crate::process::{in_netns, log_tail};
use crate::state::{LabState, Node};

pub const AGENT: &str = "weft-agent";
/// Lines of agent.log quoted when an agent fails to come up.
const LOG_TAIL_LINES: usize = 30;

pub fn agent_path(bin_dir: &Path) -> Result<PathBuf> {
    let path = bin_dir.join(AGENT);
    if !path.is_file() {
        bail!(
            "{} not found (build it with `cargo build -p weft-agent`, or pass --bin-dir)",
            path.display()
        );
    }
    Ok(path)
}

pub fn log_path(node: &Node) -> PathBuf {
    node.state_dir.join("agent.log")
}

/// Starts the agent of `node` inside the node's namespace, in a session of
/// its own so it outlives weftctl, with stdout and stderr appended to
/// `<node state>/agent.log`. Not `ip netns exec`: that remounts /sys and
/// would hide the shared bpffs from the agent.
pub fn start(state: &LabState, node: &Node) -> Result<Child> {
    let binary = agent_path(&state.bin_dir)?;
    std::fs::create_dir_all(&node.state_dir)
        .with_context(|| format!("creating {}", node.state_dir.display()))?;
    std::fs::create_dir_all(state.datastore_dir())
        .with_context(|| format!("creating {}", state.datastore_dir().display()))?;
    let socket_len = node.socket.as_os_str().len();
    if socket_len >= 108 {
        bail!(
            "agent socket path {} is {socket_len} bytes, over the 107 a unix socket allows; use a shorter --state-dir",
            node.socket.display()
        );
    }
    let log = log_path(node);
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(&binary);
    command
        .args(state.agent_args(node))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    in_netns(&mut command, &node.netns, true)?;
    command.spawn().with_context(|| {
        format!(
            "starting {} for {} in namespace {}",
            binary.display(),
            node.name,
            node.netns
        )
    })
}

/// An agent being waited for.
pub struct Starting<'a> {
    pub node: &'a Node,
    pub child: Child,
}

/// Waits until every agent answers Status with ready=true. Fails on the
/// first agent that exits, or at `timeout`, quoting the tail of its log.
pub fn wait_ready(mut starting: Vec<Starting>, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_seen: Vec<String> = vec![String::new(); starting.len()];
    let mut pending: Vec<usize> = (0..starting.len()).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for &i in &pending {
            let Starting { node, child } = &mut starting[i];
            if let Some(status) = child.try_wait().context("checking on a starting agent")? {
                bail!(
                    "weft-agent of {} (pid {}) exited with {status} before it was ready; last lines of {}:\n{}",
                    node.name,
                    child.id(),
                    log_path(node).display(),
                    log_tail(&log_path(node), LOG_TAIL_LINES)
                );
            }
            match agent_api::block_on(agent_api::status(&node.socket, Duration::from_millis(500))) {
                Ok(status) if status.ready => continue,
                Ok(status) => last_seen[i] = format!("Status says not ready: {:?}", status.message),
                Err(e) => last_seen[i] = crate::error_chain(&e),
            }
            still.push(i);
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let i = pending[0];
            let node = starting[i].node;
            bail!(
                "weft-agent of {} (pid {}) not ready after {} s (last: {}); last lines of {}:\n{}",
                node.name,
                starting[i].child.id(),
                timeout.as_secs(),
                last_seen[i],
                log_path(node).display(),
                log_tail(&log_path(node), LOG_TAIL_LINES)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
