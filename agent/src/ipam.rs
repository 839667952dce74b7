//! Address management for the node's pod CIDR.
//!
//! Every address in use is a claim file in the IPAM directory, named by the
//! address and created with `O_EXCL`, written and fsynced (with its
//! directory) before the address leaves the agent. A kill -9 at any moment
//! therefore leaves at worst a claim that nobody was told about (it is found
//! again by its owner's retry, or released by CNI GC), never an address handed
//! out twice. The allocation order is a pure function ([`next_candidates`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ipnetwork::Ipv4Network;

use weft_dataplane::names::host_ifname;
use weft_datastore::fsutil;

pub use weft_calc::lifecycle::HeldAddress;
pub use weft_model::{Attachment, Claim};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    #[error("pod CIDR {0} has no free address")]
    Exhausted(Ipv4Network),
    #[error("IPAM directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The file-backed allocator of one node.
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Network,
    state: Mutex<State>,
}

struct State {
    claims: BTreeMap<Ipv4Addr, Claim>,
    /// The host veth name of each owned claim, derived once (a hash) when
    /// the claim is made, not on every pass.
    links: BTreeMap<Ipv4Addr, String>,
    /// When each claim was made or last asked for (a retried ADD renews
    /// it); for claims a previous run left, their file's time.
    since: BTreeMap<Ipv4Addr, SystemTime>,
    /// The address handed out last: allocation continues after it, so a
    /// released address is not reused at once (a stale packet or a
    /// half-deleted pod does not meet its successor).
    last: Option<Ipv4Addr>,
}

const LAST_FILE: &str = "last-reserved";

impl State {
    fn insert(&mut self, ip: Ipv4Addr, claim: Claim, since: SystemTime) {
        self.since.insert(ip, since);
        match &claim {
            Claim::Owned(a) => self
                .links
                .insert(ip, host_ifname(&a.container_id, &a.ifname)),
            Claim::Orphaned => self.links.remove(&ip),
        };
        self.claims.insert(ip, claim);
    }

    fn remove(&mut self, ip: Ipv4Addr) {
        self.links.remove(&ip);
        self.since.remove(&ip);
        self.claims.remove(&ip);
    }
}

