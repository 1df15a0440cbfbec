//! Forwarding names outside the cluster zones to `--upstream` resolvers, with a cache of
//! positive and negative answers bounded by their TTLs.
//!
//! A query is asked of each upstream in turn (UDP, then TCP when the answer is truncated)
//! with a fresh id and source port; the answer must echo the id and question. Cached answers
//! are served with the client's id and question and with TTLs reduced by their age.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::DnsMetrics;
use crate::server::{ForwardJob, servfail};
use crate::wire::{EDNS_PAYLOAD, Transport};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Cached answers live at most this long, whatever their TTL (CoreDNS's `cache 30`).
const MAX_CACHE_TTL: u32 = 30;
const CACHE_ENTRIES: usize = 10_000;
/// Forwarded queries in flight at once; more get SERVFAIL at once.
const IN_FLIGHT: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    name: String,
    qtype: u16,
    dnssec_ok: bool,
}

#[derive(Debug)]
struct CacheEntry {
    message: Message,
    stored: Instant,
    ttl: u32,
}

/// The forwarder: upstream addresses, the cache and counters.
#[derive(Debug)]
pub(crate) struct Upstream {
    servers: Vec<SocketAddr>,
    cache: Mutex<HashMap<CacheKey, CacheEntry>>,
    metrics: Arc<DnsMetrics>,
    ids: RandomState,
    permits: Arc<Semaphore>,
}

