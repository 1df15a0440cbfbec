//! Local addresses over netlink: which addresses the node has (NodePort defaults, "is this
//! VIP already local?") and the /32 and /128 VIP addresses the proxy adds to `lo`.
//!
//! Every address the proxy adds carries its own `IFA_PROTO` value ([`ADDR_PROTO`]), so a
//! daemon that crashed leaves addresses the next one recognises, adopts and removes when
//! they are no longer wanted. Addresses without the tag are never removed.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressProtocol,
};

/// `IFA_PROTO` of addresses svcplane adds ("s").
pub const ADDR_PROTO: u8 = 0x73;
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
    pub ours: bool,
}

/// The VIP addresses on `lo` this daemon is responsible for.
#[derive(Debug)]
pub struct VipAddrs {
    handle: Handle,
    lo: u32,
    owned: BTreeSet<IpAddr>,
    /// Wanted addresses the machine already had when last listed (not ours to remove).
    foreign: BTreeSet<IpAddr>,
    conn: tokio::task::JoinHandle<()>,
}

impl VipAddrs {
    /// Opens netlink and adopts tagged addresses a previous run left on `lo`.
    pub async fn open() -> Result<Self, AddrError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(AddrError::Socket)?;
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
        me.owned = me
            .list()
            .await?
            .into_iter()
            .filter(|a| a.ours && a.ifindex == lo)
            .map(|a| a.ip)
            .collect();
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

    /// Addresses this daemon added (or adopted) and will remove.
    pub fn owned(&self) -> &BTreeSet<IpAddr> {
        &self.owned
    }

    /// Makes `wanted` local: adds those that are not (as /32 or /128 on `lo`) and removes
    /// the ones it added that are no longer wanted. Returns the failures; one bad address
    /// does not stop the others.
    ///
    /// The machine's addresses are listed only when an address not seen before is wanted:
    /// a dump of 10,000 VIPs costs tens of milliseconds, and most snapshots (endpoint
    /// changes) want no new address.
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

    /// Neither added by this daemon, nor found on the machine at the last listing, nor local
    /// anyway.
    fn unaccounted(&self, ip: IpAddr) -> bool {
        !self.owned.contains(&ip) && !self.foreign.contains(&ip) && !always_local(ip)
    }

    /// Removes every address this daemon added.
    pub async fn remove_all(&mut self) -> Vec<AddrError> {
        self.reconcile(&BTreeSet::new()).await
    }

    async fn add(&self, ip: IpAddr) -> Result<(), AddrError> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let mut req = self.handle.address().add(self.lo, ip, prefix);
        let msg = req.message_mut();
        if ip.is_ipv6() {
            msg.header.flags |= AddressHeaderFlags::Nodad;
        }
        msg.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                ADDR_PROTO,
            )));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(source) => Err(AddrError::Netlink {
                what: format!("add {ip}/{prefix} to lo"),
                source,
            }),
        }
    }

    /// Removes `ip`/32 (or /128) from `lo` with one request. (A filtered get per address
    /// would dump every address of `lo` each time: rtnetlink filters dumps in userspace,
    /// which made removing thousands of VIPs quadratic.)
    async fn del(&self, ip: IpAddr) -> Result<(), AddrError> {
        let mut msg = AddressMessage::default();
        msg.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.prefix_len = if ip.is_ipv4() { 32 } else { 128 };
        msg.header.index = self.lo;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => Ok(()),
            Err(source) => Err(AddrError::Netlink {
                what: format!("remove {ip} from lo"),
                source,
            }),
        }
    }
}

impl Drop for VipAddrs {
    fn drop(&mut self) {
        self.conn.abort();
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
    use super::*;

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
