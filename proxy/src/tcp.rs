//! TCP frontends: accept, pick an endpoint (failing over on connect errors), then copy
//! both directions with half-close until both sides are done.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::endpoint::{ActiveGuard, EndpointState, now_ms};
use crate::route::Route;
use crate::shared::Shared;
use crate::table::Listen;

/// How long one connect attempt may take before the next endpoint is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Copy buffer per direction.
const BUF: usize = 16 * 1024;
const BACKLOG: u32 = 4096;

/// Binds a listening socket on `addr` (IP_FREEBIND, so a VIP need not be local yet).
/// TCP_NODELAY is set here once: Linux copies it to every accepted socket.
pub(crate) fn bind(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let sock = crate::sockopt::socket(addr, socket2::Type::STREAM)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(reuseport)?;
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(i32::try_from(BACKLOG).unwrap_or(i32::MAX))?;
    TcpListener::from_std(sock.into())
}

/// Accepts until cancelled; each connection runs in its own task, tracked by `shared`.
pub(crate) async fn serve(
    listener: TcpListener,
    listen: Listen,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let route = shared.table.load().routes.get(&listen).cloned();
                let s = Arc::clone(&shared);
                shared
                    .tracker
                    .spawn(async move { handle(stream, peer, route, &s).await });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(frontend = %listen, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, route: Option<Arc<Route>>, shared: &Shared) {
    let Some(route) = route else {
        reset(&client);
        return;
    };
    let now = now_ms();
    let mut tried = 0;
    for ep in route.attempts(peer.ip(), now) {
        tried += 1;
        match connect(ep.addr).await {
            Ok(upstream) => {
                ep.connect_succeeded();
                route.connected(peer.ip(), ep, now);
                let _active = ActiveGuard::new(ep);
                splice(client, upstream, ep).await;
                return;
            }
            Err(e) => {
                ep.connect_failed(now_ms());
                tracing::debug!(svc = %route.key, endpoint = %ep.addr, error = %e, "connect failed");
            }
        }
    }
    if tried == 0 {
        shared.stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(svc = %route.key, client = %peer, "no usable endpoint; reset");
    } else {
        shared.stats.all_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(svc = %route.key, client = %peer, tried, "every endpoint failed; reset");
    }
    reset(&client);
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_nodelay(true)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Closes with RST instead of FIN, so the client learns at once that nothing serves it.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Copies both directions until each has seen EOF (passing each EOF on as a half-close)
/// or either fails (then both sides are reset).
async fn splice(mut client: TcpStream, mut upstream: TcpStream, ep: &EndpointState) {
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    let ended = AtomicBool::new(false);
    let res = tokio::try_join!(
        pump(cr, uw, &ep.stats.bytes_to_endpoint, &ended),
        pump(ur, cw, &ep.stats.bytes_to_client, &ended),
    );
    if res.is_err() {
        reset(&client);
        reset(&upstream);
    }
}

/// Copies `from` to `to` until EOF. The first direction to end passes its EOF on with a
/// half-close; when the second one ends, both sockets are fully read and closing them (on
/// drop) sends the last FIN, so no shutdown call is needed.
async fn pump<R, W>(mut from: R, mut to: W, bytes: &AtomicU64, ended: &AtomicBool) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // Not zeroed: `read_buf` only exposes what the socket wrote.
    let mut buf = Vec::with_capacity(BUF);
    loop {
        buf.clear();
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            if !ended.swap(true, Ordering::Relaxed) {
                // Half-close; the other direction keeps running. A peer that is already
                // gone makes shutdown fail, which changes nothing here.
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        to.write_all(&buf).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data path relies on accepted sockets inheriting the listener's TCP_NODELAY.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let l = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = l.local_addr().unwrap();
        let (accepted, client) = tokio::join!(l.accept(), TcpStream::connect(addr));
        let (s, _) = accepted.unwrap();
        client.unwrap();
        assert!(s.nodelay().unwrap());
    }

    #[tokio::test]
    async fn pump_copies_everything_then_half_closes() {
        let l = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = l.local_addr().unwrap();
        let (accepted, client) = tokio::join!(l.accept(), TcpStream::connect(addr));
        let (mut server, _) = accepted.unwrap();
        let client = client.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let bytes = AtomicU64::new(0);
        let (r, w) = tokio::io::split(client);
        let _keep = r;
        let ended = AtomicBool::new(false);
        let (pumped, got) = tokio::join!(pump(&data[..], w, &bytes, &ended), async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            got
        });
        pumped.unwrap();
        assert_eq!(got, data, "every byte, then EOF");
        assert_eq!(bytes.load(Ordering::Relaxed), data.len() as u64);
    }
}
