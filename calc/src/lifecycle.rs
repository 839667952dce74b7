//! An endpoint's lifecycle decisions: when a CNI ADD counts as done, and
//! the order of the steps of DEL and GC. The agent's gRPC shell carries
//! the steps out in the order given here.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
