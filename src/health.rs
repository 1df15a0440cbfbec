//! `/healthz` and `/readyz`, and the self-test that makes `/healthz` mean "this node
//! forwards".
//!
//! - `/readyz`: 200 once the first snapshot is programmed in the data plane and answered by
//!   DNS (the first full sync).
//! - `/healthz`: 200 when both hold:
//!   1. the latest snapshot is programmed, or was published less than [`PROGRAMMING_GRACE`]
//!      ago (a sync takes milliseconds; a probe that lands in one must not flap);
//!   2. the self-test succeeded within the last [`PROBE_WINDOW`]: every [`PROBE_INTERVAL`]
//!      the daemon connects to its probe frontend *through the data plane* (a TCP frontend
//!      the data plane serves like any Service's, whose one endpoint is a listener inside
//!      the daemon) and checks that the listener's per-process token comes back.
//!
//!   With `--mode none` nothing routes, so there is no self-test. The body says what
//!   failed and since when.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use svcplane_config::Snapshot;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the self-test runs.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How recent the last successful self-test must be.
pub(crate) const PROBE_WINDOW: Duration = Duration::from_secs(3);
/// How long one self-test may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a published snapshot may wait for the data plane before `/healthz` fails.
pub(crate) const PROGRAMMING_GRACE: Duration = Duration::from_secs(5);
/// The probe frontend's address; its port is picked free at start. Inside 127.0.0.0/8, so
/// it is local without adding an address, and outside the ranges Services use.
const PROBE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 127, 0, 1));

/// The probe's two ends: the backend listener (already bound) and the frontend address the
/// data plane must serve.
#[derive(Debug)]
pub(crate) struct ProbeEnds {
    pub(crate) frontend: SocketAddr,
    pub(crate) backend: TcpListener,
}

impl ProbeEnds {
    pub(crate) async fn bind() -> std::io::Result<Self> {
        let backend = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        // A free port on the probe address: bound and released (the data plane binds it
        // again with SO_REUSEPORT, or intercepts it).
        let port = std::net::TcpListener::bind((PROBE_IP, 0))?
            .local_addr()?
            .port();
        Ok(Self {
            frontend: SocketAddr::new(PROBE_IP, port),
            backend,
        })
    }

