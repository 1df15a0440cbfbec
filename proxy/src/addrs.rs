//! Local addresses over netlink: which addresses the node has (NodePort defaults, "is this
//! VIP already local?"), and the VIPs the proxy makes local.
//!
//! A VIP is made local with a host route of type `local` through `lo` in the `local` table
//! (what `ip route add local 10.96.0.10/32 dev lo table local` does), not with an address.
//! For packets the two are the same: the kernel delivers packets for the VIP to the sockets
//! bound to it (IP_FREEBIND) and lets them send from it. The difference is the cost: adding
//! an address walks every address of the interface and every route using it, so 10,000
//! VIPs as addresses took 3.2 s on this machine (`ip -batch`), as routes 0.1 s.
//!
//! Every route the proxy adds carries its own protocol value ([`ADDR_PROTO`]), so a daemon
//! that crashed leaves routes the next one recognises, adopts and removes when they are no
//! longer wanted. Removals name that protocol: the kernel never matches another's route.
//! Addresses with the same value as `IFA_PROTO` are what versions before this one added to
//! `lo` for VIPs; opening removes them. Addresses without the tag are never removed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressProtocol};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::sys::AsyncSocket as _;

/// Protocol of the VIP routes svcplane adds ("s"); also the `IFA_PROTO` of the VIP
/// addresses earlier versions added.
pub const ADDR_PROTO: u8 = 0x73;
/// The kernel's `local` routing table (`RT_TABLE_LOCAL`).
const TABLE_LOCAL: u8 = 255;
const ESRCH: i32 = 3;
const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no loopback interface `lo` in this network namespace")]
    NoLoopback,
}

/// One address on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddr {
    pub ip: IpAddr,
    pub ifindex: u32,
    /// Tagged with [`ADDR_PROTO`]: a VIP address of an earlier svcplane.
    pub ours: bool,
}

/// The VIPs this daemon keeps local (as routes through `lo`).
#[derive(Debug)]
pub struct VipAddrs {
    handle: Handle,
    lo: u32,
    owned: BTreeSet<IpAddr>,
    /// Wanted VIPs the machine already had as addresses when last listed (not ours).
    foreign: BTreeSet<IpAddr>,
    conn: tokio::task::JoinHandle<()>,
}

impl VipAddrs {
    /// Opens netlink, adopts the VIP routes a previous run left, and removes the VIP
    /// addresses an earlier version left on `lo`.
    pub async fn open() -> Result<Self, AddrError> {
        let (mut conn, handle, _) = rtnetlink::new_connection().map_err(AddrError::Socket)?;
        // Lets route dumps be filtered in the kernel (Linux 4.20+); older kernels refuse the
        // option and send everything, which `vip_route` filters here.
        if let Err(e) = conn
            .socket_mut()
            .socket_ref()
            .set_netlink_get_strict_chk(true)
        {
            tracing::debug!(error = %e, "NETLINK_GET_STRICT_CHK refused: route dumps unfiltered");
        }
        let conn = tokio::spawn(conn);
        let mut links = handle.link().get().match_name("lo").execute();
        let lo = match links.try_next().await {
            Ok(Some(link)) => link.header.index,
            Ok(None) | Err(_) => return Err(AddrError::NoLoopback),
        };
        let mut me = VipAddrs {
            handle,
            lo,
            owned: BTreeSet::new(),
            foreign: BTreeSet::new(),
            conn,
        };
        for old in me.list().await? {
            if old.ours && old.ifindex == lo {
                // Its route comes back with the first reconcile.
                let _ = me.del_address(old.ip).await;
            }
        }
        me.owned = me.our_routes().await?;
        Ok(me)
    }

