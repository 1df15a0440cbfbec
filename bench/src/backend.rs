//! The bench's own HTTP backends: one thread per backend namespace, each running a
//! current-thread tokio runtime, pinned to the load CPU (like the nginx workers of
//! `bench/proxy.sh`).
//!
//! HTTP/1.1, keep-alive by default: `GET /` answers a fixed small body (the backend's name);
//! `GET /bulk/N` answers N bytes; a request with `Connection: close` is answered and the
//! connection closed by the server. Nothing else of HTTP is implemented.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::error::{BenchError, Result};
use crate::sys;

/// Size of the chunk bulk bodies are written from.
const BULK_CHUNK: usize = 256 * 1024;

/// A running backend; stopped on drop.
#[derive(Debug)]
pub struct Backend {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
    accepted: Arc<AtomicU64>,
}

impl Backend {
    /// Serves on `addr` inside namespace `ns`, on `cpu`. Returns once it listens.
    pub fn start(ns: &str, name: &str, addr: SocketAddr, cpu: Option<usize>) -> Result<Backend> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let body = format!("{name}\n");
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let thread = sys::spawn_in(&format!("backend-{name}"), ns, cpu, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| BenchError::io("backend runtime", e))?;
            let on_error = ready_tx.clone();
            let result: Result<()> = rt.block_on(async move {
                let listener = bind(addr)?;
                let _ = ready_tx.send(Ok(()));
                serve(listener, body, counter, stop_rx).await;
                Ok(())
            });
            if let Err(e) = &result {
                let _ = on_error.send(Err(e.to_string()));
            }
            result
        })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Backend {
                stop: Some(stop_tx),
                thread: Some(thread),
                accepted,
            }),
            Ok(Err(e)) => Err(BenchError::mode("backend", e)),
            Err(_) => Err(sys::join(thread, "backend")
                .err()
                .unwrap_or_else(|| BenchError::mode("backend", "exited before listening"))),
        }
    }
}

impl Backend {
    /// Connections accepted so far (to see how a mode spreads connections).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| BenchError::io("backend socket", e))?;
    sock.set_reuse_address(true)
        .map_err(|e| BenchError::io("SO_REUSEADDR", e))?;
    sock.bind(&addr.into())
        .map_err(|e| BenchError::io(format!("backend bind {addr}"), e))?;
    sock.listen(65535)
        .map_err(|e| BenchError::io("backend listen", e))?;
    sock.set_nonblocking(true)
        .map_err(|e| BenchError::io("backend nonblocking", e))?;
    TcpListener::from_std(sock.into()).map_err(|e| BenchError::io("backend listener", e))
}

/// The two fixed answers, built once per backend.
#[derive(Debug)]
struct Answers {
    small: Vec<u8>,
    small_close: Vec<u8>,
}

async fn serve(
    listener: TcpListener,
    body: String,
    counter: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) {
    let answers = Arc::new(Answers {
        small: format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        small_close: format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    });
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                if let Ok((s, _)) = accepted {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_nodelay(true);
                    tokio::spawn(connection(s, answers.clone()));
                }
            }
        }
    }
}

/// What one parsed request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Bytes of body asked for by `/bulk/N`; `None` for the small answer.
    pub(crate) bulk: Option<u64>,
    pub(crate) close: bool,
    /// Length of the request head in the buffer.
    pub(crate) len: usize,
}

/// Parses one request head at the start of `buf`, if complete.
pub(crate) fn parse_request(buf: &[u8]) -> Option<Request> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..end];
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(end);
    let line = std::str::from_utf8(&head[..line_end]).unwrap_or("");
    let path = line.split(' ').nth(1).unwrap_or("/");
    let bulk = path.strip_prefix("/bulk/").and_then(|n| n.parse().ok());
    let close = std::str::from_utf8(head)
        .map(|h| h.to_ascii_lowercase().contains("\r\nconnection: close"))
        .unwrap_or(false);
    Some(Request {
        bulk,
        close,
        len: end,
    })
}

async fn connection(mut s: TcpStream, answers: Arc<Answers>) {
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        match s.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        while let Some(req) = parse_request(&buf[..filled]) {
            let ok = match req.bulk {
                Some(n) => bulk(&mut s, n, req.close).await,
                None => s
                    .write_all(if req.close {
                        &answers.small_close
                    } else {
                        &answers.small
                    })
                    .await
                    .is_ok(),
            };
            if !ok || req.close {
                let _ = s.shutdown().await;
                return;
            }
            buf.copy_within(req.len..filled, 0);
            filled -= req.len;
        }
        if filled == buf.len() {
            return; // a head larger than 4 KiB: not ours
        }
    }
}

async fn bulk(s: &mut TcpStream, n: u64, close: bool) -> bool {
    static CHUNK: [u8; BULK_CHUNK] = [b'x'; BULK_CHUNK];
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {n}{}\r\n\r\n",
        if close { "\r\nConnection: close" } else { "" }
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let mut left = n;
    while left > 0 {
        let k = usize::try_from(left.min(BULK_CHUNK as u64)).unwrap_or(BULK_CHUNK);
        if s.write_all(&CHUNK[..k]).await.is_err() {
            return false;
        }
        left -= k as u64;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r"), None);
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET").unwrap();
        assert_eq!(
            r,
            Request {
                bulk: None,
                close: false,
                len: 27
            }
        );
        let r = parse_request(b"GET /bulk/1000 HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(r.bulk, Some(1000));
        assert!(r.close);
    }
}
