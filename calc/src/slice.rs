//! The dataplane's slices and the one order they are flushed in.
//!
//! The flush contract (Calico's Felix keeps the same): what leads *to* a
//! pod or a node is written after what it leads *into*, so no packet is
//! ever routed somewhere not ready for it, and removals run in reverse,
//! so nothing is removed while something still leads to it.

/// One part of a node's dataplane, programmed by one driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slice {
    /// Policy maps (ipcache, per-endpoint policy): written first, so an
    /// endpoint is isolated before its programs are attached and before
    /// any route leads to it (no packet slips through at pod start).
    Policy,
    /// Local endpoints: each pod's anti-spoofing guard entry and the guard
    /// on its host veth; removals also take leftover veths.
    Endpoints,
    /// The uplink programs' maps (config, nodes, pod CIDRs) and their
    /// attachment; removals also take other modes' leftovers.
    Tunnel,
    /// Mode `vxlan`: the device's FDB and neighbour entries, one per node.
    Vxlan,
    /// Weft's kernel routes: to local pods, to other nodes' pod CIDRs.
    Routes,
}

/// Writes go in this order, removals in its reverse.
pub const FLUSH_ORDER: [Slice; 5] = [
    Slice::Policy,
    Slice::Endpoints,
    Slice::Tunnel,
    Slice::Vxlan,
    Slice::Routes,
];

/// A set of slices: what a change touches, what a pass flushes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slices(u8);

impl Slices {
    pub const NONE: Slices = Slices(0);
    pub const ALL: Slices = Slices(0b1_1111);

    pub const fn of(slice: Slice) -> Slices {
        Slices(1 << slice as u8)
    }

    pub const fn with(self, slice: Slice) -> Slices {
        Slices(self.0 | Slices::of(slice).0)
    }

    pub const fn union(self, other: Slices) -> Slices {
        Slices(self.0 | other.0)
    }

    pub const fn contains(self, slice: Slice) -> bool {
        self.0 & Slices::of(slice).0 != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The members in [`FLUSH_ORDER`].
    pub fn in_flush_order(self) -> impl DoubleEndedIterator<Item = Slice> {
        FLUSH_ORDER.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Slice> for Slices {
    fn from_iter<I: IntoIterator<Item = Slice>>(iter: I) -> Slices {
        iter.into_iter().fold(Slices::NONE, Slices::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_come_before_the_routes_that_lead_to_them() {
        let pos = |s| FLUSH_ORDER.iter().position(|x| *x == s).unwrap();
        assert!(pos(Slice::Endpoints) < pos(Slice::Routes));
        assert!(pos(Slice::Tunnel) < pos(Slice::Routes));
        assert!(pos(Slice::Vxlan) < pos(Slice::Routes));
        assert!(pos(Slice::Policy) < pos(Slice::Endpoints));
        assert!(pos(Slice::Policy) < pos(Slice::Routes));
        assert_eq!(
            Slices::ALL.in_flush_order().collect::<Vec<_>>(),
            FLUSH_ORDER
        );
    }

    #[test]
    fn sets_keep_flush_order_whatever_the_insertion_order() {
        let s: Slices = [Slice::Routes, Slice::Endpoints].into_iter().collect();
        assert_eq!(
            s.in_flush_order().collect::<Vec<_>>(),
            [Slice::Endpoints, Slice::Routes]
        );
        assert_eq!(
            s.in_flush_order().rev().collect::<Vec<_>>(),
            [Slice::Routes, Slice::Endpoints]
        );
        assert!(!s.contains(Slice::Tunnel));
        assert!(Slices::NONE.is_empty());
    }
}
