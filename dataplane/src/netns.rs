//! Running code inside another network namespace.
//!
//! A thread's network namespace is its own (setns affects only the calling
//! thread), so the closure runs on a fresh thread that enters the namespace
//! and then ends: the caller's thread never changes namespace. Sockets
//! created inside stay bound to that namespace after the thread ends, which
//! is how a netlink handle or a listener for a pod is made.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// An error entering a network namespace, in the caller's terms.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} cannot be opened: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: String, source: nix::Error },
    #[error("thread running in network namespace {path} panicked")]
    Panicked { path: String },
}

/// Runs `f` on a new thread inside the network namespace at `path`
/// (e.g. `/run/netns/NAME` or `/proc/PID/ns/net`) and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let display = path.display().to_string();
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: display.clone(),
        source,
    })?;
    let thread_path = display.clone();
    std::thread::spawn(move || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: thread_path,
            source,
        })?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Panicked { path: display })?
}

/// Enters the network namespace at `path` in the calling thread for good.
/// For a child process between fork and exec (`Command::pre_exec`), where no
/// other thread exists.
pub fn enter(path: &Path) -> std::io::Result<()> {
    let ns = File::open(path)?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}