impl Ipam {
    /// Opens (creating) the directory and reads every claim a previous run left.
    pub fn open(dir: &Path, cidr: Ipv4Network) -> Result<Ipam, IpamError> {
        let io = |source| IpamError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let mut state = State {
            claims: BTreeMap::new(),
            links: BTreeMap::new(),
            since: BTreeMap::new(),
            last: None,
        };
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let claim = fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Attachment>(&b).ok())
                .map_or(Claim::Orphaned, Claim::Owned);
            let since = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            state.insert(ip, claim, since);
        }
        state.last = fs::read_to_string(dir.join(LAST_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Ok(Ipam {
            dir: dir.to_path_buf(),
            cidr,
            state: Mutex::new(state),
        })
    }

    /// The address held by `who`, reserving a new one if it holds none.
    /// Idempotent: a retried ADD gets the address it already has.
    pub fn allocate(&self, who: &Attachment) -> Result<Ipv4Addr, IpamError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = find(&state.claims, who) {
            // A retried ADD: the claim is in use again.
            state.since.insert(ip, SystemTime::now());
            return Ok(ip);
        }
        for ip in next_candidates(self.cidr, state.last) {
            if state.claims.contains_key(&ip) {
                continue;
            }
            match self.write_claim(ip, who) {
                Ok(()) => {}
                // Claimed on disk but not in memory: someone else's; skip it.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    state.insert(ip, Claim::Orphaned, SystemTime::now());
                    continue;
                }
                Err(source) => {
                    return Err(IpamError::Io {
                        path: self.claim_path(ip),
                        source,
                    });
                }
            }
            state.insert(ip, Claim::Owned(who.clone()), SystemTime::now());
            state.last = Some(ip);
            // Only an allocation-order hint: losing it costs nothing.
            let _ = fsutil::write_atomic(&self.dir.join(LAST_FILE), ip.to_string().as_bytes());
            return Ok(ip);
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    /// Releases what `who` holds; `None` if it held nothing (DEL is idempotent).
    pub fn release(&self, who: &Attachment) -> Result<Option<Ipv4Addr>, IpamError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ip) = find(&state.claims, who) else {
            return Ok(None);
        };
        self.remove_claim(ip)?;
        state.remove(ip);
        Ok(Some(ip))
    }

    /// Releases every claim whose owner is not in `valid` (orphaned ones
    /// included) and returns what was released.
    pub fn retain(
        &self,
        mut valid: impl FnMut(&Attachment) -> bool,
    ) -> Result<Vec<(Ipv4Addr, Claim)>, IpamError> {
        self.release_where(|held| match held.claim {
            Claim::Owned(a) => !valid(a),
            Claim::Orphaned => true,
        })
    }

    /// Releases every claim `doomed` picks, deciding under the allocator's
    /// lock (no ADD can renew a claim between the decision and the
    /// release), and returns what was released.
    pub fn release_where(
        &self,
        mut doomed: impl FnMut(&HeldAddress<'_>) -> bool,
    ) -> Result<Vec<(Ipv4Addr, Claim)>, IpamError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<(Ipv4Addr, Claim)> = state
            .claims
            .iter()
            .filter(|(ip, claim)| {
                doomed(&HeldAddress {
                    address: **ip,
                    claim,
                    host_ifname: state.links.get(*ip).map(String::as_str),
                    since: state
                        .since
                        .get(*ip)
                        .copied()
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .map(|(ip, c)| (*ip, c.clone()))
            .collect();
        for (ip, _) in &doomed {
            self.remove_claim(*ip)?;
            state.remove(*ip);
        }
        Ok(doomed)
    }

    /// Every claim, for the reconciler and operators.
    pub fn claims(&self) -> BTreeMap<Ipv4Addr, Claim> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .claims
            .clone()
    }

    /// The host veths of the attachments holding an address (in flight or
    /// registered): what the pass must not remove as leftovers.
    pub fn claimed_links(&self) -> BTreeSet<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.links.values().cloned().collect()
    }

    fn claim_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn write_claim(&self, ip: Ipv4Addr, who: &Attachment) -> std::io::Result<()> {
        let path = self.claim_path(ip);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let body = serde_json::to_vec(who).expect("attachment serializes");
        file.write_all(&body)?;
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()
    }

    fn remove_claim(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.claim_path(ip);
        let io = |source| IpamError::Io {
            path: path.clone(),
            source,
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

fn find(claims: &BTreeMap<Ipv4Addr, Claim>, who: &Attachment) -> Option<Ipv4Addr> {
    claims
        .iter()
        .find(|(_, c)| matches!(c, Claim::Owned(a) if a == who))
        .map(|(ip, _)| *ip)
}

/// The order in which addresses of `cidr` are tried: starting after `last`
/// and wrapping around, skipping the network and broadcast addresses (a pod
/// with either would confuse hosts that treat them as special).
pub fn next_candidates(
    cidr: Ipv4Network,
    last: Option<Ipv4Addr>,
) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(cidr.network());
    let size: u64 = 1u64 << (32 - cidr.prefix());
    let usable = move |n: u64| !(size > 2 && (n == 0 || n == size - 1));
    let start = last
        .filter(|ip| cidr.contains(*ip))
        .map(|ip| (u64::from(u32::from(ip) - first) + 1) % size)
        .unwrap_or(0);
    (0..size)
        .map(move |i| (start + i) % size)
        .filter(move |n| usable(*n))
        .map(move |n| Ipv4Addr::from(first + n as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn candidates_skip_network_and_broadcast_and_wrap_after_last() {
        let cidr: Ipv4Network = "10.244.1.0/29".parse().unwrap();
        let all: Vec<_> = next_candidates(cidr, None)
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(
            all,
            [
                "10.244.1.1",
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4",
                "10.244.1.5",
                "10.244.1.6"
            ]
        );
        let after: Vec<_> = next_candidates(cidr, Some("10.244.1.5".parse().unwrap()))
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(
            after,
            [
                "10.244.1.6",
                "10.244.1.1",
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4",
                "10.244.1.5"
            ]
        );
    }

    #[test]
    fn last_outside_the_cidr_is_ignored() {
        let cidr: Ipv4Network = "10.244.1.0/30".parse().unwrap();
        let all: Vec<_> = next_candidates(cidr, Some("10.9.9.9".parse().unwrap())).collect();
        assert_eq!(
            all,
            [
                "10.244.1.1".parse::<Ipv4Addr>().unwrap(),
                "10.244.1.2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn allocation_is_idempotent_distinct_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cidr = "10.244.1.0/24".parse().unwrap();
        let ipam = Ipam::open(dir.path(), cidr).unwrap();
        let a = ipam.allocate(&att("a")).unwrap();
        let b = ipam.allocate(&att("b")).unwrap();
        assert_ne!(a, b);
        assert_eq!(ipam.allocate(&att("a")).unwrap(), a);
        drop(ipam);
        let ipam = Ipam::open(dir.path(), cidr).unwrap();
        assert_eq!(ipam.allocate(&att("a")).unwrap(), a);
        let c = ipam.allocate(&att("c")).unwrap();
        assert!(c != a && c != b);
    }

    #[test]
    fn released_address_is_not_reused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "10.244.1.0/24".parse().unwrap()).unwrap();
        let a = ipam.allocate(&att("a")).unwrap();
        assert_eq!(ipam.release(&att("a")).unwrap(), Some(a));
        assert_eq!(ipam.release(&att("a")).unwrap(), None);
        assert_ne!(ipam.allocate(&att("b")).unwrap(), a);
    }

    #[test]
    fn exhaustion_is_an_error_not_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "10.244.1.0/30".parse().unwrap()).unwrap();
        ipam.allocate(&att("a")).unwrap();
        ipam.allocate(&att("b")).unwrap();
        assert!(matches!(
            ipam.allocate(&att("c")),
            Err(IpamError::Exhausted(_))
        ));
    }

    #[test]
    fn leaked_claims_age_from_their_file_and_a_retried_add_renews_them() {
        use weft_calc::lifecycle::{LEAK_GRACE, is_leaked};
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "10.244.1.0/24".parse().unwrap()).unwrap();
        let old = ipam.allocate(&att("old")).unwrap();
        let retried = ipam.allocate(&att("retried")).unwrap();
        ipam.allocate(&att("fresh")).unwrap();
        // A previous run's claims, written an hour ago.
        let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        for ip in [old, retried] {
            File::options()
                .write(true)
                .open(dir.path().join(ip.to_string()))
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        drop(ipam);
        let ipam = Ipam::open(dir.path(), "10.244.1.0/24".parse().unwrap()).unwrap();
        // The retried ADD asks again before the sweep.
        assert_eq!(ipam.allocate(&att("retried")).unwrap(), retried);
        let now = SystemTime::now();
        let released = ipam
            .release_where(|held| {
                is_leaked(held, &BTreeSet::new(), &BTreeMap::new(), now, LEAK_GRACE)
            })
            .unwrap();
        assert_eq!(released, vec![(old, Claim::Owned(att("old")))]);
        assert!(!dir.path().join(old.to_string()).exists());
        assert_eq!(ipam.claims().len(), 2);
    }

    #[test]
    fn orphaned_claim_from_a_crash_is_never_handed_out_and_gc_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        // A crash between create and write leaves an empty claim file.
        File::create(dir.path().join("10.244.1.1")).unwrap();
        let ipam = Ipam::open(dir.path(), "10.244.1.0/24".parse().unwrap()).unwrap();
        assert_ne!(
            ipam.allocate(&att("a")).unwrap(),
            "10.244.1.1".parse::<Ipv4Addr>().unwrap()
        );
        let freed = ipam.retain(|a| a.container_id == "a").unwrap();
        assert_eq!(
            freed,
            vec![("10.244.1.1".parse().unwrap(), Claim::Orphaned)]
        );
        assert!(!dir.path().join("10.244.1.1").exists());
    }

    #[test]
    fn concurrent_allocations_get_distinct_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam =
            std::sync::Arc::new(Ipam::open(dir.path(), "10.244.1.0/24".parse().unwrap()).unwrap());
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let ipam = ipam.clone();
                std::thread::spawn(move || ipam.allocate(&att(&format!("c{i}"))).unwrap())
            })
            .collect();
        let mut ips: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 50);
    }
}
