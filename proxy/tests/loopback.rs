//! The proxy as a library on loopback (no root, no namespaces): UDP flows end after their
//! idle timeout and a new datagram starts a new one; TCP follows snapshot changes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic with context"
)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use svcplane_config::{Loader, ParseOptions, Snapshot};
use svcplane_proxy::{ProxyOptions, UserspaceProxy};
use tokio::sync::watch;

fn snapshot(dir: &std::path::Path, yaml: &str) -> Arc<Snapshot> {
    std::fs::write(dir.join("m.yaml"), yaml).unwrap();
    let mut loader = Loader::new(dir.to_path_buf(), ParseOptions::default());
    loader.reload().unwrap().0.unwrap()
}

fn service(vip: &str, protocol: &str, backend_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: t}}
spec:
  clusterIP: {vip}
  ports: [{{port: 5353, targetPort: {backend_port}, protocol: {protocol}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: echo, namespace: t}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{port: {backend_port}, protocol: {protocol}}}]}}]
"#
    )
}

async fn start(
    snap: Arc<Snapshot>,
    udp_idle: Duration,
) -> (UserspaceProxy, watch::Sender<Arc<Snapshot>>) {
    let (tx, rx) = watch::channel(snap);
    let opts = ProxyOptions {
        node_ips: Some(vec!["127.0.0.1".parse().unwrap()]),
        manage_addresses: false,
        udp_idle,
        workers: 1,
        ..ProxyOptions::default()
    };
    let proxy = UserspaceProxy::start(opts, rx).await.unwrap();
    let mut programmed = proxy.programmed();
    tokio::time::timeout(Duration::from_secs(10), programmed.wait_for(|&v| v > 0))
        .await
        .unwrap()
        .unwrap();
    (proxy, tx)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flow_ends_after_its_idle_timeout() {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n], from);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot(dir.path(), &service("127.97.0.1", "UDP", port));
    let (proxy, _tx) = start(snap, Duration::from_millis(300)).await;
    let stats = |f: fn(&svcplane_proxy::endpoint::EndpointStats) -> u64| {
        let t = proxy.table();
        t.ports.values().flatten().map(|e| f(&e.stats)).sum::<u64>()
    };
    let vip: SocketAddr = "127.97.0.1:5353".parse().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(vip).unwrap(); // replies must come from the VIP
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 512];
    for msg in [&b"one"[..], b"two"] {
        client.send(msg).unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg);
    }
    assert_eq!(
        stats(|s| s.connections.load(Ordering::Relaxed)),
        1,
        "one flow"
    );
    assert_eq!(stats(|s| s.active.load(Ordering::Relaxed)), 1);
    wait_until("the idle flow to end", || {
        stats(|s| s.active.load(Ordering::Relaxed)) == 0
    })
    .await;
    client.send(b"three").unwrap();
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"three");
    assert_eq!(
        stats(|s| s.connections.load(Ordering::Relaxed)),
        2,
        "a new flow"
    );
    assert_eq!(proxy.stop(Duration::from_secs(1)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frontend_follows_snapshots() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in backend.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot(dir.path(), &service("127.97.0.2", "TCP", port));
    let (proxy, tx) = start(snap, Duration::from_secs(30)).await;
    let vip: SocketAddr = "127.97.0.2:5353".parse().unwrap();
    let echo = move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(vip)?;
        s.write_all(b"hi")?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    };
    assert_eq!(
        tokio::task::spawn_blocking(echo).await.unwrap().unwrap(),
        "hi"
    );
    // The Service goes away: the frontend stops listening.
    let empty = snapshot(dir.path(), "");
    let mut programmed = proxy.programmed();
    let version = {
        let mut s = (*empty).clone();
        s.version = 2;
        tx.send(Arc::new(s)).unwrap();
        2
    };
    programmed.wait_for(|&v| v >= version).await.unwrap();
    let refused = tokio::task::spawn_blocking(echo).await.unwrap();
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    proxy.stop(Duration::from_secs(1)).await;
}
