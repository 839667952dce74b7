//! What the BGP crate's root tests share: two network namespaces joined by
//! a veth pair (A is 198.18.9.1, B .2), deleted on drop.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;

pub struct Pair {
    pub a: String,
    pub b: String,
}

impl Pair {
    /// Fails the test unless it runs as root. `tag` keeps tests apart.
    pub fn new(tag: &str) -> Pair {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces): run it as root"
        );
        let pid = std::process::id();
        let pair = Pair {
            a: format!("weft-t-bgp-{pid}-{tag}-a"),
            b: format!("weft-t-bgp-{pid}-{tag}-b"),
        };
        for ns in [&pair.a, &pair.b] {
            ip(&["netns", "add", ns]);
        }
        ip(&[
            "-n", &pair.a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns",
            &pair.b,
        ]);
        ip(&["-n", &pair.a, "addr", "add", "198.18.9.1/24", "dev", "v0"]);
        ip(&["-n", &pair.b, "addr", "add", "198.18.9.2/24", "dev", "v1"]);
        for (ns, dev) in [(&pair.a, "v0"), (&pair.b, "v1")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
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

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}