    pub(crate) fn backend_addr(&self) -> SocketAddr {
        self.backend
            .local_addr()
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

/// Where the self-test's client runs.
#[derive(Clone, Debug)]
pub(crate) enum ProbeVia {
    /// In the daemon (the userspace mode: its listeners serve every process).
    Daemon,
    /// In a short-lived child (`svcplane self-test-probe`) moved into this cgroup v2
    /// directory first: the eBPF mode's programs only see sockets of processes in the
    /// cgroup they are attached to (or below it), which the daemon need not be.
    Cgroup(std::path::PathBuf),
}

/// What the last self-tests found.
#[derive(Debug)]
struct ProbeState {
    frontend: SocketAddr,
    mode: &'static str,
    started: Instant,
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// Health as the admin endpoint reports it. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Health {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    settled: watch::Receiver<u64>,
    probe: Option<Arc<Mutex<ProbeState>>>,
}

impl Health {
    /// `snapshots`: what the watcher published; `settled`: the version DNS and the data
    /// plane answer.
    pub(crate) fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        settled: watch::Receiver<u64>,
    ) -> Self {
        Self {
            snapshots,
            settled,
            probe: None,
        }
    }

    /// Starts the self-test through `mode`'s data plane: serves the probe backend and
    /// probes the frontend every [`PROBE_INTERVAL`] until `cancel`.
    pub(crate) fn start_probe(
        &mut self,
        ends: ProbeEnds,
        mode: &'static str,
        via: ProbeVia,
        cancel: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let token = format!(
            "svcplane self-test {:016x}\n",
            RandomState::new().hash_one(std::process::id())
        );
        let state = Arc::new(Mutex::new(ProbeState {
            frontend: ends.frontend,
            mode,
            started: Instant::now(),
            last_ok: None,
            last_error: None,
        }));
        self.probe = Some(Arc::clone(&state));
        let backend = tokio::spawn(serve_backend(ends.backend, token.clone(), cancel.clone()));
        let prober = tokio::spawn(probe_loop(
            ends.frontend,
            token,
            via,
            state,
            self.settled.clone(),
            cancel.clone(),
        ));
        vec![backend, prober]
    }

    /// The version DNS and the data plane answer.
    pub(crate) fn settled(&self) -> u64 {
        *self.settled.borrow()
    }

    /// `/readyz`: (ready, body).
    pub(crate) fn ready(&self) -> (bool, String) {
        let settled = *self.settled.borrow();
        if settled > 0 {
            (true, format!("ready: snapshot version {settled}\n"))
        } else {
            let published = self.snapshots.borrow().version;
            let why = if published == 0 {
                "no snapshot loaded yet".to_owned()
            } else {
                format!("snapshot version {published} is loaded but not programmed yet")
            };
            (false, format!("not ready: {why}\n"))
        }
    }

    /// `/healthz`: (healthy, body).
    pub(crate) fn healthy(&self) -> (bool, String) {
        let now = Instant::now();
        let mut ok = true;
        let mut lines = Vec::new();
        let snap = self.snapshots.borrow().clone();
        let settled = *self.settled.borrow();
        if snap.version <= settled {
            lines.push(format!("snapshot version {settled} programmed"));
        } else {
            let waiting = snap.changed_at.map(|t| now.saturating_duration_since(t));
            let late = waiting.is_none_or(|w| w >= PROGRAMMING_GRACE);
            ok &= !late;
            lines.push(format!(
                "snapshot version {} {} for {} (programmed: {settled})",
                snap.version,
                if late {
                    "NOT PROGRAMMED"
                } else {
                    "being programmed"
                },
                waiting.map_or("?".to_owned(), secs),
            ));
        }
        match &self.probe {
            None => lines.push("no data plane (mode none): no self-test".to_owned()),
            Some(state) => {
                let st = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let fresh = st
                    .last_ok
                    .is_some_and(|t| now.saturating_duration_since(t) < PROBE_WINDOW);
                ok &= fresh;
                let last = st.last_ok.map_or_else(
                    || format!("never (running for {})", secs(now - st.started)),
                    |t| format!("{} ago", secs(now.saturating_duration_since(t))),
                );
                if fresh {
                    lines.push(format!(
                        "self-test through the {} data plane ({}) passed {last}",
                        st.mode, st.frontend
                    ));
                } else {
                    lines.push(format!(
                        "SELF-TEST FAILING through the {} data plane ({}): {}; last success {last}",
                        st.mode,
                        st.frontend,
                        st.last_error.as_deref().unwrap_or("no probe has run yet"),
                    ));
                }
            }
        }
        let head = if ok { "ok" } else { "unhealthy" };
        (ok, format!("{head}: {}\n", lines.join("; ")))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The probe's endpoint: writes the token and closes.
async fn serve_backend(listener: TcpListener, token: String, cancel: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            () = cancel.cancelled() => return,
            res = listener.accept() => match res {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "self-test backend accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let token = token.clone();
        tokio::spawn(async move {
            let _ = stream.write_all(token.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn probe_loop(
    frontend: SocketAddr,
    token: String,
    via: ProbeVia,
    state: Arc<Mutex<ProbeState>>,
    mut settled: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    // The frontend exists once the first snapshot is programmed.
    tokio::select! {
        () = cancel.cancelled() => return,
        res = settled.wait_for(|&v| v > 0) => if res.is_err() { return },
    }
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let once = async {
            match &via {
                ProbeVia::Daemon => probe_once(frontend, &token).await,
                ProbeVia::Cgroup(cg) => probe_in_cgroup(cg, frontend, &token).await,
            }
        };
        let res = match tokio::time::timeout(PROBE_TIMEOUT, once).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}", secs(PROBE_TIMEOUT))),
        };
        let mut st = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match res {
            Ok(()) => {
                st.last_ok = Some(Instant::now());
                if failing {
                    tracing::info!(frontend = %frontend, "self-test passes again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(frontend = %frontend, error = %e, "self-test failed");
                }
                failing = true;
                st.last_error = Some(e);
            }
        }
    }
}

/// [`probe_once`] from a child process placed in `cgroup` (killed if the probe times out).
async fn probe_in_cgroup(
    cgroup: &std::path::Path,
    frontend: SocketAddr,
    token: &str,
) -> Result<(), String> {
    use std::process::Stdio;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find svcplane's binary: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("self-test-probe")
        .arg(frontend.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the self-test client: {e}"))?;
    let pid = child.id().ok_or("the self-test client exited at once")?;
    let procs = cgroup.join("cgroup.procs");
    tokio::fs::write(&procs, pid.to_string())
        .await
        .map_err(|e| {
            format!(
                "cannot move the self-test client into {}: {e}",
                procs.display()
            )
        })?;
    // The client connects once it reads this line, that is, from inside the cgroup.
    let mut stdin = child
        .stdin
        .take()
        .ok_or("no stdin to the self-test client")?;
    stdin
        .write_all(b"go\n")
        .await
        .map_err(|e| format!("self-test client: {e}"))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("self-test client: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    check_token(frontend, &out.stdout, token)
}

/// `svcplane self-test-probe FRONTEND`: waits for a line on stdin (the daemon moves it into
/// the cgroup meanwhile), connects, copies what the frontend sends to stdout.
pub(crate) fn probe_main(args: crate::cli::SelfTestProbeArgs) -> std::process::ExitCode {
    use std::io::{BufRead as _, Read as _, Write as _};
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return std::process::ExitCode::FAILURE;
    }
    let run = || -> Result<Vec<u8>, String> {
        let mut s = std::net::TcpStream::connect_timeout(&args.frontend, PROBE_TIMEOUT)
            .map_err(|e| format!("connect to {}: {e}", args.frontend))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .map_err(|e| format!("read from {}: {e}", args.frontend))?;
        Ok(got)
    };
    match run() {
        Ok(got) => {
            let _ = std::io::stdout().write_all(&got);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One connection through the data plane; Ok when the backend's token comes back whole.
async fn probe_once(frontend: SocketAddr, token: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(frontend)
        .await
        .map_err(|e| format!("connect to {frontend}: {e}"))?;
    let mut got = Vec::with_capacity(token.len());
    s.read_to_end(&mut got)
        .await
        .map_err(|e| format!("read from {frontend}: {e}"))?;
    check_token(frontend, &got, token)
}

fn check_token(frontend: SocketAddr, got: &[u8], token: &str) -> Result<(), String> {
    if got == token.as_bytes() {
        Ok(())
    } else if got.is_empty() {
        Err(format!(
            "{frontend} closed without answering (no endpoint reached)"
        ))
    } else {
        Err(format!(
            "{frontend} answered {:?}, not this daemon's token (another process on the probe address?)",
            String::from_utf8_lossy(got)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(version: u64, age: Duration) -> Arc<Snapshot> {
        let mut s = Snapshot::default();
        s.version = version;
        s.changed_at = Instant::now().checked_sub(age);
        Arc::new(s)
    }

    #[test]
    fn ready_after_the_first_sync() {
        let (snap_tx, snaps) = watch::channel(snap(0, Duration::ZERO));
        let (settled_tx, settled) = watch::channel(0);
        let h = Health::new(snaps, settled);
        assert_eq!(
            h.ready(),
            (false, "not ready: no snapshot loaded yet\n".into())
        );
        snap_tx.send_replace(snap(1, Duration::ZERO));
        assert!(!h.ready().0);
        assert!(
            h.ready()
                .1
                .contains("version 1 is loaded but not programmed")
        );
        settled_tx.send_replace(1);
        assert_eq!(h.ready(), (true, "ready: snapshot version 1\n".into()));
    }

    #[test]
    fn a_snapshot_left_unprogrammed_past_the_grace_is_unhealthy() {
        let (snap_tx, snaps) = watch::channel(snap(2, Duration::ZERO));
        let (_settled_tx, settled) = watch::channel(1);
        let h = Health::new(snaps, settled);
        let (ok, body) = h.healthy();
        assert!(ok, "{body}");
        assert!(body.contains("version 2 being programmed"), "{body}");
        snap_tx.send_replace(snap(2, PROGRAMMING_GRACE + Duration::from_secs(1)));
        let (ok, body) = h.healthy();
        assert!(!ok, "{body}");
        assert!(
            body.starts_with("unhealthy: snapshot version 2 NOT PROGRAMMED"),
            "{body}"
        );
        assert!(body.contains("(programmed: 1)"), "{body}");
    }

    /// The self-test against a frontend that is the backend itself (no data plane in
    /// between): passes; then against a port nothing serves: fails, saying why.
    #[tokio::test]
    async fn self_test_passes_when_the_token_comes_back_and_fails_otherwise() {
        let (_snap_tx, snaps) = watch::channel(snap(1, Duration::ZERO));
        let (_settled_tx, settled) = watch::channel(1);
        let mut h = Health::new(snaps.clone(), settled.clone());
        let cancel = CancellationToken::new();
        let ends = ProbeEnds::bind().await.unwrap();
        let ends = ProbeEnds {
            frontend: ends.backend_addr(),
            backend: ends.backend,
        };
        let tasks = h.start_probe(ends, "test", ProbeVia::Daemon, &cancel);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !h.healthy().0 {
            assert!(Instant::now() < deadline, "{}", h.healthy().1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            h.healthy()
                .1
                .contains("self-test through the test data plane")
        );
        cancel.cancel();
        for t in tasks {
            t.await.unwrap();
        }

        let mut h = Health::new(snaps, settled);
        let cancel = CancellationToken::new();
        let ends = ProbeEnds::bind().await.unwrap();
        let tasks = h.start_probe(ends, "test", ProbeVia::Daemon, &cancel);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (ok, body) = h.healthy();
            assert!(!ok, "nothing serves the frontend: {body}");
            if body.contains("connect to 127.127.0.1") {
                assert!(body.contains("last success never"), "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "{body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
