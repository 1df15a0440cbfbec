//! Socket set-up shared by the TCP and UDP frontends.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// A non-blocking socket for `addr`'s family with IP_FREEBIND (bind before the address is
/// local) and, for IPv6, IPV6_V6ONLY (a v6 frontend never catches v4 traffic).
pub(crate) fn socket(addr: SocketAddr, ty: Type) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, ty.nonblocking().cloexec(), None)?;
    if addr.is_ipv4() {
        sock.set_freebind_v4(true)?;
    } else {
        sock.set_only_v6(true)?;
        sock.set_freebind_v6(true)?;
    }
    Ok(sock)
}
