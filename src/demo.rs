//! `svcplane demo`: the embedded default. Three built-in HTTP backends on 127.0.0.11-13,
//! the Services of `demo/manifests.yaml` (ClusterIP on a loopback VIP, NodePort on
//! 127.0.0.1, headless, ExternalName) written to a temporary directory that the daemon
//! watches, the userspace data plane and DNS. Needs no root: every address is loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::{Cli, Command, DemoArgs};
use crate::logging;
use crate::run::{self, Started};

const MANIFESTS: &str = include_str!("demo/manifests.yaml");
/// The built-in backends: (pod name, address). The manifests point at these.
const BACKENDS: [(&str, &str); 3] = [
    ("web-1", "127.0.0.11:8080"),
    ("web-2", "127.0.0.12:8080"),
    ("web-3", "127.0.0.13:8080"),
];

pub(crate) fn main(args: DemoArgs) -> ExitCode {
    logging::init(args.log_format);
    let dir = std::env::temp_dir().join(format!("svcplane-demo-{}", std::process::id()));
    let code = run::block_on(demo(args, dir.clone()));
    let _ = std::fs::remove_dir_all(&dir);
    code
}

async fn demo(args: DemoArgs, dir: PathBuf) -> anyhow::Result<()> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)
        .with_context(|| format!("cannot create {}", manifests.display()))?;
    std::fs::write(manifests.join("demo.yaml"), MANIFESTS)
        .with_context(|| format!("cannot write {}", manifests.display()))?;
    for (name, addr) in BACKENDS {
        let addr: SocketAddr = addr.parse()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("demo backend {name}: cannot listen on {addr}"))?;
        tokio::spawn(backend(listener, name, addr));
    }
    let (dns, admin) = (args.dns_listen.to_string(), args.admin_listen.to_string());
    let state = dir.join("state");
    let argv = [
        "svcplane",
        "run",
        "--manifests",
        path_str(&manifests)?,
        "--mode",
        "userspace",
        "--node-ip",
        "127.0.0.1",
        "--service-cidr",
        "127.96.0.0/16",
        "--dns-listen",
        &dns,
        "--admin-listen",
        &admin,
        "--state-dir",
        path_str(&state)?,
        "--drain-timeout",
        "1",
    ];
    let Command::Run(run_args) = Cli::try_parse_from(argv)?.command else {
        anyhow::bail!("internal error: the demo's run arguments did not parse as `run`");
    };
    let shown = manifests.join("demo.yaml");
    run::run(
        *run_args,
        Some(Box::new(move |s: Started| print_try(&s, &shown))),
    )
    .await
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn print_try(s: &Started, manifests: &Path) {
    let dns = s.dns;
    let (host, port) = (dns.ip(), dns.port());
    println!(
        "\nsvcplane demo is running: 3 backends, 4 Services, DNS on {dns}, admin on {admin}.\n\
         Manifests: {m} (edit it: changes apply at once)\n\n\
         Try:\n\
         \x20 for i in 1 2 3 4 5 6; do curl -s http://127.96.0.10:8080/; done   # ClusterIP demo/web: round-robin\n\
         \x20 curl -s http://127.0.0.1:30080/                                  # NodePort demo/api on 127.0.0.1\n\
         \x20 dig @{host} -p {port} web.demo.svc.cluster.local +short               # 127.96.0.10\n\
         \x20 dig @{host} -p {port} db.demo.svc.cluster.local +short                # headless: one A per endpoint\n\
         \x20 dig @{host} -p {port} _http._tcp.api.demo.svc.cluster.local SRV +short\n\
         \x20 dig @{host} -p {port} docs.demo.svc.cluster.local +short              # ExternalName: a CNAME\n\
         \x20 curl -s http://{admin}/metrics | grep '^svcplane_proxy_connections_total'\n\n\
         Ctrl-C stops the demo.\n",
        admin = s.admin,
        m = manifests.display(),
    );
}

/// A minimal HTTP/1.1 server: one response per connection, naming the backend.
async fn backend(listener: TcpListener, name: &'static str, addr: SocketAddr) {
    loop {
        let Ok((mut conn, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let mut seen = 0;
            // Read the request head (or give up at 4 KiB / EOF).
            while seen < buf.len() {
                match conn.read(&mut buf[seen..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen += n,
                }
                if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let body = format!("{name} ({addr}) answered {peer}\n");
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
