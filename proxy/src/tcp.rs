//! TCP frontends: accept, pick an endpoint (failing over on connect errors), then copy
//! both directions with half-close until both sides are done.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
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
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_once(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// A non-blocking connect, judged by the readiness epoll reports when it completes: a
/// refused or unreachable connect reports the socket closed, so only a failure costs the
/// `getsockopt(SO_ERROR)` that `TcpSocket::connect` makes for every connection.
async fn connect_once(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    sock.set_tcp_nodelay(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(sock.into())?;
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_write_closed() || ready.is_error() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionReset, "closed while connecting")
        }));
    }
    Ok(stream)
}

/// Closes with RST instead of FIN, so the client learns at once that nothing serves it.
fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

/// Copies both directions until each has seen EOF (passing each EOF on as a half-close)
/// or either fails (then both sides are reset).
async fn splice(client: TcpStream, upstream: TcpStream, ep: &EndpointState) {
    let ended = AtomicBool::new(false);
    let res = tokio::try_join!(
        pump(&client, &upstream, &ep.stats.bytes_to_endpoint, &ended),
        pump(&upstream, &client, &ep.stats.bytes_to_client, &ended),
    );
    if res.is_err() {
        reset(&client);
        reset(&upstream);
    }
}

/// Copies `from` to `to` until EOF. The first direction to end passes its EOF on with a
/// half-close; when the second one ends, both sockets are fully read and closing them (on
/// drop) sends the last FIN, so no shutdown call is needed.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &AtomicU64,
    ended: &AtomicBool,
) -> io::Result<()> {
    let mut buf = Buf::take();
    let buf = &mut buf.0[..];
    loop {
        let n = read_some(from, buf).await?;
        if n == 0 {
            if !ended.swap(true, Ordering::Relaxed) {
                // Half-close; the other direction keeps running. A peer that is already
                // gone makes shutdown fail, which changes nothing here.
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            }
            return Ok(());
        }
        write_all(to, &buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Copy buffers kept for reuse per worker thread: a connection takes two and gives them
/// back when it ends, so a new connection costs neither an allocation nor zeroing 32 KiB.
/// Only bytes just read are ever written out of a buffer, so what an earlier connection
/// left in it is never seen.
struct Buf(Box<[u8]>);

/// Buffers a thread keeps at most (4 MiB): more than enough for this many connections
/// opening and closing at once; a longer-lived surge allocates the rest.
const POOLED: usize = 256;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buf {
    fn take() -> Self {
        let pooled = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten();
        Buf(pooled.unwrap_or_else(|| vec![0; BUF].into_boxed_slice()))
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        // During thread exit the pool may be gone already; the buffer is freed then.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOLED {
                p.push(buf);
            }
        });
    }
}

/// Reads what the socket holds into `buf`; 0 at EOF.
///
/// A read that returns less than the buffer's room has emptied the receive queue, so the
/// socket's readiness is cleared right there instead of by a second read that would only
/// return EAGAIN (HAProxy does the same): one `recv` per message instead of two. Tokio
/// clears readiness only if no new edge arrived since it was observed, so data that lands
/// between the read and the clear still wakes the next `readable()`.
async fn read_some(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        s.readable().await?;
        let mut drained = None;
        let res = s.try_io(Interest::READABLE, || {
            let n = std::io::Read::read(&mut &*socket2::SockRef::from(s), buf)?;
            if n > 0 && n < buf.len() {
                drained = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match res {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(n) = drained {
                    return Ok(n);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `data`, waiting for room when the socket's send buffer is full.
async fn write_all(s: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match s.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

    async fn pair() -> (TcpStream, TcpStream) {
        let l = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = l.local_addr().unwrap();
        let (accepted, client) = tokio::join!(l.accept(), TcpStream::connect(addr));
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn pump_copies_everything_then_half_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut writer, from) = pair().await;
        let (to, mut reader) = pair().await;
        // Writes of sizes around the buffer's: short reads, full reads, writes that wait.
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let bytes = AtomicU64::new(0);
        let ended = AtomicBool::new(false);
        let send = async {
            let sizes = [1, BUF - 1, BUF, BUF + 7, 3 * BUF];
            let mut rest = &data[..];
            for size in sizes.iter().cycle() {
                let (chunk, tail) = rest.split_at((*size).min(rest.len()));
                writer.write_all(chunk).await.unwrap();
                rest = tail;
                if rest.is_empty() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            writer.shutdown().await.unwrap();
        };
        let receive = async {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), pumped, got) = tokio::join!(send, pump(&from, &to, &bytes, &ended), receive);
        pumped.unwrap();
        let sent = data;
        assert_eq!(got, sent, "every byte in order, then EOF");
        assert_eq!(bytes.load(Ordering::Relaxed), sent.len() as u64);
        assert!(ended.load(Ordering::Relaxed), "the EOF was passed on");
    }
}
