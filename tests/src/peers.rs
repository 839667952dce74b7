//! Real BGP peers for the route distributor's tests: BIRD 2 and GoBGP, each
//! in a namespace of its own plugged into a lab's underlay bridge.
//!
//! Everything here is torn down on drop (also when a test fails): the
//! daemon is stopped by the pid this harness started, the namespace (and
//! with it the veth into the fabric) is deleted.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Lab, netns_exec, show, stdout};

/// A host on the lab's underlay that is not a node: a router, a peer.
pub struct UnderlayHost {
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl UnderlayHost {
    /// Creates `<lab>-ext-<name>` with `eth0` at `ip`/24, its other end on
    /// the fabric bridge. `name` is at most 10 characters (the fabric port
    /// is `x-<name>`, within the 15 of an interface name).
    pub fn attach(lab: &Lab, name: &str, ip: Ipv4Addr) -> UnderlayHost {
        assert!(
            name.len() <= 10,
            "underlay host name {name:?} is longer than 10 characters"
        );
        let fabric = lab.status().fabric;
        let netns = format!("{}-ext-{name}", lab.name);
        let port = format!("x-{name}");
        let host = UnderlayHost {
            netns: netns.clone(),
            ip,
        };
        run(&["ip", "netns", "add", &netns]);
        run(&[
            "ip",
            "-n",
            &fabric.netns,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns,
        ]);
        run(&[
            "ip",
            "-n",
            &fabric.netns,
            "link",
            "set",
            &port,
            "master",
            &fabric.bridge,
            "up",
        ]);
        run(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        host
    }

    /// The host's IPv4 routes, as `ip route` prints them.
    pub fn routes(&self) -> String {
        stdout(&netns_exec(&self.netns, &["ip", "route"]))
    }
}

impl Drop for UnderlayHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("command runs");
    assert!(out.status.success(), "{cmd:?}: {}", show(&out));
}

/// A daemon this harness started (a BGP speaker, a capture, a long ping);
/// stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    child: Child,
    name: &'static str,
}

impl Daemon {
    /// Runs `argv` in `netns`, its stdout and stderr into `log`.
    pub fn spawn(name: &'static str, netns: &str, argv: &[&str], log: &Path) -> Daemon {
        let log_file = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start ({e}): install it (make deps)"));
        Daemon { child, name }
    }

    /// Sends `signal` (SIGINT: ping prints its summary, tcpdump flushes)
    /// and waits up to 5 s for the exit; fails the test if it does not end.
    pub fn stop_with(mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not end on {signal}", self.name);
    }

    /// Fails the test if the daemon has exited.
    pub fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Ended already (and reaped): its pid may belong to someone else now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // `ip netns exec` execs the daemon: this pid is the daemon's own.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// BIRD 2 on an underlay host, with its own control socket.
pub struct Bird {
    daemon: Daemon,
    pub host: UnderlayHost,
    dir: tempfile::TempDir,
}

impl Bird {
    /// Starts BIRD with `config` (a whole bird.conf) on a new underlay host.
    pub fn start(lab: &Lab, name: &str, ip: Ipv4Addr, config: &str) -> Bird {
        let host = UnderlayHost::attach(lab, name, ip);
        let dir = tempfile::Builder::new()
            .prefix("weft-bird-")
            .tempdir()
            .unwrap();
        let conf = dir.path().join("bird.conf");
        std::fs::write(&conf, config).unwrap();
        // BIRD opens its control socket before it reads the config and
        // exits on a bad one: check the config first, so a mistake fails
        // here and not later as a session stuck in Active.
        let parsed = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("bird runs (make deps)");
        assert!(
            parsed.status.success(),
            "BIRD rejects its config:\n{config}\n{}",
            show(&parsed)
        );
        let socket = dir.path().join("bird.ctl");
        let log = dir.path().join("bird.log");
        let daemon = Daemon::spawn(
            "bird",
            &host.netns,
            &[
                "bird",
                "-f",
                "-c",
                conf.to_str().unwrap(),
                "-s",
                socket.to_str().unwrap(),
                "-P",
                dir.path().join("bird.pid").to_str().unwrap(),
            ],
            &log,
        );
        let mut bird = Bird { daemon, host, dir };
        bird.wait_for_socket();
        bird
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() {
            self.daemon.assert_running(&self.log());
            assert!(
                Instant::now() < deadline,
                "BIRD did not open its control socket:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bird.ctl")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("bird.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Waits until BIRD's table has a route to `prefix`.
    pub fn wait_for_route(&mut self, prefix: &str) {
        crate::eventually(&format!("BIRD learns {prefix}"), crate::BGP_WAIT, || {
            let routes = self.birdc("show route");
            if routes.contains(prefix) {
                Ok(())
            } else {
                Err(routes)
            }
        });
    }

    /// Runs a birdc command and returns its output.
    pub fn birdc(&mut self, command: &str) -> String {
        self.daemon.assert_running(&self.log());
        let out = Command::new("birdc")
            .args(["-s", self.socket().to_str().unwrap()])
            .args(command.split_whitespace())
            .output()
            .expect("birdc runs");
        assert!(out.status.success(), "birdc {command}: {}", show(&out));
        stdout(&out)
    }
}

/// GoBGP on an underlay host; its gRPC API listens on the host's loopback.
pub struct GoBgp {
    daemon: Daemon,
    pub host: UnderlayHost,
    dir: tempfile::TempDir,
}

const GOBGP_API: &str = "127.0.0.1:50051";

impl GoBgp {
    /// Starts gobgpd with `config` (TOML) on a new underlay host.
    pub fn start(lab: &Lab, name: &str, ip: Ipv4Addr, config: &str) -> GoBgp {
        let host = UnderlayHost::attach(lab, name, ip);
        let dir = tempfile::Builder::new()
            .prefix("weft-gobgp-")
            .tempdir()
            .unwrap();
        let conf = dir.path().join("gobgpd.toml");
        std::fs::write(&conf, config).unwrap();
        let log = dir.path().join("gobgpd.log");
        let daemon = Daemon::spawn(
            "gobgpd",
            &host.netns,
            &[
                "gobgpd",
                "-f",
                conf.to_str().unwrap(),
                "-t",
                "toml",
                "--api-hosts",
                GOBGP_API,
                "--pprof-disable",
            ],
            &log,
        );
        let mut gobgp = GoBgp { daemon, host, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            gobgp
                .daemon
                .assert_running(&gobgp.dir.path().join("gobgpd.log"));
            let out = netns_exec(
                &gobgp.host.netns,
                &["gobgp", "-u", "127.0.0.1", "-p", "50051", "global"],
            );
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gobgpd's API did not answer: {}",
                show(&out)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gobgp
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gobgpd.log")).unwrap_or_default()
    }

    /// Runs a gobgp CLI command (e.g. `neighbor`, `global rib`) and returns its output.
    pub fn gobgp(&mut self, args: &[&str]) -> String {
        self.daemon
            .assert_running(&self.dir.path().join("gobgpd.log"));
        let mut cmd = vec!["gobgp", "-u", "127.0.0.1", "-p", "50051"];
        cmd.extend_from_slice(args);
        let out = netns_exec(&self.host.netns, &cmd);
        assert!(out.status.success(), "gobgp {args:?}: {}", show(&out));
        stdout(&out)
    }
}
