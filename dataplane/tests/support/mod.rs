//! What the dataplane's root tests share: the root check, `ip`, and running
//! code inside a named network namespace. Each test binary uses a part.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;

use nix::sched::{CloneFlags, setns};

/// Fails the test loudly unless it runs as root; `test` names the test
/// file, `needs` what it needs root for.
pub fn require_root(test: &str, needs: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the {test} tests need root ({needs}); run them as root: \
         `sudo -E cargo test -p weft-dataplane --test {test}`"
    );
}

/// Runs `ip ARGS`, panicking with its stderr on failure; returns stdout.
pub fn ip(args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run `ip` (install iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `ping -c COUNT` (every 0.2 s, 2 s to wait for each answer) from the
/// network namespace `ns` to `to`, with `extra` options (size, DF, source);
/// whether every echo was answered. What ping said is printed on failure.
pub fn ping(ns: &str, to: std::net::Ipv4Addr, count: u32, extra: &[&str]) -> bool {
    let output = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-q"])
        .args(["-c", &count.to_string(), "-W", "2", "-i", "0.2"])
        .args(extra)
        .arg(to.to_string())
        .output()
        .expect("cannot run ping (install iputils-ping)");
    if !output.status.success() {
        eprintln!(
            "ping {to} from {ns}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output.status.success()
}

/// Runs `f` on a scoped thread inside the named network namespace, so the
/// test thread itself never changes namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
