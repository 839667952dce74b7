//! Processes the lab starts inside node or pod namespaces, and the checks
//! that make sure it only ever signals those processes.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::topology::netns_path;

/// Makes `command` start inside the named network namespace, and in a
/// session of its own when `new_session` (so it outlives weftctl and its
/// terminal). The namespace file is opened here, before the fork: between
/// fork and exec only async-signal-safe calls are allowed, and weftctl may
/// have other threads holding the allocator lock, so the child does nothing
/// but two system calls. The fd is close-on-exec and stays alive in the
/// closure for as long as `command` does.
pub fn in_netns(command: &mut Command, netns: &str, new_session: bool) -> Result<()> {
    let path = netns_path(netns);
    let ns: OwnedFd = File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?
        .into();
    // SAFETY: the closure only makes the setns and setsid system calls,
    // both async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if new_session && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The pids of every process now running (the numeric entries of /proc).
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// The command line of `pid` as its arguments, None if it is gone.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None; // a zombie or a kernel thread
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` is alive (not a zombie) and is the agent that serves
/// `socket`: a recorded pid may have been reused by another process since.
pub fn is_agent(pid: u32, socket: &Path) -> bool {
    if is_zombie(pid) {
        return false;
    }
    let Some(args) = cmdline(pid) else {
        return false;
    };
    // Any argument, not only argv[0]: the agent may run under a wrapper or
    // an interpreter (a script in tests).
    let is_weft_agent = args
        .iter()
        .any(|a| a == "weft-agent" || a.ends_with("/weft-agent"));
    let socket = socket.display().to_string();
    is_weft_agent
        && args
            .windows(2)
            .any(|w| w[0] == "--socket" && w[1] == socket)
}

pub(crate) fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the parenthesised command name, which may hold spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        == Some('Z')
}

/// Whether `pid` has ended for good: reaped, or a zombie none of whose
/// threads still runs. The leader of a multi-threaded process turns zombie
/// as soon as its own thread exits, while its other threads may still hold
/// the process's files open, listening sockets among them: a successor
/// started then cannot bind them.
pub(crate) fn has_ended(pid: u32) -> bool {
    is_zombie(pid)
        && std::fs::read_dir(format!("/proc/{pid}/task")).map_or(true, |tasks| tasks.count() <= 1)
}

/// How an agent was ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    NotRunning,
    Terminated,
    Killed,
}

/// Ends the agent `pid` if it still is the agent serving `socket`: SIGTERM,
/// then SIGKILL if it has not exited after `grace` (zero grace: SIGKILL
/// straight away).
pub fn stop_agent(pid: u32, socket: &Path, grace: Duration) -> Result<Ended> {
    if !is_agent(pid, socket) {
        return Ok(Ended::NotRunning);
    }
    let target = nix::unistd::Pid::from_raw(pid as i32);
    if !grace.is_zero() {
        nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("sending SIGTERM to weft-agent pid {pid}"))?;
        if wait_ended(pid, grace) {
            return Ok(Ended::Terminated);
        }
    }
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL)
        .with_context(|| format!("sending SIGKILL to weft-agent pid {pid}"))?;
    if !wait_ended(pid, Duration::from_secs(5)) {
        anyhow::bail!("weft-agent pid {pid} is still alive 5 s after SIGKILL");
    }
    Ok(Ended::Killed)
}

/// Waits up to `within` until the signalled process `pid` has ended (see
/// [`has_ended`]); whether it has.
pub(crate) fn wait_ended(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if has_ended(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a log file, for error messages: colour codes
/// stripped and a trailing Rust backtrace cut off, so the error itself
/// (which comes before the backtrace) is what gets quoted.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = strip_ansi(&String::from_utf8_lossy(&bytes));
            let mut all: Vec<&str> = text.lines().collect();
            if let Some(at) = all.iter().rposition(|l| {
                l.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("stack backtrace:")
            }) {
                all.truncate(at);
            }
            while all.last().is_some_and(|l| l.trim().is_empty()) {
                all.pop();
            }
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            if tail.trim().is_empty() {
                format!("({} is empty)", path.display())
            } else {
                tail
            }
        }
        Err(e) => format!("({} cannot be read: {e})", path.display()),
    }
}

/// Removes ANSI escape sequences (ESC [ ... letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_has_ended_once_reaped_or_a_zombie_with_no_threads_left() {
        // This test's own process runs several threads (the test harness).
        assert!(!has_ended(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_zombie(pid) {
            assert!(Instant::now() < deadline, "`true` did not exit");
            thread::sleep(Duration::from_millis(5));
        }
        assert!(has_ended(pid), "an unreaped zombie with one thread");
        child.wait().unwrap();
        assert!(has_ended(pid), "a reaped process");
    }

    #[test]
    fn log_tail_quotes_the_error_not_the_backtrace() {
        let path = std::env::temp_dir().join(format!("weftctl-log-test-{}", std::process::id()));
        std::fs::write(
            &path,
            "\u{1b}[2mtime\u{1b}[0m INFO starting\nError: eBPF pod guard\n\nCaused by:\n    no object\n\n\
             Stack backtrace:\n   0: anyhow\n   1: main\n",
        )
        .unwrap();
        assert_eq!(log_tail(&path, 2), "Caused by:\n    no object");
        assert!(log_tail(&path, 30).starts_with("time INFO starting\nError: eBPF pod guard"));
        std::fs::remove_file(&path).unwrap();
        assert!(log_tail(&path, 3).contains("cannot be read"));
    }
}
