//! Transport: UDP on one blocking thread per core (SO_REUSEPORT sockets, reused buffers),
//! TCP through hickory-server's `Server` with our `RequestHandler`. Both call the same
//! `wire::respond` over the table that is swapped whole on every snapshot.
//!
//! A UDP thread takes every datagram waiting on its socket with one `recvmmsg` (up to
//! `BATCH`; it blocks only for the first). Before answering a batch it reads the table
//! lines each query will need (`wire::touch`): with 10,000 Services the table is larger
//! than the CPU caches, and a lookup costs two or three cache misses in a row; touched
//! together, a batch's misses overlap and cost about one. Queries larger than
//! `REQUEST_SLOT` (2,112 bytes) get FORMERR over UDP (TCP reads them whole).

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use hickory_proto::op::{Edns, Message, Metadata, ResponseCode};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use socket2::{Domain, Socket, Type};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::gate::DnsSource;
use crate::metrics::{DnsMetrics, ThreadCounters};
use crate::table::{DnsConfig, DnsTable, TableBuilder};
use crate::upstream::Upstream;
use crate::wire::{self, Outcome, Policy, Transport};

/// How the DNS server runs.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    pub listen: SocketAddr,
    pub config: DnsConfig,
    pub upstreams: Vec<SocketAddr>,
    /// UDP threads; 0 means one per core.
    pub udp_threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A running DNS server. `stop` ends it; dropping it without `stop` leaves threads to end
/// at the next read timeout.
#[derive(Debug)]
pub struct DnsServer {
    table: Arc<ArcSwapOption<DnsTable>>,
    metrics: Arc<DnsMetrics>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    local: SocketAddr,
    applied: watch::Receiver<u64>,
}

/// A reply the forwarder sends for a UDP query it answered.
#[derive(Debug)]
pub(crate) struct ForwardJob {
    pub(crate) request: Vec<u8>,
    pub(crate) client: SocketAddr,
    pub(crate) socket: Arc<UdpSocket>,
    /// When the request arrived (for the duration histogram).
    pub(crate) started: Instant,
}

// === impl ForwardJob ===

impl ForwardJob {
    /// Counts the request once `reply` went out.
    pub(crate) fn record(&self, counters: &ThreadCounters, reply: &[u8]) {
        let rcode = reply
            .get(3)
            .map_or(ResponseCode::ServFail, |b| ResponseCode::from(0, b & 0x0F));
        counters.record(
            &self.request,
            Transport::Udp,
            self.client,
            rcode,
            self.started,
        );
    }
}

const READ_TIMEOUT: Duration = Duration::from_millis(200);

impl DnsServer {
    /// Binds UDP and TCP on `opts.listen` and starts serving. Must run inside a tokio
    /// runtime. Until the first snapshot arrives every in-zone query gets SERVFAIL.
    /// Each [`DnsSource`] is answered from once its table is built; [`DnsServer::applied`]
    /// reports its `seq` then.
    pub async fn start(
        opts: DnsOptions,
        mut sources: watch::Receiver<DnsSource>,
    ) -> Result<DnsServer, DnsError> {
        let table: Arc<ArcSwapOption<DnsTable>> = Arc::new(ArcSwapOption::empty());
        // TCP first: binding port 0 picks the port UDP then shares.
        let tcp = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| DnsError::Bind {
                addr: opts.listen,
                proto: "tcp",
                source,
            })?;
        let local = tcp.local_addr().unwrap_or(opts.listen);
        let metrics = Arc::new(DnsMetrics::new(local));
        let upstream = (!opts.upstreams.is_empty())
            .then(|| Arc::new(Upstream::new(opts.upstreams.clone(), metrics.clone())));
        let policy = Policy {
            forward: upstream.is_some(),
        };
        let cancel = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let threads_n = match opts.udp_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut sockets = Vec::with_capacity(threads_n);
        for _ in 0..threads_n {
            sockets.push(Arc::new(udp_socket(local)?));
        }

