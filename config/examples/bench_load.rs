//! Manifest load benchmark: generates a realistic manifest tree (one Service + one
//! EndpointSlice per service, `kubectl get -o yaml` style), then measures
//! - the cold load (`Loader::reload`) with its list+parse / build split,
//! - a one-file change through the `Loader` alone (parse vs build),
//! - a one-file change end to end: atomic rename -> `ManifestWatcher` publishes the new
//!   snapshot version (median / p90 / max over `--reps`),
//! - peak resident memory (`VmHWM`).
//!
//! Run (see bench/README.md):
//! `cargo run --release -p svcplane-config --example bench_load -- --services 10000 --endpoints 10 --files 1000`
//!
//! A benchmark, not a test: it prints figures next to the goals and exits 0 unless the
//! load itself is wrong (errors in the generated manifests, a change never published).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::{Deserialize, Serialize};
use svcplane_config::{Loader, ManifestWatcher, ParseOptions, ServiceKey, Snapshot};
use tokio::sync::watch;

const USAGE: &str = "\
usage: bench_load [--services N] [--endpoints N] [--files N] [--reps N] [--quiet-ms MS]
                  [--dir DIR] [--json FILE]
  --services N   Services to generate (default 10000)
  --endpoints N  endpoints per Service, in one EndpointSlice (default 10)
  --files N      files to spread them over (default 1000)
  --reps N       one-file changes to time (default 20)
  --quiet-ms MS  the watcher's quiet period, as the daemon sets it (default 10)
  --dir DIR      generate into DIR (kept) instead of a temporary directory
  --json FILE    also write the figures as JSON
  --phase P      internal: run only phase `loader` or `watch` on an existing --dir";

const GOAL_COLD: Duration = Duration::from_secs(2);
const GOAL_CHANGE: Duration = Duration::from_millis(50);
const GOAL_RSS_MB: f64 = 200.0;
/// How long one change may take before the run is declared broken.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Args {
    services: usize,
    endpoints: usize,
    files: usize,
    reps: usize,
    quiet: Duration,
    dir: Option<PathBuf>,
    json: Option<PathBuf>,
    /// `all` (generate, then run the other two in child processes), `loader` or `watch`.
    phase: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        services: 10_000,
        endpoints: 10,
        files: 1000,
        reps: 20,
        quiet: Duration::from_millis(10),
        dir: None,
        json: None,
        phase: "all".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = || -> anyhow::Result<usize> {
            value
                .parse()
                .with_context(|| format!("{flag}: {value:?} is not a number"))
        };
        match flag.as_str() {
            "--services" => a.services = num()?,
            "--endpoints" => a.endpoints = num()?,
            "--files" => a.files = num()?,
            "--reps" => a.reps = num()?,
            "--quiet-ms" => a.quiet = Duration::from_millis(num()? as u64),
            "--dir" => a.dir = Some(PathBuf::from(&value)),
            "--json" => a.json = Some(PathBuf::from(&value)),
            "--phase" => a.phase = value,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    ensure!(
        a.services > 0 && a.files > 0,
        "--services and --files must be > 0"
    );
    ensure!(
        a.endpoints <= 1000,
        "--endpoints above 1000 do not fit one EndpointSlice"
    );
    a.files = a.files.min(a.services);
    Ok(a)
}

// === generator ===

/// Which services file `f` holds: a contiguous range, so every file has about the same size.
fn services_of(a: &Args, f: usize) -> std::ops::Range<usize> {
    let lo = f * a.services / a.files;
    let hi = (f + 1) * a.services / a.files;
    lo..hi
}

fn file_name(f: usize) -> String {
    format!("team-{:02}/services-{f:05}.yaml", f % 16)
}

fn namespace(i: usize) -> String {
    format!("ns-{:03}", i % 97)
}

fn ip(base: Ipv4Addr, offset: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(offset as u32))
}

/// A deterministic fake UID, so reruns produce identical files.
fn uid(kind: u32, i: usize) -> String {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(kind);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        (x >> 12) & 0xfff,
        x & 0xffff_ffff_ffff
    )
}