impl Upstream {
    pub(crate) fn new(servers: Vec<SocketAddr>, metrics: Arc<DnsMetrics>) -> Self {
        Self {
            servers,
            cache: Mutex::new(HashMap::new()),
            metrics,
            ids: RandomState::new(),
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Answers UDP queries the serving threads handed over, until cancelled.
    pub(crate) async fn serve_udp(
        self: Arc<Self>,
        mut jobs: mpsc::Receiver<ForwardJob>,
        cancel: CancellationToken,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        // Forwarded UDP queries are counted here, when their answer is known.
        let counters = self.metrics.thread_counters();
        loop {
            let job = tokio::select! {
                () = cancel.cancelled() => break,
                job = jobs.recv() => match job { Some(j) => j, None => break },
            };
            while tasks.try_join_next().is_some() {}
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                let mut out = Vec::new();
                servfail(&job.request, &mut out);
                let _ = job.socket.send_to(&out, job.client);
                job.record(&counters, &out);
                continue;
            };
            let me = Arc::clone(&self);
            let counters = Arc::clone(&counters);
            tasks.spawn(async move {
                let mut out = Vec::with_capacity(512);
                me.forward(&job.request, Transport::Udp, &mut out).await;
                if !out.is_empty() {
                    let _ = job.socket.send_to(&out, job.client);
                    job.record(&counters, &out);
                }
                drop(permit);
            });
        }
        tasks.abort_all();
    }

    /// Forwards `req` (or answers it from the cache) into `out`; SERVFAIL when no upstream
    /// answers. For UDP the answer is truncated to the client's payload size.
    pub(crate) async fn forward(&self, req: &[u8], transport: Transport, out: &mut Vec<u8>) {
        out.clear();
        let Ok(query) = Message::from_vec(req) else {
            servfail(req, out);
            return;
        };
        let Some(q) = query.queries.first() else {
            servfail(req, out);
            return;
        };
        let dnssec_ok = query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = CacheKey {
            name: q.name().to_lowercase().to_ascii(),
            qtype: u16::from(q.query_type()),
            dnssec_ok,
        };
        let answer = match self.cached(&key) {
            Some(m) => Some(m),
            None => {
                self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
                let mut fetched = self.ask(&query).await;
                if let Some(m) = &mut fetched {
                    // Clients see at most the cache's lifetime, as a CoreDNS cache serves.
                    for r in m
                        .answers
                        .iter_mut()
                        .chain(m.authorities.iter_mut())
                        .chain(m.additionals.iter_mut())
                    {
                        r.ttl = r.ttl.min(MAX_CACHE_TTL);
                    }
                    self.store(key, m);
                }
                fetched
            }
        };
        let Some(mut answer) = answer else {
            self.metrics
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            servfail(req, out);
            return;
        };
        // The client's id and question (its letter case), our flags for RD/CD.
        answer.metadata.id = query.metadata.id;
        answer.metadata.recursion_desired = query.metadata.recursion_desired;
        answer.metadata.checking_disabled = query.metadata.checking_disabled;
        answer.metadata.recursion_available = true;
        answer.queries = query.queries.clone();
        // Our OPT iff the client sent one, whatever the upstream (or the client that filled
        // the cache) used.
        answer.edns = query.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(EDNS_PAYLOAD);
            e.set_dnssec_ok(dnssec_ok);
            e
        });
        let limit = match (transport, &query.edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, None) => 512,
            (Transport::Udp, Some(e)) => usize::from(e.max_payload()).clamp(512, 4096),
        };
        match answer.to_vec() {
            Ok(bytes) if bytes.len() <= limit => out.extend_from_slice(&bytes),
            Ok(_) => {
                if let Ok(bytes) = answer.truncate().to_vec() {
                    out.extend_from_slice(&bytes);
                }
            }
            Err(_) => servfail(req, out),
        }
    }

    fn cached(&self, key: &CacheKey) -> Option<Message> {
        let mut cache = self.cache.lock().ok()?;
        let entry = cache.get(key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            cache.remove(key);
            return None;
        }
        let mut m = entry.message.clone();
        drop(cache);
        let denial = m.answers.is_empty();
        let hits = if denial {
            &self.metrics.cache_hits_denial
        } else {
            &self.metrics.cache_hits_success
        };
        hits.fetch_add(1, Ordering::Relaxed);
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(m)
    }

    fn store(&self, key: CacheKey, m: &Message) {
        let cacheable = matches!(
            m.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ) && !m.metadata.truncation;
        let Some(ttl) = cacheable.then(|| cache_ttl(m)).flatten() else {
            return;
        };
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
            if cache.len() >= CACHE_ENTRIES {
                // Still full of live entries: make room by dropping an arbitrary half.
                let drop_n = cache.len() / 2;
                let victims: Vec<CacheKey> = cache.keys().take(drop_n).cloned().collect();
                for k in victims {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            CacheEntry {
                message: m.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }

    /// Asks each upstream in turn; the first valid answer wins.
    async fn ask(&self, query: &Message) -> Option<Message> {
        for &server in &self.servers {
            let mut q = query.clone();
            q.metadata.id = (self.ids.hash_one(Instant::now()) & 0xFFFF) as u16;
            q.metadata.recursion_desired = true;
            let Ok(bytes) = q.to_vec() else { return None };
            let answer = match tokio::time::timeout(TIMEOUT, udp_exchange(server, &bytes)).await {
                Ok(Ok(a)) => a,
                _ => continue,
            };
            let Some(answer) = valid(&q, &answer) else {
                continue;
            };
            if !answer.metadata.truncation {
                return Some(answer);
            }
            let tcp = tokio::time::timeout(TIMEOUT, tcp_exchange(server, &bytes)).await;
            if let Some(full) = tcp.ok().and_then(Result::ok).and_then(|a| valid(&q, &a)) {
                return Some(full);
            }
        }
        None
    }
}

/// The answer, when it is a response to `q` (same id and question).
fn valid(q: &Message, bytes: &[u8]) -> Option<Message> {
    let m = Message::from_vec(bytes).ok()?;
    (m.metadata.message_type == MessageType::Response
        && m.metadata.id == q.metadata.id
        && m.queries == q.queries)
        .then_some(m)
}

/// How long an answer may be cached: its smallest TTL (the SOA minimum for negative
/// answers), at most `MAX_CACHE_TTL`; `None` when nothing says (not cached).
fn cache_ttl(m: &Message) -> Option<u32> {
    let positive = m.answers.iter().map(|r| r.ttl).min();
    let negative = || {
        m.authorities.iter().find_map(|r: &Record| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
    };
    let ttl = positive.or_else(negative)?;
    (ttl > 0).then(|| ttl.min(MAX_CACHE_TTL))
}

async fn udp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn tcp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let mut lenb = [0u8; 2];
    s.read_exact(&mut lenb).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests panic with context")]

    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn query(id: u16) -> Message {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(name("www.example.com."), RecordType::A));
        m
    }

    fn answer(id: u16, ttls: &[u32]) -> Message {
        let mut m = query(id).into_response();
        for &ttl in ttls {
            let a = RData::A(A::new(192, 0, 2, 1));
            m.add_answer(Record::from_rdata(name("www.example.com."), ttl, a));
        }
        m
    }

    fn nxdomain(soa_ttl: u32, minimum: u32) -> Message {
        let mut m = query(1).into_response();
        m.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(name("ns.example."), name("h.example."), 1, 1, 1, 1, minimum);
        m.add_authority(Record::from_rdata(
            name("example.com."),
            soa_ttl,
            RData::SOA(soa),
        ));
        m
    }

    fn key() -> CacheKey {
        CacheKey {
            name: "www.example.com.".into(),
            qtype: 1,
            dnssec_ok: false,
        }
    }

    fn upstream() -> Upstream {
        let listen = "127.0.0.1:53".parse().unwrap();
        Upstream::new(Vec::new(), Arc::new(DnsMetrics::new(listen)))
    }

    #[test]
    fn cache_ttl_is_the_smallest_ttl_capped() {
        assert_eq!(cache_ttl(&answer(1, &[60, 20, 40])), Some(20));
        assert_eq!(cache_ttl(&answer(1, &[3600])), Some(MAX_CACHE_TTL));
        assert_eq!(cache_ttl(&answer(1, &[0])), None, "TTL 0: not cached");
        // Negative: the smaller of the SOA's TTL and its minimum (RFC 2308).
        assert_eq!(cache_ttl(&nxdomain(10, 20)), Some(10));
        assert_eq!(cache_ttl(&nxdomain(20, 7)), Some(7));
        // NODATA without an SOA says nothing: not cached.
        assert_eq!(cache_ttl(&answer(1, &[])), None);
    }

    #[test]
    fn only_answers_to_our_question_are_valid() {
        let q = query(7);
        assert!(valid(&q, &answer(7, &[60]).to_vec().unwrap()).is_some());
        assert!(
            valid(&q, &answer(8, &[60]).to_vec().unwrap()).is_none(),
            "id"
        );
        assert!(valid(&q, &q.to_vec().unwrap()).is_none(), "not a response");
        let mut other = answer(7, &[60]);
        other.queries[0].set_name(name("evil.example."));
        assert!(valid(&q, &other.to_vec().unwrap()).is_none(), "question");
        assert!(valid(&q, &[0, 7, 0x80]).is_none(), "garbage");
    }

    #[test]
    fn the_cache_keeps_success_and_denial_but_not_failures() {
        let up = upstream();
        up.store(key(), &answer(1, &[60]));
        assert_eq!(up.cached(&key()).unwrap().answers.len(), 1);
        assert_eq!(up.metrics.cache_hits_success.load(Ordering::Relaxed), 1);

        let up = upstream();
        up.store(key(), &nxdomain(60, 60));
        let m = up.cached(&key()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(up.metrics.cache_hits_denial.load(Ordering::Relaxed), 1);

        let up = upstream();
        let mut fail = answer(1, &[60]);
        fail.metadata.response_code = ResponseCode::ServFail;
        up.store(key(), &fail);
        let mut truncated = answer(1, &[60]);
        truncated.metadata.truncation = true;
        up.store(key(), &truncated);
        assert!(up.cached(&key()).is_none());
    }

    #[test]
    fn cached_entries_expire() {
        let up = upstream();
        up.store(key(), &answer(1, &[60]));
        if let Ok(mut cache) = up.cache.lock() {
            let e = cache.get_mut(&key()).unwrap();
            // Stored 40 s ago: past the 30 s cap.
            e.stored = Instant::now().checked_sub(Duration::from_secs(40)).unwrap();
        }
        assert!(up.cached(&key()).is_none());
        assert!(
            up.cache.lock().unwrap().is_empty(),
            "an expired entry is removed"
        );
    }
}