    /// Every address on every interface.
    pub async fn list(&self) -> Result<Vec<LocalAddr>, AddrError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| AddrError::Netlink {
            what: "list addresses".into(),
            source,
        })?;
        Ok(msgs.iter().filter_map(local_addr).collect())
    }

    /// The VIP routes through `lo` with our protocol, of both families.
    async fn our_routes(&self) -> Result<BTreeSet<IpAddr>, AddrError> {
        let mut ips = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            // Filters the kernel applies itself when the socket has NETLINK_GET_STRICT_CHK
            // (see `open`): only our local routes through lo cross to userspace, not a node's
            // whole routing table. Without it they are ignored and `vip_route` filters.
            let mut dump = RouteMessage::default();
            dump.header.address_family = family;
            dump.header.table = TABLE_LOCAL;
            dump.header.protocol = RouteProtocol::from(ADDR_PROTO);
            dump.header.kind = RouteType::Local;
            dump.attributes.push(RouteAttribute::Oif(self.lo));
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(dump)
                .execute()
                .try_collect()
                .await
                .map_err(|source| AddrError::Netlink {
                    what: "list routes".into(),
                    source,
                })?;
            ips.extend(msgs.iter().filter_map(|m| vip_route(m, self.lo)));
        }
        Ok(ips)
    }

    /// VIPs this daemon added (or adopted) and will remove.
    pub fn owned(&self) -> &BTreeSet<IpAddr> {
        &self.owned
    }

    /// Makes `wanted` local: adds a route for each that is not (neither ours nor an address
    /// of the machine) and removes the ones it added that are no longer wanted. Returns the
    /// failures; one bad VIP does not stop the others.
    ///
    /// The machine's addresses are listed only when a VIP not seen before is wanted: a dump
    /// costs milliseconds, and most snapshots (endpoint changes) want no new VIP.
    pub async fn reconcile(&mut self, wanted: &BTreeSet<IpAddr>) -> Vec<AddrError> {
        let mut errors = Vec::new();
        self.foreign.retain(|ip| wanted.contains(ip));
        if wanted.iter().any(|ip| self.unaccounted(*ip)) {
            let present: BTreeSet<IpAddr> = match self.list().await {
                Ok(list) => list.into_iter().map(|a| a.ip).collect(),
                Err(e) => return vec![e],
            };
            self.foreign = wanted
                .iter()
                .filter(|ip| present.contains(ip) && !self.owned.contains(ip))
                .copied()
                .collect();
            let missing: Vec<IpAddr> = wanted
                .iter()
                .copied()
                .filter(|ip| self.unaccounted(*ip))
                .collect();
            for ip in missing {
                match self.add(ip).await {
                    Ok(()) => {
                        self.owned.insert(ip);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let stale: Vec<IpAddr> = self.owned.difference(wanted).copied().collect();
        for ip in stale {
            match self.del(ip).await {
                Ok(()) => {
                    self.owned.remove(&ip);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// Puts back what someone else removed: the routes of [`owned`](Self::owned) VIPs that
    /// are gone, and routes for wanted VIPs that were the machine's own addresses when last
    /// listed and no longer are. Returns the VIPs it added and the failures; one bad VIP does
    /// not stop the others. Costs a route dump, plus an address dump when such foreign VIPs
    /// exist.
    pub async fn repair(&mut self) -> (Vec<IpAddr>, Vec<AddrError>) {
        let present = match self.our_routes().await {
            Ok(p) => p,
            Err(e) => return (Vec::new(), vec![e]),
        };
        let mut missing: Vec<IpAddr> = self.owned.difference(&present).copied().collect();
        if !self.foreign.is_empty() {
            let addrs: BTreeSet<IpAddr> = match self.list().await {
                Ok(list) => list.into_iter().map(|a| a.ip).collect(),
                Err(e) => return (Vec::new(), vec![e]),
            };
            let gone: Vec<IpAddr> = self
                .foreign
                .iter()
                .filter(|ip| !addrs.contains(ip))
                .copied()
                .collect();
            for ip in gone {
                self.foreign.remove(&ip);
                missing.push(ip);
            }
        }
        let (mut added, mut errors) = (Vec::new(), Vec::new());
        for ip in missing {
            match self.add(ip).await {
                Ok(()) => {
                    self.owned.insert(ip);
                    added.push(ip);
                }
                Err(e) => errors.push(e),
            }
        }
        (added, errors)
    }

    /// Neither added by this daemon, nor found on the machine at the last listing, nor local
    /// anyway.
    fn unaccounted(&self, ip: IpAddr) -> bool {
        !self.owned.contains(&ip) && !self.foreign.contains(&ip) && !always_local(ip)
    }

    /// Removes every VIP route this daemon added.
    pub async fn remove_all(&mut self) -> Vec<AddrError> {
        self.reconcile(&BTreeSet::new()).await
    }

    fn route(&self, ip: IpAddr) -> RouteMessage {
        Self::route_message(self.lo, ip)
    }

    /// `local <ip>/32 (or /128) dev <lo> table local proto ADDR_PROTO scope host`.
    fn route_message(lo: u32, ip: IpAddr) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.destination_prefix_length = full_prefix(ip);
        m.header.table = TABLE_LOCAL;
        m.header.protocol = RouteProtocol::from(ADDR_PROTO);
        m.header.scope = RouteScope::Host;
        m.header.kind = RouteType::Local;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        m.attributes.push(RouteAttribute::Oif(lo));
        m
    }

    async fn add(&self, ip: IpAddr) -> Result<(), AddrError> {
        let res = self.handle.route().add(self.route(ip)).execute().await;
        tolerating(res, EEXIST, || {
            format!("add local route {ip}/{} via lo", full_prefix(ip))
        })
    }

    async fn del(&self, ip: IpAddr) -> Result<(), AddrError> {
        let res = self.handle.route().del(self.route(ip)).execute().await;
        tolerating(res, ESRCH, || {
            format!("remove local route {ip}/{} via lo", full_prefix(ip))
        })
    }

    /// Removes the address `ip`/32 (or /128) from `lo` with one request (an earlier
    /// version's VIP).
    async fn del_address(&self, ip: IpAddr) -> Result<(), AddrError> {
        let mut msg = AddressMessage::default();
        msg.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.prefix_len = full_prefix(ip);
        msg.header.index = self.lo;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        let res = self.handle.address().del(msg).execute().await;
        tolerating(res, EADDRNOTAVAIL, || format!("remove {ip} from lo"))
    }
}

impl Drop for VipAddrs {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn full_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// The VIP of a route svcplane adds: `local`, in the local table, through `lo`, a single
/// address, our protocol.
fn vip_route(m: &RouteMessage, lo: u32) -> Option<IpAddr> {
    let h = &m.header;
    let mut table = u32::from(h.table);
    let (mut dst, mut oif) = (None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::from(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::from(*ip)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let ip = dst?;
    let ours = u8::from(h.protocol) == ADDR_PROTO
        && h.kind == RouteType::Local
        && table == u32::from(TABLE_LOCAL)
        && oif == Some(lo)
        && h.destination_prefix_length == full_prefix(ip);
    ours.then_some(ip)
}

/// `res`, with the error `harmless` (already there, already gone) counted as success and
/// any other named by `what`.
fn tolerating(
    res: Result<(), rtnetlink::Error>,
    harmless: i32,
    what: impl FnOnce() -> String,
) -> Result<(), AddrError> {
    match res {
        Err(e) if errno(&e) != Some(harmless) => Err(AddrError::Netlink {
            what: what(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn local_addr(m: &AddressMessage) -> Option<LocalAddr> {
    let mut ip = None;
    let mut ours = false;
    for a in &m.attributes {
        match a {
            // IFA_LOCAL is the interface's own address on point-to-point links.
            AddressAttribute::Local(x) => ip = Some(*x),
            AddressAttribute::Address(x) if ip.is_none() => ip = Some(*x),
            AddressAttribute::Protocol(AddressProtocol::Other(p)) => ours = *p == ADDR_PROTO,
            _ => {}
        }
    }
    Some(LocalAddr {
        ip: ip?,
        ifindex: m.header.index,
        ours,
    })
}

/// Addresses the kernel treats as local without being configured: 127.0.0.0/8 and ::1.
pub fn always_local(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// The default NodePort addresses: every address that is not loopback, not link-local and
/// not one svcplane added, plus 127.0.0.1.
pub fn default_node_ips(addrs: &[LocalAddr]) -> Vec<IpAddr> {
    let mut ips: BTreeSet<IpAddr> = addrs
        .iter()
        .filter(|a| !a.ours && !a.ip.is_loopback() && !is_link_local(a.ip))
        .map(|a| a.ip)
        .collect();
    ips.insert(IpAddr::from([127, 0, 0, 1]));
    ips.into_iter().collect()
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::RouteHeader;

    use super::*;

    #[test]
    fn only_our_local_host_routes_through_lo_are_vips() {
        let lo = 1;
        let v = VipAddrs::route_message(lo, "10.96.0.10".parse().unwrap());
        assert_eq!(vip_route(&v, lo), Some("10.96.0.10".parse().unwrap()));
        let v6 = VipAddrs::route_message(lo, "fd00:96::10".parse().unwrap());
        assert_eq!(vip_route(&v6, lo), Some("fd00:96::10".parse().unwrap()));
        // Through another interface; another protocol (the kernel's own local routes);
        // another table; not `local`; not a single address: not ours.
        assert_eq!(vip_route(&v, 2), None);
        let mut m = v.clone();
        m.header.protocol = RouteProtocol::Kernel;
        assert_eq!(vip_route(&m, lo), None);
        let mut m = v.clone();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        assert_eq!(vip_route(&m, lo), None);
        let mut m = v.clone();
        m.header.kind = RouteType::Unicast;
        assert_eq!(vip_route(&m, lo), None);
        let mut m = v.clone();
        m.header.destination_prefix_length = 24;
        assert_eq!(vip_route(&m, lo), None);
        // A table id above 255 travels as an attribute.
        let mut m = v.clone();
        m.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(vip_route(&m, lo), None);
    }

    #[test]
    fn node_ips_skip_loopback_link_local_and_ours() {
        let a = |ip: &str, ours| LocalAddr {
            ip: ip.parse().unwrap(),
            ifindex: 2,
            ours,
        };
        let got = default_node_ips(&[
            a("127.0.0.1", false),
            a("::1", false),
            a("10.1.2.3", false),
            a("fe80::1", false),
            a("169.254.1.1", false),
            a("2001:db8::5", false),
            a("10.96.0.1", true),
        ]);
        let want: Vec<IpAddr> = ["10.1.2.3", "127.0.0.1", "2001:db8::5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }
}
