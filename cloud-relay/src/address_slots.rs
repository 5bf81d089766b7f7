//! Places for SSH connections not yet authenticated, per source address: one address
//! holds at most a quarter of the relay's, so a flood from it cannot keep agents out.

use std::net::IpAddr;

use crate::keyed_slots::{KeyedSlot, KeyedSlots};

/// The source an address counts as, here and in the login throttle: an IPv6 address by
/// its /64 (one host or site is given a whole /64 and picks addresses in it freely), an
/// IPv4-mapped one as the IPv4 address.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Whether connections from `ip` are held to a share per address: not loopback peers,
/// which are not told apart (a local TCP proxy in front of the relay, or a test, brings
/// every agent from one address).
pub fn told_apart(ip: IpAddr) -> bool {
    !ip.to_canonical().is_loopback()
}

/// How many connections not yet authenticated one address may hold, counted apart from
/// the relay's whole bound (for addresses [`told_apart`]).
#[derive(Clone)]
pub struct AddressSlots(KeyedSlots<IpAddr>);

/// One place, given back when dropped.
pub type AddressSlot = KeyedSlot<IpAddr>;

impl AddressSlots {
    pub fn new(limit: usize) -> Self {
        Self(KeyedSlots::new(limit))
    }

    /// A place for one more connection from `ip`, or `None` when it holds `limit`.
    pub fn take(&self, ip: IpAddr) -> Option<AddressSlot> {
        if !told_apart(ip) {
            return Some(KeyedSlots::unlimited());
        }
        self.0.take(source(ip))
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.0.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_its_limit_and_others_are_not_touched() {
        let slots = AddressSlots::new(3);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let held: Vec<_> = (0..3).filter_map(|_| slots.take(a)).collect();
        assert_eq!(held.len(), 3);
        assert!(slots.take(a).is_none(), "a fourth from one address");
        assert!(slots.take(b).is_some(), "another address is not held up");
        drop(held);
        assert!(slots.take(a).is_some(), "places come back when dropped");
        assert_eq!(
            slots.addresses(),
            0,
            "no address is remembered once it holds none"
        );
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let slots = AddressSlots::new(2);
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("address");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("address");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        let held = [slots.take(a), slots.take(b)];
        assert!(held.iter().all(Option::is_some));
        assert!(
            slots
                .take("2001:db8:1:2::7".parse().expect("address"))
                .is_none()
        );
        assert!(
            slots.take(other).is_some(),
            "the next /64 is another source"
        );
        assert_eq!(
            source("::ffff:192.0.2.1".parse().expect("address")),
            IpAddr::from([192, 0, 2, 1])
        );
    }

    #[test]
    fn loopback_peers_are_not_counted() {
        let slots = AddressSlots::new(1);
        let v4: IpAddr = [127, 0, 0, 1].into();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("address");
        let held: Vec<_> = (0..5)
            .flat_map(|_| {
                [
                    slots.take(v4),
                    slots.take(mapped),
                    slots.take("::1".parse().expect("address")),
                ]
            })
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert_eq!(slots.addresses(), 0);
    }
}
