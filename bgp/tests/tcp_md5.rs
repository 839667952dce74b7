//! TCP MD5 signatures on a real kernel: two network namespaces joined by a
//! veth pair; a connection comes up only when both ends hold the same key.
//! Needs root.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use weft_bgp::tcp_md5::set_key;

struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root (network namespaces): run it as root");
        let pid = std::process::id();
        let pair = Pair { a: format!("weft-t-md5-{pid}-{tag}-a"), b: format!("weft-t-md5-{pid}-{tag}-b") };
        for ns in [&pair.a, &pair.b] {
            ip(&["netns", "add", ns]);
        }
        ip(&["-n", &pair.a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &pair.b]);
        ip(&["-n", &pair.a, "addr", "add", "198.18.9.1/24", "dev", "v0"]);
        ip(&["-n", &pair.b, "addr", "add", "198.18.9.2/24", "dev", "v1"]);
        ip(&["-n", &pair.a, "link", "set", "v0", "up"]);
        ip(&["-n", &pair.b, "link", "set", "v1", "up"]);
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Listens in `a` with `server_key` for 198.18.9.2, connects from `b` with
/// `client_key` (if any); true if the connection came up.
fn connects(tag: &str, server_key: &'static [u8], client_key: Option<&'static [u8]>) -> bool {
    let pair = Pair::new(tag);
    let listener = in_netns(&pair.a, move || {
        let l = TcpListener::bind("198.18.9.1:1179").unwrap();
        set_key(l.as_fd(), "198.18.9.2".parse().unwrap(), server_key).unwrap();
        l
    });
    let connected = in_netns(&pair.b, move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(key) = client_key {
            set_key(socket.as_fd(), "198.18.9.1".parse::<IpAddr>().unwrap(), key).unwrap();
        }
        let to: SocketAddr = "198.18.9.1:1179".parse().unwrap();
        socket.connect_timeout(&to.into(), Duration::from_secs(2)).is_ok()
    });
    drop(listener);
    connected
}

#[test]
fn same_key_connects() {
    assert!(connects("same", b"s3cret", Some(b"s3cret")));
}

#[test]
fn wrong_key_never_connects() {
    assert!(!connects("wrong", b"s3cret", Some(b"other")));
}

#[test]
fn missing_key_never_connects() {
    assert!(!connects("none", b"s3cret", None));
}