/// The address of endpoint `j` of service `i`; with `moved: Some(rev)`, endpoint 0 moves to
/// an address of a range the generator never uses otherwise, distinct per revision.
fn endpoint_ip(a: &Args, i: usize, j: usize, moved: Option<usize>) -> Ipv4Addr {
    match moved {
        Some(rev) if j == 0 => ip(Ipv4Addr::new(10, 250, 0, 0), rev),
        _ => ip(Ipv4Addr::new(10, 244, 0, 1), i * a.endpoints + j),
    }
}

fn write_service(out: &mut String, i: usize) {
    let ns = namespace(i);
    let cluster_ip = ip(Ipv4Addr::new(10, 96, 0, 10), i);
    // Every tenth service is a NodePort one, as long as the default range has room.
    let node_ports =
        (i.is_multiple_of(10) && 2 * (i / 10) + 1 < 2768).then(|| 30000 + 2 * (i / 10));
    let type_ = if node_ports.is_some() {
        "NodePort"
    } else {
        "ClusterIP"
    };
    let _ = write!(
        out,
        "---
apiVersion: v1
kind: Service
metadata:
  name: svc-{i:05}
  namespace: {ns}
  uid: {uid}
  resourceVersion: \"{rv}\"
  creationTimestamp: \"2024-01-01T00:00:00Z\"
  labels:
    app.kubernetes.io/name: svc-{i:05}
    app.kubernetes.io/part-of: bench
  annotations:
    bench.svcplane.dev/owner: team-{team:02}
spec:
  type: {type_}
  clusterIP: {cluster_ip}
  clusterIPs:
  - {cluster_ip}
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  internalTrafficPolicy: Cluster
  sessionAffinity: None
  selector:
    app.kubernetes.io/name: svc-{i:05}
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: http
",
        uid = uid(1, i),
        rv = 100_000 + i,
        team = i % 16,
    );
    if let Some(np) = node_ports {
        let _ = writeln!(out, "    nodePort: {np}");
    }
    let _ = write!(
        out,
        "  - name: grpc
    port: 9090
    protocol: TCP
    targetPort: grpc
"
    );
    if let Some(np) = node_ports {
        let _ = writeln!(out, "    nodePort: {}", np + 1);
        let _ = writeln!(out, "  externalTrafficPolicy: Cluster");
    }
    out.push_str("status:\n  loadBalancer: {}\n");
}

fn write_slice(out: &mut String, a: &Args, i: usize, moved: Option<usize>) {
    let ns = namespace(i);
    let _ = write!(
        out,
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{i:05}-{suffix}
  generateName: svc-{i:05}-
  namespace: {ns}
  uid: {uid}
  resourceVersion: \"{rv}\"
  creationTimestamp: \"2024-01-01T00:00:00Z\"
  generation: 3
  labels:
    kubernetes.io/service-name: svc-{i:05}
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    app.kubernetes.io/name: svc-{i:05}
  ownerReferences:
  - apiVersion: v1
    kind: Service
    name: svc-{i:05}
    uid: {svc_uid}
    controller: true
    blockOwnerDeletion: true
addressType: IPv4
endpoints:
",
        suffix = &uid(3, i)[..5],
        uid = uid(2, i),
        svc_uid = uid(1, i),
        rv = 200_000 + i,
    );
    for j in 0..a.endpoints {
        // One endpoint in ten is terminating (still serving), as during a rollout.
        let terminating = (i + j) % 10 == 9;
        let _ = write!(
            out,
            "- addresses:
  - {addr}
  conditions:
    ready: {ready}
    serving: true
    terminating: {terminating}
  nodeName: node-{node:03}
  zone: zone-{zone}
  targetRef:
    kind: Pod
    namespace: {ns}
    name: svc-{i:05}-7d9f8b6c5-{pod}
    uid: {pod_uid}
",
            addr = endpoint_ip(a, i, j, moved),
            ready = !terminating,
            node = (i * 7 + j) % 200,
            zone = ["a", "b", "c"][j % 3],
            pod = &uid(4, i * 1000 + j)[..5],
            pod_uid = uid(5, i * 1000 + j),
        );
    }
    out.push_str(
        "ports:
- name: http
  port: 8080
  protocol: TCP
- name: grpc
  port: 9090
  protocol: TCP
",
    );
}