        let (fwd_tx, fwd_rx) = mpsc::channel::<ForwardJob>(1024);
        if let Some(up) = &upstream {
            tasks.spawn(Arc::clone(up).serve_udp(fwd_rx, cancel.clone()));
        }

        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(threads_n);
        for (i, sock) in sockets.into_iter().enumerate() {
            let ctx = UdpLoop {
                sock,
                table: Arc::clone(&table),
                policy,
                stop: Arc::clone(&stop),
                forward: upstream.is_some().then(|| fwd_tx.clone()),
                counters: metrics.thread_counters(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || ctx.run())
                .map_err(|source| DnsError::Bind {
                    addr: local,
                    proto: "udp thread",
                    source,
                })?;
            threads.push(handle);
        }

        let handler = TcpHandler {
            table: Arc::clone(&table),
            policy,
            upstream: upstream.clone(),
            counters: metrics.thread_counters(),
        };
        let mut server = Server::new(handler);
        server.register_listener(tcp, Duration::from_secs(10), 32);
        let server_cancel = cancel.clone();
        tasks.spawn(async move {
            server_cancel.cancelled().await;
            let _ = server.shutdown_gracefully().await;
        });

        // Table builder: one table per source, built off the reactor, swapped whole.
        let builder_table = Arc::clone(&table);
        let builder_cancel = cancel.clone();
        let cfg = opts.config.clone();
        let mut builder = TableBuilder::new(cfg.clone());
        let builder_metrics = metrics.clone();
        let (applied_tx, applied) = watch::channel(0u64);
        tasks.spawn(async move {
            // The last programmed version whose lag was observed.
            let mut lag_seen = 0;
            loop {
                let src = sources.borrow_and_update().clone();
                if src.programmed.version > 0 {
                    let started = Instant::now();
                    // The builder keeps each Service's encoded answers between snapshots;
                    // it moves to the blocking pool and back. A panic there costs the cache.
                    let mut b = std::mem::replace(&mut builder, TableBuilder::new(cfg.clone()));
                    let build_src = src.clone();
                    let built = tokio::task::spawn_blocking(move || {
                        let t = b.build_source(&build_src);
                        (b, t)
                    })
                    .await;
                    if let Ok((b, t)) = built {
                        builder = b;
                        tracing::debug!(
                            version = t.version,
                            pending = src.pending.as_ref().map(|p| p.version),
                            names = t.len(),
                            index_bytes = t.index_bytes(),
                            build_ms = started.elapsed().as_secs_f64() * 1e3,
                            "dns table built"
                        );
                        builder_metrics.set_table(t.version, t.len());
                        builder_table.store(Some(Arc::new(t)));
                        if src.pending.is_none() && src.programmed.version > lag_seen {
                            lag_seen = src.programmed.version;
                            if let Some(at) = src.programmed.changed_at {
                                builder_metrics.observe_programming_lag(at.elapsed());
                            }
                        }
                    }
                }
                // Reported even when the build failed: waiting on it would stop routing.
                applied_tx.send_replace(src.seq);
                tokio::select! {
                    () = builder_cancel.cancelled() => return,
                    res = sources.changed() => if res.is_err() { return },
                }
            }
        });

        Ok(DnsServer {
            table,
            metrics,
            stop,
            threads,
            cancel,
            tasks,
            local,
            applied,
        })
    }

    /// The address UDP and TCP listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn metrics(&self) -> Arc<DnsMetrics> {
        self.metrics.clone()
    }

    /// The `seq` of the last [`DnsSource`] DNS answers from.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Version of the snapshot the served table was built from (0 before the first).
    pub fn table_version(&self) -> u64 {
        self.table.load().as_ref().map_or(0, |t| t.version)
    }

    /// Stops accepting, finishes TCP connections gracefully, joins the UDP threads.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket, DnsError> {
    let bind = |source| DnsError::Bind {
        addr,
        proto: "udp",
        source,
    };
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, None).map_err(bind)?;
    sock.set_reuse_port(true).map_err(bind)?;
    sock.set_read_timeout(Some(READ_TIMEOUT)).map_err(bind)?;
    sock.bind(&addr.into()).map_err(bind)?;
    Ok(sock.into())
}

/// Datagrams taken per receive call.
const BATCH: usize = 32;
/// Receive buffer per datagram. A query larger than this gets FORMERR. Not a power of two:
/// buffers at a 4 KiB stride would share L1 cache sets.
const REQUEST_SLOT: usize = 2048 + 64;

struct UdpLoop {
    sock: Arc<UdpSocket>,
    table: Arc<ArcSwapOption<DnsTable>>,
    policy: Policy,
    stop: Arc<AtomicBool>,
    forward: Option<mpsc::Sender<ForwardJob>>,
    counters: Arc<ThreadCounters>,
}

impl UdpLoop {
    fn run(self) {
        let mut bufs = vec![0u8; BATCH * REQUEST_SLOT];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        // (length, truncated, sender) of each datagram of the batch.
        let mut got: Vec<(usize, bool, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
        let mut out = Vec::with_capacity(4096);
        let mut key = Vec::with_capacity(256);
        let mut starts = Vec::with_capacity(BATCH);
        while !self.stop.load(Ordering::Relaxed) {
            got.clear();
            if !self.receive(&mut bufs, &mut headers, &mut got) {
                continue;
            }
            let started = Instant::now();
            let table = self.table.load();
            if let Some(t) = table.as_deref()
                && got.len() > 1
            {
                let reqs = bufs.chunks_exact(REQUEST_SLOT).zip(&got);
                let reqs = reqs.map(|(req, &(n, ..))| &req[..n.min(REQUEST_SLOT)]);
                wire::touch(t, reqs, &mut key, &mut starts);
            }
            for (req, &(n, truncated, client)) in bufs.chunks_exact(REQUEST_SLOT).zip(&got) {
                let Some(client) = client else { continue };
                let req = &req[..n.min(REQUEST_SLOT)];
                let outcome = if truncated {
                    // Larger than any query we answer: FORMERR rather than read part of it.
                    wire::oversized(req, &mut out)
                } else {
                    wire::respond(
                        table.as_deref(),
                        req,
                        Transport::Udp,
                        self.policy,
                        &mut out,
                        &mut key,
                    )
                };
                self.dispatch(req, client, outcome, &mut out, started);
            }
        }
    }

    /// Receives a batch into `bufs` (one `REQUEST_SLOT` each) and lists it in `got`: blocks
    /// for the first datagram (up to the socket's read timeout), then takes whatever else is
    /// queued. False when nothing came.
    fn receive(
        &self,
        bufs: &mut [u8],
        headers: &mut MultiHeaders<SockaddrStorage>,
        got: &mut Vec<(usize, bool, Option<SocketAddr>)>,
    ) -> bool {
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
            .chunks_exact_mut(REQUEST_SLOT)
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        let flags = MsgFlags::MSG_WAITFORONE;
        match recvmmsg(self.sock.as_raw_fd(), headers, iovs.iter_mut(), flags, None) {
            Ok(msgs) => {
                got.extend(msgs.map(|m| {
                    let truncated = m.flags.contains(MsgFlags::MSG_TRUNC);
                    (m.bytes, truncated, m.address.and_then(socket_addr))
                }));
                !got.is_empty()
            }
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ETIMEDOUT) => false,
            Err(e) => {
                tracing::warn!(error = %e, "dns udp receive failed");
                false
            }
        }
    }

