//! An endpoint's lifecycle decisions: when a CNI ADD counts as done, and
//! the order of the steps of DEL and GC. The agent's gRPC shell carries
//! the steps out in the order given here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use weft_model::Claim;

use crate::problem::Problem;

/// Whether the pass after registering the endpoint whose host veth is
/// `host_ifname` programmed it: any problem about it fails the ADD (the
/// plugin then undoes its part, and the agent forgets the endpoint).
pub fn registration(problems: &[Problem], host_ifname: &str) -> Result<(), Problem> {
    match problems.iter().find(|p| p.concerns_endpoint(host_ifname)) {
        Some(problem) => Err(problem.clone()),
        None => Ok(()),
    }
}

/// One step of taking endpoints away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Drop the endpoint records (they stop being desired).
    ForgetEndpoints,
    /// Flush the dataplane: routes and guard entries of forgotten
    /// endpoints go, and veths no claim holds.
    Flush,
    /// Release the IPAM claims.
    ReleaseAddresses,
}

/// CNI DEL: the pod's routes and guard entry go before its address, so
/// the address is never handed to another pod while anything still leads
/// to the old one.
pub const RELEASE: [Step; 3] = [Step::ForgetEndpoints, Step::Flush, Step::ReleaseAddresses];

/// CNI GC: addresses are released before the flush, so the flush sees the
/// collected attachments' veths as unclaimed and removes them too.
pub const GARBAGE_COLLECT: [Step; 3] = [Step::ForgetEndpoints, Step::ReleaseAddresses, Step::Flush];

/// An address IPAM holds, as the lifecycle sees it.
#[derive(Clone, Copy, Debug)]
pub struct HeldAddress<'a> {
    pub address: Ipv4Addr,
    pub claim: &'a Claim,
    /// The host veth of the claim's attachment (`None` for an orphaned claim).
    pub host_ifname: Option<&'a str>,
    /// When the claim was made or last asked for again.
    pub since: SystemTime,
}

/// How long an address may stay claimed with neither an endpoint nor a
/// host veth before it counts as leaked: far longer than any ADD takes, so
/// an ADD in flight is never cut short.
pub const LEAK_GRACE: Duration = Duration::from_secs(15 * 60);

/// Whether `held` is leaked: an ADD that claimed it and then died (the
/// plugin killed by the runtime's timeout, the agent restarted between
/// claiming and answering) and no DEL or CNI GC that released it (kubelet
/// with containerd 1.6 never calls GC). Leaked means no endpoint has the
/// address, no host veth of its attachment exists, and it has been so for
/// `grace` by `now`. A claim from the future (the clock stepped back) is
/// kept.
pub fn is_leaked(
    held: &HeldAddress<'_>,
    registered: &BTreeSet<Ipv4Addr>,
    links: &BTreeMap<String, u32>,
    now: SystemTime,
    grace: Duration,
) -> bool {
    if registered.contains(&held.address) {
        return false;
    }
    if held
        .host_ifname
        .is_some_and(|name| links.contains_key(name))
    {
        return false;
    }
    now.duration_since(held.since).is_ok_and(|age| age >= grace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::Attachment;

    fn missing(host: &str) -> Problem {
        Problem::EndpointLinkMissing {
            namespace: "default".into(),
            pod: "web".into(),
            address: "10.244.1.2".parse().unwrap(),
            host_ifname: host.into(),
        }
    }

    #[test]
    fn an_add_fails_only_on_a_problem_about_its_own_endpoint() {
        let other = Problem::PodCidrOverlap {
            node: "node3".into(),
            cidr: "10.244.1.0/25".parse().unwrap(),
            clash: "10.244.1.0/24".parse().unwrap(),
        };
        assert_eq!(
            registration(std::slice::from_ref(&other), "weftaaa"),
            Ok(())
        );
        assert_eq!(
            registration(&[other, missing("weftaaa")], "weftaaa"),
            Err(missing("weftaaa"))
        );
        // Another pod's missing veth is that pod's problem.
        assert_eq!(registration(&[missing("weftbbb")], "weftaaa"), Ok(()));
    }

    #[test]
    fn del_flushes_before_the_address_is_free_and_gc_after() {
        let pos = |steps: &[Step], s| steps.iter().position(|x| *x == s).unwrap();
        assert!(pos(&RELEASE, Step::Flush) < pos(&RELEASE, Step::ReleaseAddresses));
        assert!(pos(&RELEASE, Step::ForgetEndpoints) < pos(&RELEASE, Step::Flush));
        assert!(pos(&GARBAGE_COLLECT, Step::ReleaseAddresses) < pos(&GARBAGE_COLLECT, Step::Flush));
    }

    #[test]
    fn a_claim_is_leaked_only_without_endpoint_or_veth_after_the_grace() {
        // A fake clock: times at chosen offsets from one origin.
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let owned = Claim::Owned(Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        });
        let held = HeldAddress {
            address: "10.244.1.7".parse().unwrap(),
            claim: &owned,
            host_ifname: Some("weftaaa"),
            since: t0,
        };
        let nothing = (BTreeSet::new(), BTreeMap::new());
        let leaked = |held: &HeldAddress<'_>,
                      (reg, links): &(BTreeSet<Ipv4Addr>, BTreeMap<String, u32>),
                      now| { is_leaked(held, reg, links, now, LEAK_GRACE) };
        // An ADD in flight (claimed, nothing wired yet) is never cut short.
        assert!(!leaked(&held, &nothing, at(60)));
        assert!(!leaked(&held, &nothing, at(LEAK_GRACE.as_secs() - 1)));
        assert!(leaked(&held, &nothing, at(LEAK_GRACE.as_secs())));
        // Its veth exists: the pod may still be wired; DEL or GC decides.
        let with_veth = (BTreeSet::new(), [("weftaaa".to_string(), 7)].into());
        assert!(!leaked(&held, &with_veth, at(86_400)));
        // An endpoint holds the address.
        let registered = ([held.address].into(), BTreeMap::new());
        assert!(!leaked(&held, &registered, at(86_400)));
        // A retried ADD renews the claim: the grace starts again.
        let renewed = HeldAddress {
            since: at(1000),
            ..held
        };
        assert!(!leaked(
            &renewed,
            &nothing,
            at(1000 + LEAK_GRACE.as_secs() - 1)
        ));
        // The clock stepped back: keep it.
        assert!(!leaked(&held, &nothing, t0 - Duration::from_secs(5)));
        // An orphaned claim (no owner recorded) goes after the grace too.
        let orphan = HeldAddress {
            claim: &Claim::Orphaned,
            host_ifname: None,
            ..held
        };
        assert!(leaked(&orphan, &nothing, at(LEAK_GRACE.as_secs())));
    }
}
