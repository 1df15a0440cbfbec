//! UDP frontends: one flow per client address, each with its own connected socket to the
//! endpoint picked when the flow started; replies leave from the frontend's socket (so from
//! the VIP); a flow ends after its idle timeout, when its endpoint refuses, or when its
//! endpoint leaves the route.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{ActiveGuard, EndpointState, now_ms};
use crate::route::Route;
use crate::shared::Shared;
use crate::table::Listen;

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;
/// Flows one frontend keeps at most; datagrams that would start more are dropped.
const MAX_FLOWS: usize = 65_536;

pub(crate) fn bind(addr: SocketAddr, reuseport: bool) -> io::Result<UdpSocket> {
    let sock = crate::sockopt::socket(addr, socket2::Type::DGRAM)?;
    sock.set_reuse_address(true)?;
    // Each worker gets its own socket; the kernel hashes a client's datagrams to one of
    // them consistently, so a flow stays on one worker.
    sock.set_reuse_port(reuseport)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

struct Flow {
    upstream: UdpSocket,
    endpoint: Arc<EndpointState>,
    last_active: AtomicU64,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// Relays datagrams until cancelled; flows end with the frontend.
pub(crate) async fn serve(
    socket: UdpSocket,
    listen: Listen,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let socket = Arc::new(socket);
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(frontend = %listen, error = %e, "UDP receive failed");
                continue;
            }
        };
        let route = shared.table.load().routes.get(&listen).cloned();
        let Some(route) = route else { continue };
        let existing = flows.lock().ok().and_then(|f| f.get(&client).cloned());
        let flow = match existing {
            // A flow whose endpoint left the route ends: its next datagram starts a new one.
            Some(f) if route.endpoints.iter().any(|e| Arc::ptr_eq(e, &f.endpoint)) => f,
            stale => {
                if let Some(f) = stale {
                    remove(&flows, client, &f);
                }
                match start_flow(&socket, &flows, client, &route, &shared, &cancel).await {
                    Some(f) => f,
                    None => continue,
                }
            }
        };
        flow.last_active.store(now_ms(), Ordering::Relaxed);
        if flow.upstream.send(&buf[..n]).await.is_ok() {
            flow.endpoint
                .stats
                .bytes_to_endpoint
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

fn remove(flows: &Flows, client: SocketAddr, flow: &Arc<Flow>) {
    if let Ok(mut f) = flows.lock()
        && f.get(&client).is_some_and(|x| Arc::ptr_eq(x, flow))
    {
        f.remove(&client);
    }
}

async fn start_flow(
    socket: &Arc<UdpSocket>,
    flows: &Flows,
    client: SocketAddr,
    route: &Arc<Route>,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Option<Arc<Flow>> {
    if flows.lock().map_or(true, |f| f.len() >= MAX_FLOWS) {
        shared.stats.udp_dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let now = now_ms();
    let Some(endpoint) = route.attempts(client.ip(), now).next().cloned() else {
        shared.stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let local: IpAddr = if endpoint.addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let upstream = match UdpSocket::bind((local, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a UDP flow socket");
            return None;
        }
    };
    if let Err(e) = upstream.connect(endpoint.addr).await {
        endpoint.connect_failed(now);
        tracing::debug!(endpoint = %endpoint.addr, error = %e, "UDP connect failed");
        return None;
    }
    route.connected(client.ip(), &endpoint, now);
    let flow = Arc::new(Flow {
        upstream,
        endpoint,
        last_active: AtomicU64::new(now),
    });
    if let Ok(mut f) = flows.lock() {
        f.insert(client, Arc::clone(&flow));
    }
    let (socket, flows, f) = (Arc::clone(socket), Arc::clone(flows), Arc::clone(&flow));
    let idle = shared.udp_idle;
    let cancel = cancel.clone();
    shared.tracker.spawn(async move {
        let _active = ActiveGuard::new(&f.endpoint);
        tokio::select! {
            () = cancel.cancelled() => {}
            () = replies(&socket, client, &f, idle) => {}
        }
        remove(&flows, client, &f);
    });
    Some(flow)
}

/// Sends the endpoint's datagrams back to the client until the flow is idle for `idle` or
/// the endpoint refuses (ICMP port unreachable: the endpoint is ejected).
async fn replies(socket: &UdpSocket, client: SocketAddr, flow: &Flow, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let since = now_ms().saturating_sub(flow.last_active.load(Ordering::Relaxed));
        let Some(left) = idle_ms.checked_sub(since).filter(|&l| l > 0) else {
            return;
        };
        match tokio::time::timeout(Duration::from_millis(left), flow.upstream.recv(&mut buf)).await
        {
            Ok(Ok(n)) => {
                flow.last_active.store(now_ms(), Ordering::Relaxed);
                if socket.send_to(&buf[..n], client).await.is_ok() {
                    flow.endpoint
                        .stats
                        .bytes_to_client
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                flow.endpoint.connect_failed(now_ms());
                return;
            }
            Ok(Err(_)) => return,
            // Timed out: loop re-checks whether client traffic kept the flow alive.
            Err(_) => {}
        }
    }
}
