//! Integration tests of the `svcplane` binary: real processes, real sockets on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_svcplane");

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn svcplane(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run svcplane")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// === check ===

#[test]
fn check_examples_passes_with_a_summary() {
    let out = svcplane(&["check", repo("examples").to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "OK: 4 files, 4 services (1 headless, 1 ExternalName), 4 ports, 7 endpoints, 0 warnings"
    );
}

#[test]
fn check_wide_lists_every_service() {
    let out = svcplane(&["check", repo("examples").to_str().unwrap(), "-o", "wide"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["NAMESPACE", "NAME", "TYPE"]);
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.get(1) == Some(&name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{stdout}"))
            .clone()
    };
    assert_eq!(
        row("web"),
        [
            "demo",
            "web",
            "ClusterIP",
            "10.96.0.10",
            "<none>",
            "80->http/TCP",
            "3",
            "(2",
            "ready)",
            "EndpointSlices"
        ]
    );
    assert_eq!(row("api")[5], "8080:30080/TCP,8125:30080/UDP");
    assert_eq!(row("db")[3], "None");
    assert_eq!(row("db")[9], "Pods");
    assert_eq!(row("payments")[4], "payments.example.com");
}

#[test]
fn check_lists_every_error_and_fails() {
    let dir = repo("tests/fixtures/bad");
    let out = svcplane(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let expect = [
        ("broken.yaml:3", "not valid YAML"),
        (
            "services.yaml:2: document 0: Service shop/bad-port: spec.ports[0].port",
            "70000",
        ),
        (
            "document 1: Service default/Bad_Name: metadata.name",
            "DNS label",
        ),
        (
            "document 2: Service default/bad-external: spec.externalName",
            "not a valid DNS name",
        ),
        (
            "slices.yaml:1: document 0: EndpointSlice shop/good-x1: ports[0].protocol",
            "QUIC",
        ),
        (
            "endpoints[0].addresses[0]",
            "does not match the slice's addressType IPv4",
        ),
    ];
    assert_eq!(errors.len(), expect.len(), "{stderr}");
    for (place, why) in expect {
        assert!(
            errors.iter().any(|e| e.contains(place) && e.contains(why)),
            "no error with {place:?} and {why:?} in:\n{stderr}"
        );
    }
    // The good Service in the same file still loads.
    assert!(text(&out.stdout).starts_with("FAILED (6 errors): 3 files, 1 services"));
}

#[test]
fn check_accepts_files_and_merges_paths() {
    let a = repo("examples/web.yaml");
    let b = repo("examples/external.yaml");
    let out = svcplane(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 files, 2 services"));
}

#[test]
fn check_reports_the_same_service_in_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let svc =
        "apiVersion: v1\nkind: Service\nmetadata: {name: twin}\nspec:\n  ports: [{port: 80}]\n";
    std::fs::write(dir.path().join("a.yaml"), svc).unwrap();
    std::fs::write(dir.path().join("b.yaml"), svc).unwrap();
    let out = svcplane(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("b.yaml:1: document 0: Service default/twin")
            && stderr.contains("defined more than once")
            && stderr.contains("a.yaml:1"),
        "{stderr}"
    );
}

#[test]
fn check_missing_path_is_a_clear_error() {
    let out = svcplane(&["check", "/nonexistent/manifests"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/manifests"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["run", "--manifests", "x", "--mode", "ipvs"][..],
        &["run", "--manifests", "x", "--nodeport-range", "9-1"][..],
        &["check"][..],
    ] {
        let out = svcplane(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("error:"), "{args:?}");
    }
}

// === run ===

/// A running daemon; killed on drop so a failing test leaves nothing behind.
struct Daemon {
    child: Child,
    admin: SocketAddr,
    /// The daemon's "svcplane running" log line.
    started: serde_json::Value,
    logs: mpsc::Receiver<String>,
    /// Allocation state, removed with the daemon.
    _state: tempfile::TempDir,
}

impl Daemon {
    fn start(manifests: &Path, extra: &[&str]) -> Daemon {
        let state = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--manifests", manifests.to_str().unwrap()])
            .arg("--state-dir")
            .arg(state.path())
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json"])
            // These tests run in the host's network namespace: no routing here (the
            // userspace mode is tested in namespaces of its own, tests/userspace.rs).
            .args(["--mode", "none"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn svcplane run");
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child,
            admin: "0.0.0.0:0".parse().unwrap(),
            started: serde_json::Value::Null,
            logs,
            _state: state,
        };
        let line = d.wait_log("svcplane running");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        d.admin = v["admin"].as_str().unwrap().parse().unwrap();
        d.started = v;
        d
    }

    /// Waits for a log line containing `needle` (the daemon logs JSON lines).
    fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// Polls `path` until `pred` holds for its body (20 s at most).
    fn poll(&self, path: &str, pred: impl Fn(u16, &str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body) = self.get(path);
            if pred(code, &body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never matched; last: {code} {body}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}

fn copy_examples(dir: &Path) {
    for f in ["web.yaml", "db.yaml", "api-nodeport.yaml", "external.yaml"] {
        std::fs::copy(repo("examples").join(f), dir.join(f)).unwrap();
    }
}

fn service_names(snapshot_json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(snapshot_json).unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["key"]["namespace"].as_str().unwrap(),
                s["key"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn run_serves_admin_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    let d = Daemon::start(dir.path(), &[]);

    d.poll("/readyz", |c, _| c == 200);
    assert_eq!(d.get("/healthz").0, 200);
    let snap = d.get("/debug/snapshot").1;
    let mut names = service_names(&snap);
    names.sort();
    assert_eq!(names, ["demo/api", "demo/db", "demo/payments", "demo/web"]);
    let v: serde_json::Value = serde_json::from_str(&snap).unwrap();
    let web = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"]["name"] == "web")
        .unwrap();
    assert_eq!(web["cluster_ips"][0], "10.96.0.10");
    assert_eq!(web["endpoints"].as_array().unwrap().len(), 3);

    let metrics = d.get("/metrics").1;
    for line in [
        "svcplane_services 4",
        "svcplane_endpoints 7",
        "svcplane_config_errors 0",
        "svcplane_config_reloads_total 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }

    // Add a file: the Service appears.
    let extra = "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: demo}\nspec:\n  clusterIP: 10.96.0.99\n  ports: [{port: 81}]\n";
    std::fs::write(dir.path().join("late.yaml"), extra).unwrap();
    d.poll("/debug/snapshot", |_, b| {
        service_names(b).contains(&"demo/late".to_owned())
    });

    // Break it: the error is visible, counted, and the last good object stays.
    std::fs::write(dir.path().join("late.yaml"), "kind: Service\nmetadata: [\n").unwrap();
    let m = d.poll("/metrics", |_, b| {
        b.lines().any(|l| l == "svcplane_config_errors 1")
    });
    assert!(m.lines().any(|l| l == "svcplane_services 5"), "{m}");
    let snap = d.get("/debug/snapshot").1;
    assert!(
        snap.contains("late.yaml") && snap.contains("not valid YAML"),
        "{snap}"
    );

    // Remove it: gone, error cleared.
    std::fs::remove_file(dir.path().join("late.yaml")).unwrap();
    d.poll("/metrics", |_, b| {
        b.lines().any(|l| l == "svcplane_services 4")
            && b.lines().any(|l| l == "svcplane_config_errors 0")
    });

    assert_eq!(d.get("/nope").0, 404);
    let status = d.terminate();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn run_logs_changes_in_json() {
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    let mut d = Daemon::start(dir.path(), &[]);
    let line = d.wait_log("\"svc\":\"demo/web\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["message"], "service added");
    assert_eq!(v["endpoints"], 3);
    assert_eq!(v["ready"], 2);
    d.wait_log("snapshot published");
    std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
    let line = d.wait_log("service removed");
    assert!(line.contains("demo/web"), "{line}");
    assert!(d.terminate().success());
}

#[test]
fn run_refuses_a_missing_manifest_dir() {
    let out = svcplane(&[
        "run",
        "--manifests",
        "/nonexistent/dir",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--manifests /nonexistent/dir"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_config_file_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("svcplane.yaml");
    let cfg_s = cfg.to_str().unwrap();
    let out = svcplane(&["run", "--config", cfg_s]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing file is a usage error"
    );
    assert!(
        text(&out.stderr).contains(&format!("--config {cfg_s}: cannot read")),
        "{}",
        text(&out.stderr)
    );
    for (file, want) in [
        (
            "manifests: /m
dns-tll: 5
",
            "unknown key `dns-tll`",
        ),
        (
            "manifests: /m
nodeport-range: 5-1
",
            "key `nodeport-range`",
        ),
        (
            "manifests: /m
mode: ebpf-ish
",
            "key `mode`",
        ),
    ] {
        std::fs::write(&cfg, file).unwrap();
        let out = svcplane(&["run", "--config", cfg_s]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file:?}: {err}");
        assert!(
            err.contains(&format!("--config {cfg_s}: {want}")),
            "{file:?}: {err}"
        );
    }
}

#[test]
fn run_takes_flags_from_a_config_file_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    let cfg = tempfile::NamedTempFile::new().unwrap();
    // `mode` is overridden by the test daemon's `--mode none`; the rest is taken.
    std::fs::write(
        cfg.path(),
        "mode: userspace\ncluster-domain: corp.example\ndns-ttl: 42\n",
    )
    .unwrap();
    let d = Daemon::start(dir.path(), &["--config", cfg.path().to_str().unwrap()]);
    let v = &d.started;
    assert_eq!(v["mode"], "None", "{v}");
    let dns = v["dns"].as_str().unwrap().to_owned();
    d.poll("/readyz", |c, _| c == 200);
    let (ip, port) = dns.rsplit_once(':').unwrap();
    let out = Command::new("dig")
        .args([
            &format!("@{ip}"),
            "-p",
            port,
            "+noall",
            "+answer",
            "+tries=5",
        ])
        .arg("web.demo.svc.corp.example")
        .output()
        .expect("dig");
    let answer = text(&out.stdout);
    let fields: Vec<&str> = answer.split_whitespace().collect();
    assert_eq!(
        fields.get(..4),
        Some(&["web.demo.svc.corp.example.", "42", "IN", "A"][..]),
        "{answer}"
    );
    assert!(d.terminate().success());
}

#[test]
fn readyz_waits_for_the_first_snapshot_even_when_empty() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let body = d.poll("/readyz", |c, _| c == 200);
    assert!(body.contains("snapshot version 1"), "{body}");
    assert!(d.terminate().success());
}

#[test]
fn check_wide_shows_allocated_addresses_and_node_ports() {
    let dir = tempfile::tempdir().unwrap();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: shop, namespace: apps}\n\
               spec:\n  type: NodePort\n  ports: [{name: http, port: 80}]\n";
    std::fs::write(dir.path().join("shop.yaml"), svc).unwrap();
    let out = svcplane(&[
        "check",
        dir.path().to_str().unwrap(),
        "-o",
        "wide",
        "--service-cidr",
        "10.200.0.0/24",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.contains("shop"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[3], "10.200.0.2", "{stdout}");
    assert_eq!(row[5], "80:30000/TCP", "{stdout}");
}

#[test]
fn status_reads_the_admin_endpoint_and_explains_failures() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    d.poll("/readyz", |c, _| c == 200);
    let admin = d.admin.to_string();
    let out = svcplane(&["status", "--admin", &admin, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "none");
    assert_eq!(v["frontends"], serde_json::json!([]));
    let out = svcplane(&["status", "--admin", &admin]);
    assert!(
        text(&out.stdout).contains("no frontends"),
        "{}",
        text(&out.stdout)
    );
    drop(d);

    // Nothing listening: exit 1, naming the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = svcplane(&["status", "--admin", &addr]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&addr), "{}", text(&out.stderr));
}
