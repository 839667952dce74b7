//! Captures on a lab's underlay bridges: what crosses the wire between
//! nodes, read back with tcpdump filters.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::peers::Daemon;
use crate::{eventually, show, stdout};

/// tcpdump writing what crosses `bridge` (in the fabric namespace) to a
/// pcap file of its own, until [`Capture::stop`].
pub struct Capture {
    daemon: Daemon,
    file: PathBuf,
    dir: tempfile::TempDir,
}

impl Capture {
    /// Starts tcpdump and waits until it listens.
    pub fn start(fabric_netns: &str, bridge: &str) -> Capture {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("underlay.pcap");
        let log = dir.path().join("tcpdump.log");
        let daemon = Daemon::spawn(
            "tcpdump",
            fabric_netns,
            &[
                "tcpdump",
                "-i",
                bridge,
                "-U",
                // Hand each packet over at once: what is still in the
                // kernel's buffer at SIGINT would be lost.
                "--immediate-mode",
                // Stay root: the pcap file lives in a root-only directory.
                "-Z",
                "root",
                "-n",
                "-s",
                "128",
                "-w",
                file.to_str().unwrap(),
            ],
            &log,
        );
        eventually("tcpdump listens", Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                Ok(())
            } else {
                Err(text)
            }
        });
        Capture { daemon, file, dir }
    }

    /// Stops the capture; the packets stay readable with [`Captured::count`].
    pub fn stop(self) -> Captured {
        std::thread::sleep(Duration::from_millis(300));
        self.daemon.stop_with(Signal::SIGINT);
        Captured {
            file: self.file,
            _dir: self.dir,
        }
    }
}

/// A finished capture.
pub struct Captured {
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Captured {
    /// Packets matching a tcpdump `filter` (which sees the outer headers).
    pub fn count(&self, filter: &str) -> usize {
        // A packet's line starts with its timestamp; tcpdump prints what
        // it decodes inside VXLAN on a line of its own.
        self.lines(filter)
            .iter()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .count()
    }

    /// tcpdump's lines for the packets matching `filter`.
    pub fn lines(&self, filter: &str) -> Vec<String> {
        let out = std::process::Command::new("tcpdump")
            .args(["-r", self.file.to_str().unwrap(), "-n", filter])
            .output()
            .expect("tcpdump runs");
        assert!(out.status.success(), "tcpdump -r: {}", show(&out));
        stdout(&out).lines().map(str::to_string).collect()
    }
}