    /// Sends, forwards or drops one request's outcome, and counts it.
    fn dispatch(
        &self,
        req: &[u8],
        client: SocketAddr,
        outcome: Outcome,
        out: &mut Vec<u8>,
        started: Instant,
    ) {
        match outcome {
            Outcome::Reply(rcode) => {
                let _ = self.sock.send_to(out, client);
                self.counters
                    .record(req, Transport::Udp, client, rcode, started);
            }
            Outcome::Forward => {
                let job = ForwardJob {
                    request: req.to_vec(),
                    client,
                    socket: Arc::clone(&self.sock),
                    started,
                };
                let sent = self
                    .forward
                    .as_ref()
                    .is_some_and(|f| f.try_send(job).is_ok());
                if !sent {
                    // Forwarder saturated: tell the client now rather than time out.
                    servfail(req, out);
                    let _ = self.sock.send_to(out, client);
                    self.counters.record(
                        req,
                        Transport::Udp,
                        client,
                        ResponseCode::ServFail,
                        started,
                    );
                }
            }
            Outcome::Drop => {}
        }
    }
}

/// The sender of a datagram as a std address (UDP senders are IPv4 or IPv6).
fn socket_addr(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// A SERVFAIL echoing the request's header and question (best effort).
pub(crate) fn servfail(req: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let Ok(msg) = Message::from_vec(req) else {
        return;
    };
    let mut m = Message::error_msg(
        msg.metadata.id,
        msg.metadata.op_code,
        ResponseCode::ServFail,
    );
    m.metadata.recursion_desired = msg.metadata.recursion_desired;
    m.add_queries(msg.queries);
    if let Ok(v) = m.to_vec() {
        out.extend_from_slice(&v);
    }
}

/// hickory-server calls this for every TCP request.
struct TcpHandler {
    table: Arc<ArcSwapOption<DnsTable>>,
    policy: Policy,
    upstream: Option<Arc<Upstream>>,
    counters: Arc<ThreadCounters>,
}

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let req = request.as_slice();
        let mut out = Vec::with_capacity(512);
        let mut key = Vec::with_capacity(256);
        let table = self.table.load();
        let outcome = wire::respond(
            table.as_deref(),
            req,
            Transport::Tcp,
            self.policy,
            &mut out,
            &mut key,
        );
        drop(table);
        if outcome == Outcome::Forward {
            match &self.upstream {
                Some(up) => up.forward(req, Transport::Tcp, &mut out).await,
                None => servfail(req, &mut out),
            }
        }
        let reply = Message::from_vec(&out).ok();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let rcode = reply
            .as_ref()
            .map_or(ResponseCode::ServFail, |m| m.metadata.response_code);
        self.counters
            .record(req, Transport::Tcp, request.src(), rcode, started);
        let empty = Message::error_msg(request.metadata.id, request.metadata.op_code, rcode);
        let reply = reply.unwrap_or(empty);
        metadata.response_code = rcode;
        metadata.authoritative = reply.metadata.authoritative;
        metadata.recursion_available = reply.metadata.recursion_available;
        let edns = request.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(wire::EDNS_PAYLOAD);
            e
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "dns tcp response failed");
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                hickory_proto::op::Header {
                    metadata: m,
                    counts: Default::default(),
                }
                .into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use super::*;

    #[test]
    fn senders_of_both_families_convert_back_to_std_addresses() {
        let v4: SocketAddr = SocketAddrV4::new([10, 1, 2, 3].into(), 5353).into();
        let ip = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 2);
        let v6: SocketAddr = SocketAddrV6::new(ip, 53, 7, 9).into();
        for addr in [v4, v6] {
            assert_eq!(socket_addr(SockaddrStorage::from(addr)), Some(addr));
        }
    }
}
