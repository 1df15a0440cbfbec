//! Rust mirrors of `bpf/svcplane.h`, with their `aya::Pod` impls and size checks.

#![allow(
    unsafe_code,
    reason = "aya::Pod is an unsafe trait; this module only implements it for plain structs"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub(crate) const FAMILY_V4: u8 = 4;
pub(crate) const FAMILY_V6: u8 = 6;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
/// `SVC_MAX_FRONTENDS`: frontend ids index the round-robin array.
pub(crate) const MAX_FRONTENDS: u32 = 1 << 18;

/// `struct svc_frontend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct SvcFrontend {
    pub(crate) addr: [u32; 4],
    pub(crate) port: u16,
    pub(crate) proto: u8,
    pub(crate) family: u8,
}

/// `struct svc_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct SvcKey {
    pub(crate) fe: SvcFrontend,
    pub(crate) slot: u16,
    pub(crate) pad: u16,
}

/// `struct svc_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcValue {
    pub(crate) addr: [u32; 4],
    pub(crate) port: u16,
    pub(crate) count: u16,
    pub(crate) fe_id: u32,
    pub(crate) affinity_timeout: u32,
    pub(crate) flags: u32,
}

/// `struct svc_backend`: an endpoint remembered by sticky, reverse and affinity entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcBackend {
    pub(crate) addr: [u32; 4],
    pub(crate) port: u16,
    pub(crate) slot: u16,
}

/// `struct svc_conns` (`v1_conns`, keyed by [`SvcKey`]): new connections to the endpoint
/// of a frontend's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcConns {
    pub(crate) connections: u64,
    pub(crate) backend: SvcBackend,
    pub(crate) pad: u32,
}

/// `struct svc_sticky_key` (`v1_udp_sticky`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcStickyKey {
    pub(crate) cookie: u64,
    pub(crate) fe: SvcFrontend,
    pub(crate) pad: u32,
}

/// `struct svc_rev_key` (`v1_rev`, value [`SvcFrontend`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcRevKey {
    pub(crate) cookie: u64,
    pub(crate) addr: [u32; 4],
    pub(crate) port: u16,
    pub(crate) family: u8,
    pub(crate) pad1: u8,
    pub(crate) pad2: u32,
}

/// `struct svc_affinity_key` (`v1_affinity`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcAffinityKey {
    pub(crate) netns_cookie: u64,
    pub(crate) fe_id: u32,
    pub(crate) pad: u32,
}

/// `struct svc_affinity_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcAffinityValue {
    pub(crate) backend: SvcBackend,
    pub(crate) pad: u32,
    pub(crate) last_used_ns: u64,
}

/// `struct svc_peer` (`v1_tcp_peer` socket storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcPeer {
    pub(crate) fe: SvcFrontend,
    pub(crate) backend: SvcBackend,
}

/// `struct svc_stale_key` (`v1_stale`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SvcStaleKey {
    pub(crate) addr: [u32; 4],
    pub(crate) port: u16,
    pub(crate) family: u8,
    pub(crate) pad: u8,
}

// SAFETY: all of these are #[repr(C)] structs of integers with no padding bytes (the sizes
// asserted below equal the sum of their fields), so every bit pattern is valid and none is uninitialized.
unsafe impl aya::Pod for SvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcValue {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcFrontend {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcBackend {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcConns {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcStickyKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcRevKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcAffinityKey {}
// SAFETY: as above (the explicit `pad` field fills the hole before the u64).
unsafe impl aya::Pod for SvcAffinityValue {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcPeer {}
// SAFETY: as above.
unsafe impl aya::Pod for SvcStaleKey {}

const _: () = assert!(std::mem::size_of::<SvcFrontend>() == 20);
const _: () = assert!(std::mem::size_of::<SvcKey>() == 24);
const _: () = assert!(std::mem::size_of::<SvcValue>() == 32);
const _: () = assert!(std::mem::size_of::<SvcBackend>() == 20);
const _: () = assert!(std::mem::size_of::<SvcConns>() == 32);
const _: () = assert!(std::mem::size_of::<SvcStickyKey>() == 32);
const _: () = assert!(std::mem::size_of::<SvcRevKey>() == 32);
const _: () = assert!(std::mem::size_of::<SvcAffinityKey>() == 16);
const _: () = assert!(std::mem::size_of::<SvcAffinityValue>() == 32);
const _: () = assert!(std::mem::size_of::<SvcPeer>() == 40);
const _: () = assert!(std::mem::size_of::<SvcStaleKey>() == 20);

/// Address in the header's layout: network order, IPv4 in `addr[0]`.
pub(crate) fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// The inverse of [`addr_words`]; `None` for an unknown family.
pub(crate) fn words_addr(addr: [u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))),
        FAMILY_V6 => {
            let mut o = [0u8; 16];
            for (i, w) in addr.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// A port in network order, as stored in the maps.
pub(crate) fn net_port(port: u16) -> u16 {
    port.to_be()
}

pub(crate) fn host_port(port: u16) -> u16 {
    u16::from_be(port)
}

pub(crate) fn endpoint_value(addr: SocketAddr) -> SvcValue {
    let (words, _) = addr_words(addr.ip());
    SvcValue {
        addr: words,
        port: net_port(addr.port()),
        ..SvcValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_network_order() {
        for s in ["10.96.0.10", "fd00::1:2", "::ffff:1.2.3.4"] {
            let ip: IpAddr = s.parse().unwrap();
            let (w, fam) = addr_words(ip);
            assert_eq!(words_addr(w, fam), Some(ip));
        }
        let (w, _) = addr_words("10.0.0.1".parse().unwrap());
        assert_eq!(w[0].to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(net_port(80).to_ne_bytes(), [0, 80]);
    }
}
