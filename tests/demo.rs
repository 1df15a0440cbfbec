//! `svcplane demo`: the README's first command. Its built-in backends answer through the
//! ClusterIP VIP (round-robin) and the NodePort, its names resolve, and Ctrl-C/SIGTERM exits
//! cleanly, removing its temporary manifests. Everything is on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_svcplane");

fn http_get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out.rsplit("\r\n\r\n").next().unwrap().to_string()
}

/// Kills the demo if the test fails before it exits (a panicking test must not leave it).
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_serves_round_robin_and_dns_then_exits_cleanly() {
    let mut guard = Guard(
        Command::new(BIN)
            .args([
                "demo",
                "--dns-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut guard.0;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !printed.iter().any(|l: &String| l.contains("Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("demo printed no instructions: {printed:?}"));
        printed.push(line);
    }
    let text = printed.join("\n");
    // "DNS on 127.0.0.1:PORT," and the manifest path come from the real run.
    let dns: SocketAddr = text
        .split("DNS on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let manifests = text
        .split("Manifests: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&manifests).exists());
    assert!(text.contains("curl -s http://127.96.0.10:8080/"), "{text}");

    // The ClusterIP VIP: six requests, two per built-in backend.
    let mut counts = BTreeMap::new();
    for _ in 0..6 {
        let body = http_get("127.96.0.10:8080".parse().unwrap());
        let who = body.split(' ').next().unwrap().to_string();
        *counts.entry(who).or_insert(0) += 1;
    }
    let want: BTreeMap<String, i32> = [("web-1", 2), ("web-2", 2), ("web-3", 2)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(counts, want);
    // The NodePort on 127.0.0.1.
    assert!(http_get("127.0.0.1:30080".parse().unwrap()).starts_with("web-"));

    // Names resolve (dig is installed by scripts/test.sh).
    let dig = |name: &str, ty: &str| {
        let out = Command::new("dig")
            .args([
                &format!("@{}", dns.ip()),
                "-p",
                &dns.port().to_string(),
                name,
                ty,
                "+short",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig("web.demo.svc.cluster.local", "A"), "127.96.0.10");
    assert_eq!(
        dig("db.demo.svc.cluster.local", "A")
            .lines()
            .collect::<std::collections::BTreeSet<_>>(),
        ["127.0.0.21", "127.0.0.22"].into()
    );
    assert_eq!(dig("docs.demo.svc.cluster.local", "A"), "docs.example.com.");

    // SIGTERM (what Ctrl-C's SIGINT also does): exit 0, temporary files gone.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "demo did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!std::path::Path::new(&manifests).exists());
}