/// The text of file `f`. `revision` > 0 changes one endpoint address of its first service.
fn file_text(a: &Args, f: usize, revision: usize) -> String {
    let range = services_of(a, f);
    let first = range.start;
    let mut out = String::with_capacity(range.len() * (1200 + 600 * a.endpoints));
    for i in range {
        write_service(&mut out, i);
        let moved = (i == first && revision > 0).then_some(revision);
        write_slice(&mut out, a, i, moved);
    }
    out
}

/// Writes `text` to `root/name` the way editors and `kubectl` tools do: a hidden temporary
/// file in the same directory, then `rename(2)` over the target.
fn write_atomic(root: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = root.join(name);
    let dir = path.parent().context("file has no parent")?;
    let file = path.file_name().context("file has no name")?;
    let tmp = dir.join(format!(".{}.tmp", file.to_string_lossy()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(())
}

/// Writes the whole tree; returns its size in bytes.
fn generate(a: &Args, root: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for f in 0..a.files {
        let path = root.join(file_name(f));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = file_text(a, f, 0);
        bytes += text.len() as u64;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(bytes)
}

// === measurements ===

fn proc_status_mb(field: &str) -> f64 {
    let kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
    kb.map_or(f64::NAN, |kb| kb as f64 / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// One one-file change applied by `Loader::reload` alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LoaderChange {
    total_ms: f64,
    parse_ms: f64,
    build_ms: f64,
}

/// Cold load and one-file changes through the `Loader` alone (no watcher, no runtime).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LoaderPhase {
    cold_ms: f64,
    /// List + read + parse (`ReloadStats::parse_time`).
    cold_parse_ms: f64,
    /// `ReloadStats::build_time`.
    cold_build_ms: f64,
    services: usize,
    endpoints: usize,
    rss_after_cold_mb: f64,
    changes: Vec<LoaderChange>,
    peak_rss_mb: f64,
}

/// The daemon's path: `ManifestWatcher` start (cold load), then one-file changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WatchPhase {
    first_load_ms: f64,
    /// Atomic rename -> new snapshot version received on the watch channel.
    change_ms: Vec<f64>,
    peak_rss_mb: f64,
    rss_end_mb: f64,
}

/// The file changed by repetition `rep` (spread over the tree).
fn changed_file(a: &Args, rep: usize) -> usize {
    (rep * 7919 + 13) % a.files
}

/// Whether `snap` shows revision `rev` of file `f`.
fn shows_revision(a: &Args, snap: &Snapshot, f: usize, rev: usize) -> bool {
    let i = services_of(a, f).start;
    let key = ServiceKey::new(namespace(i), format!("svc-{i:05}"));
    let want = std::net::IpAddr::V4(endpoint_ip(a, i, 0, Some(rev)));
    snap.service(&key)
        .is_some_and(|s| s.endpoints.iter().any(|e| e.ip == want))
}

fn loader_phase(a: &Args, root: &Path) -> anyhow::Result<LoaderPhase> {
    let mut out = LoaderPhase::default();
    let mut loader = Loader::new(root, ParseOptions::default());
    let started = Instant::now();
    let (snap, stats) = loader.reload()?;
    out.cold_ms = ms(started.elapsed());
    out.cold_parse_ms = ms(stats.parse_time);
    out.cold_build_ms = ms(stats.build_time);
    let snap = snap.context("the cold load published no snapshot")?;
    out.services = snap.services().len();
    out.endpoints = snap.endpoint_count();
    out.rss_after_cold_mb = proc_status_mb("VmRSS:");
    let errors = &snap.diagnostics.errors;
    if !errors.is_empty() {
        for e in errors.iter().take(5) {
            eprintln!("error: {e}");
        }
        bail!("the generated manifests have {} errors", errors.len());
    }
    ensure!(
        out.services == a.services && out.endpoints == a.services * a.endpoints,
        "loaded {} services / {} endpoints, expected {} / {}",
        out.services,
        out.endpoints,
        a.services,
        a.services * a.endpoints
    );
    drop(snap);
    for rep in 0..a.reps {
        let f = changed_file(a, rep);
        write_atomic(root, &file_name(f), &file_text(a, f, rep + 1))?;
        let started = Instant::now();
        let (snap, stats) = loader.reload()?;
        let total = started.elapsed();
        let snap = snap.context("a one-file change published no snapshot")?;
        ensure!(
            stats.parsed == 1,
            "a one-file change parsed {} files",
            stats.parsed
        );
        ensure!(
            shows_revision(a, &snap, f, rep + 1),
            "the change is not visible"
        );
        out.changes.push(LoaderChange {
            total_ms: ms(total),
            parse_ms: ms(stats.parse_time),
            build_ms: ms(stats.build_time),
        });
    }
    for rep in 0..a.reps {
        let f = changed_file(a, rep);
        write_atomic(root, &file_name(f), &file_text(a, f, 0))?;
    }
    out.peak_rss_mb = proc_status_mb("VmHWM:");
    Ok(out)
}

/// Waits until the watcher publishes a snapshot satisfying `done`; returns when it did.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
    loop {
        if done(&rx.borrow_and_update()) {
            return Ok(Instant::now());
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .with_context(|| format!("timed out waiting for {what}"))?
            .context("the watcher stopped")?;
    }
}

async fn watch_phase(a: &Args, root: &Path) -> anyhow::Result<WatchPhase> {
    let mut out = WatchPhase::default();
    let started = Instant::now();
    let watcher = ManifestWatcher::start(Loader::new(root, ParseOptions::default()), a.quiet)?;
    let mut rx = watcher.subscribe();
    let loaded = wait_for(&mut rx, "the first load", |s| s.version > 0).await?;
    out.first_load_ms = ms(loaded - started);
    let base = a.reps + 1;
    for rep in 0..a.reps {
        let f = changed_file(a, rep);
        let rev = base + rep;
        let text = file_text(a, f, rev);
        let before = rx.borrow().version;
        let started = Instant::now();
        write_atomic(root, &file_name(f), &text)?;
        let seen = wait_for(&mut rx, "a one-file change", |s| {
            shows_revision(a, s, f, rev)
        })
        .await?;
        out.change_ms.push(ms(seen - started));
        let after = rx.borrow().version;
        ensure!(
            after == before + 1,
            "one change published {} versions",
            after - before
        );
    }
    watcher.stop().await;
    for rep in 0..a.reps {
        let f = changed_file(a, rep);
        write_atomic(root, &file_name(f), &file_text(a, f, 0))?;
    }
    out.peak_rss_mb = proc_status_mb("VmHWM:");
    out.rss_end_mb = proc_status_mb("VmRSS:");
    Ok(out)
}

// === phases in their own processes ===

const RESULT_PREFIX: &str = "bench-result: ";

/// Runs one phase in a fresh process of this program, so its memory figures are its own.
fn run_phase<T: serde::de::DeserializeOwned>(
    a: &Args,
    phase: &str,
    root: &Path,
) -> anyhow::Result<T> {
    let exe = std::env::current_exe()?;
    let output = std::process::Command::new(exe)
        .args(["--phase", phase])
        .arg("--dir")
        .arg(root)
        .args(["--services", &a.services.to_string()])
        .args(["--endpoints", &a.endpoints.to_string()])
        .args(["--files", &a.files.to_string()])
        .args(["--reps", &a.reps.to_string()])
        .args(["--quiet-ms", &a.quiet.as_millis().to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    ensure!(
        output.status.success(),
        "phase {phase} failed: {}",
        output.status
    );
    let stdout = String::from_utf8(output.stdout)?;
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .with_context(|| format!("phase {phase} printed no result"))?;
    Ok(serde_json::from_str(line)?)
}

// === report ===

fn verdict(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

fn report(a: &Args, yaml_bytes: u64, l: &LoaderPhase, w: &WatchPhase) {
    let change = sorted(w.change_ms.clone());
    let (median, p90, max) = (
        percentile(&change, 50.0),
        percentile(&change, 90.0),
        percentile(&change, 100.0),
    );
    let col =
        |f: fn(&LoaderChange) -> f64| percentile(&sorted(l.changes.iter().map(f).collect()), 50.0);
    let goal_change = ms(GOAL_CHANGE);
    let rss = l.peak_rss_mb.max(w.peak_rss_mb);
    println!();
    println!(
        "svcplane-config load benchmark: {} services x {} endpoints = {} endpoints in {} files \
         ({:.1} MB of YAML); {} cores; watcher quiet period {} ms",
        a.services,
        a.endpoints,
        l.endpoints,
        a.files,
        yaml_bytes as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        a.quiet.as_millis(),
    );
    println!();
    println!("| measure | figure | goal | met |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| cold load, `Loader::reload` | {:.0} ms | < {} ms | {} |",
        l.cold_ms,
        GOAL_COLD.as_millis(),
        verdict(l.cold_ms < ms(GOAL_COLD))
    );
    println!(
        "| &nbsp; list + read + parse | {:.0} ms | | |",
        l.cold_parse_ms
    );
    println!("| &nbsp; build snapshot | {:.0} ms | | |", l.cold_build_ms);
    println!(
        "| one-file change: rename -> new version received, median / p90 / max of {} | {:.1} / {:.1} / {:.1} ms | < {goal_change} ms | {} |",
        change.len(),
        median,
        p90,
        max,
        verdict(max < goal_change)
    );
    println!(
        "| &nbsp; `Loader::reload` alone, median: total / list + parse / build | {:.1} / {:.1} / {:.1} ms | | |",
        col(|c| c.total_ms),
        col(|c| c.parse_ms),
        col(|c| c.build_ms),
    );
    println!(
        "| peak RSS (VmHWM), max of the two phases | {rss:.0} MB | < {GOAL_RSS_MB} MB | {} |",
        verdict(rss < GOAL_RSS_MB)
    );
    println!(
        "| &nbsp; loader phase: after the cold load / peak | {:.0} / {:.0} MB | | |",
        l.rss_after_cold_mb, l.peak_rss_mb
    );
    println!(
        "| &nbsp; watcher phase: end / peak | {:.0} / {:.0} MB | | |",
        w.rss_end_mb, w.peak_rss_mb
    );
    println!(
        "| first load under the watcher (start -> version 1 received) | {:.0} ms | | |",
        w.first_load_ms
    );
    println!();
}

fn write_json(
    path: &Path,
    a: &Args,
    yaml_bytes: u64,
    l: &LoaderPhase,
    w: &WatchPhase,
) -> anyhow::Result<()> {
    let v = serde_json::json!({
        "services": a.services,
        "endpoints_per_service": a.endpoints,
        "files": a.files,
        "quiet_ms": a.quiet.as_millis() as u64,
        "yaml_bytes": yaml_bytes,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "loader": l,
        "watch": w,
        "goals": {"cold_load_ms": ms(GOAL_COLD), "change_ms": ms(GOAL_CHANGE), "rss_mb": GOAL_RSS_MB},
    });
    std::fs::write(path, serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn print_result(v: &impl Serialize) -> anyhow::Result<()> {
    println!("{RESULT_PREFIX}{}", serde_json::to_string(v)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    match a.phase.as_str() {
        "loader" => {
            let root = a.dir.clone().context("--phase needs --dir")?;
            return print_result(&loader_phase(&a, &root)?);
        }
        "watch" => {
            let root = a.dir.clone().context("--phase needs --dir")?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return print_result(&rt.block_on(watch_phase(&a, &root))?);
        }
        "all" => {}
        other => bail!("unknown phase {other:?}: all, loader or watch"),
    }
    let tmp;
    let root = match &a.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("svcplane-bench-")
                .tempdir()?;
            tmp.path().to_owned()
        }
    };
    eprintln!(
        "generating {} services into {} ...",
        a.services,
        root.display()
    );
    let yaml_bytes = generate(&a, &root)?;
    eprintln!("phase 1: cold load and one-file changes through Loader::reload ...");
    let l: LoaderPhase = run_phase(&a, "loader", &root)?;
    eprintln!("phase 2: ManifestWatcher start and one-file changes ...");
    let w: WatchPhase = run_phase(&a, "watch", &root)?;
    report(&a, yaml_bytes, &l, &w);
    if let Some(path) = &a.json {
        write_json(path, &a, yaml_bytes, &l, &w)?;
    }
    Ok(())
}
