//! The server a lab pod runs on its container ports, so that policy on
//! named and numbered ports can be tested against something listening:
//! each TCP port accepts and echoes, each UDP port echoes datagrams. SCTP
//! ports get none (this kernel has no SCTP sockets).
//!
//! It is `weftctl lab serve --netns <pod netns> --ports ...`, started by
//! `lab pod add` from the lab's bin dir (no other binary to install),
//! recorded in lab.json by pid, and ended only by that pid after checking
//! the process still is the server of that pod ([`is_server`]); `lab down`
//! also finds servers of the lab's pods whose pid was never recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_model::ContainerPort;
use weft_model::policy::Protocol;

use crate::process;
use crate::topology::netns_path;

/// The binary that serves (weftctl, from the lab's bin dir).
pub const BINARY: &str = "weftctl";
/// What the server prints once every port is bound.
const READY: &str = "ready";
/// How long `lab pod add` waits for the server to bind its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a port gets a server: TCP and UDP do, SCTP does not.
pub fn is_served(port: &ContainerPort) -> bool {
    matches!(port.protocol, Protocol::Tcp | Protocol::Udp)
}

/// The `--ports` text of `ports`, as [`crate::cni::parse_ports`] reads it.
pub fn ports_arg(ports: &[ContainerPort]) -> String {
    ports
        .iter()
        .map(|p| {
            let proto = p.protocol.name().to_ascii_lowercase();
            match &p.name {
                Some(name) => format!("{name}:{}/{proto}", p.container_port),
                None => format!("{}/{proto}", p.container_port),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the server in network namespace `netns` until killed: enters
/// it, binds every TCP and UDP port of `ports` on all addresses, prints
/// `ready`, then serves each socket on a thread of its own (each TCP
/// connection on one more).
pub fn serve(netns: &str, ports: &[ContainerPort]) -> Result<std::convert::Infallible> {
    enter_netns(netns)?;
    let mut threads = Vec::new();
    for port in ports.iter().filter(|p| is_served(p)) {
        let at = ("0.0.0.0", port.container_port);
        let what = format!("{}/{}", port.container_port, port.protocol.name());
        match port.protocol {
            Protocol::Udp => {
                let socket = UdpSocket::bind(at).with_context(|| format!("binding {what}"))?;
                threads.push(thread::spawn(move || echo_datagrams(socket)));
            }
            _ => {
                let listener = TcpListener::bind(at).with_context(|| format!("binding {what}"))?;
                threads.push(thread::spawn(move || accept_and_echo(listener)));
            }
        }
    }
    println!("{READY}");
    std::io::stdout().flush()?;
    for thread in threads {
        let _ = thread.join();
    }
    bail!("every socket of the server failed")
}

/// Moves this thread (and the threads it starts) into `netns`.
fn enter_netns(netns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = netns_path(netns);
    let file = std::fs::File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    // SAFETY: setns on an fd we own.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {netns}"));
    }
    Ok(())
}

fn accept_and_echo(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        thread::spawn(move || echo_stream(stream));
    }
}

fn echo_stream(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn echo_datagrams(socket: UdpSocket) {
    let mut buf = [0u8; 65536];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let _ = socket.send_to(&buf[..n], from);
    }
}

/// The weftctl that serves, checked before a pod is created.
pub fn binary_path(bin_dir: &Path) -> Result<PathBuf> {
    let path = bin_dir.join(BINARY);
    if !path.is_file() {
        bail!(
            "{} not found: a pod with ports runs `weftctl lab serve` from the lab's bin dir \
             (build it with `cargo build -p weftctl`)",
            path.display()
        );
    }
    Ok(path)
}

/// Starts the server of pod namespace `netns` in a process group of its
/// own (it outlives weftctl, and a ^C at the terminal does not reach
/// it). Returns at once: record the pid, then [`wait_ready`].
pub fn start(bin_dir: &Path, netns: &str, ports: &[ContainerPort]) -> Result<Child> {
    let binary = binary_path(bin_dir)?;
    Command::new(&binary)
        .args([
            "lab",
            "serve",
            "--netns",
            netns,
            "--ports",
            &ports_arg(ports),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} lab serve for {netns}", binary.display()))
}

/// Waits until the server has bound its ports; on failure says why (its
/// stderr), and the caller stops it.
pub fn wait_ready(child: &mut Child) -> Result<()> {
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) if line.trim() == READY => Ok(()),
        Ok(_) => {
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut stderr);
            }
            bail!("the pod's port server failed: {}", stderr.trim())
        }
        Err(_) => bail!(
            "the pod's port server did not bind its ports within {} s",
            READY_TIMEOUT.as_secs()
        ),
    }
}

/// Whether `pid` is alive and is the port server of pod namespace `netns`
/// (a recorded pid may have been reused since).
pub fn is_server(pid: u32, netns: &str) -> bool {
    !process::is_zombie(pid)
        && process::cmdline(pid).is_some_and(|args| serves(&args) == Some(netns))
}

/// The pod namespace a command line serves, if it is a port server's.
fn serves(args: &[String]) -> Option<&str> {
    let binary = args.first()?;
    if !(binary == BINARY || binary.ends_with(&format!("/{BINARY}"))) {
        return None;
    }
    if !args.windows(2).any(|w| w[0] == "lab" && w[1] == "serve") {
        return None;
    }
    args.windows(2)
        .find(|w| w[0] == "--netns")
        .map(|w| w[1].as_str())
}

/// SIGKILLs the server `pid` of `netns` if it still is that; `false` if
/// it was not running.
pub fn stop(pid: u32, netns: &str) -> Result<bool> {
    if !is_server(pid, netns) {
        return Ok(false);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .with_context(|| format!("sending SIGKILL to the port server pid {pid} of {netns}"))?;
    if process::wait_ended(pid, Duration::from_secs(5)) {
        return Ok(true);
    }
    bail!("the port server pid {pid} of {netns} is still alive 5 s after SIGKILL")
}

/// Every running port server whose pod namespace `is_ours` accepts, as
/// (pid, netns): how `lab down` finds servers whose pid was never
/// recorded (a crash between start and record).
pub fn running(is_ours: impl Fn(&str) -> bool) -> Vec<(u32, String)> {
    process::pids()
        .into_iter()
        .filter_map(|pid| {
            let args = process::cmdline(pid)?;
            let netns = serves(&args)?.to_string();
            (is_ours(&netns) && !process::is_zombie(pid)).then_some((pid, netns))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_round_trip_through_the_command_line() {
        let ports = crate::cni::parse_ports("http:8080,53/udp,x:9/sctp").unwrap();
        assert_eq!(ports_arg(&ports), "http:8080/tcp,53/udp,x:9/sctp");
        assert_eq!(crate::cni::parse_ports(&ports_arg(&ports)).unwrap(), ports);
        assert_eq!(ports.iter().filter(|p| is_served(p)).count(), 2);
    }

    #[test]
    fn only_a_weftctl_serving_that_pod_is_a_server() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let server = args(&[
            "/opt/weft/weftctl",
            "lab",
            "serve",
            "--netns",
            "l-pod-a",
            "--ports",
            "80/tcp",
        ]);
        assert_eq!(serves(&server), Some("l-pod-a"));
        assert_eq!(
            serves(&args(&["weftctl", "lab", "status", "--netns", "x"])),
            None
        );
        assert_eq!(
            serves(&args(&["/bin/sleep", "lab", "serve", "--netns", "x"])),
            None
        );
        assert!(!is_server(std::process::id(), "l-pod-a"));
    }
}
