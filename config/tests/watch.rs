//! `ManifestWatcher`: file changes on disk -> new snapshots on the watch channel.
//!
//! Every wait polls the channel (`changed()`) against a generous deadline; no test sleeps
//! to synchronize. Each test works in its own temporary directory.

#![allow(
    clippy::expect_used,
    reason = "test helpers fail the test with context, like the tests themselves"
)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::tree::{self, service, slice, write, write_atomic};
use svcplane_config::{Loader, ManifestWatcher, ParseOptions, ServiceKey, Snapshot};
use tempfile::TempDir;
use tokio::sync::watch;

const QUIET: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(10);

// === helpers ===

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn tempdir() -> TempDir {
    tree::tempdir("svcplane-watch-")
}

fn port_of(snap: &Snapshot, name: &str) -> Option<u16> {
    snap.service(&key(name)).map(|s| s.def.ports[0].port)
}

fn names(snap: &Snapshot) -> Vec<String> {
    snap.services().keys().map(ToString::to_string).collect()
}

fn errors(snap: &Snapshot) -> Vec<String> {
    snap.diagnostics
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Follows the watch channel, checking that every new value has a higher version.
struct Probe {
    rx: watch::Receiver<Arc<Snapshot>>,
    last: u64,
}

impl Probe {
    fn new(watcher: &ManifestWatcher) -> Self {
        Self {
            rx: watcher.subscribe(),
            last: 0,
        }
    }

    /// Waits until the latest snapshot satisfies `done`, for at most `TIMEOUT`.
    async fn until(&mut self, what: &str, done: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let mut fresh = false;
        loop {
            let snap = self.rx.borrow_and_update().clone();
            if fresh {
                assert!(
                    snap.version > self.last,
                    "version {} published after {}",
                    snap.version,
                    self.last
                );
            }
            self.last = snap.version;
            if done(&snap) {
                return snap;
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => fresh = true,
                Ok(Err(_)) => panic!("the watcher stopped while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {TIMEOUT:?} waiting for {what}; last snapshot: version {}, \
                     services {:?}, errors {:#?}",
                    snap.version,
                    names(&snap),
                    errors(&snap)
                ),
            }
        }
    }

    /// The first load (version 1 or later).
    async fn loaded(&mut self) -> Arc<Snapshot> {
        self.until("the first load", |s| s.version > 0).await
    }
}

fn start(root: &Path) -> (ManifestWatcher, Probe) {
    let watcher = ManifestWatcher::start(Loader::new(root, ParseOptions::default()), QUIET)
        .expect("start watcher");
    let probe = Probe::new(&watcher);
    (watcher, probe)
}

/// Stops the watcher, which must finish promptly.
async fn stop(watcher: ManifestWatcher) {
    tokio::time::timeout(TIMEOUT, watcher.stop())
        .await
        .expect("the watcher stops");
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_modify_delete() {
    let dir = tempdir();
    let root = dir.path();
    let (watcher, mut probe) = start(root);
    let first = probe.loaded().await;
    assert!(first.services().is_empty());

    write(root, "a.yaml", &service("a", "10.96.0.1", 80));
    probe
        .until("a created", |s| port_of(s, "a") == Some(80))
        .await;

    // In place (truncate + write), as `>` in a shell does.
    write(root, "a.yaml", &service("a", "10.96.0.1", 8080));
    probe
        .until("a modified", |s| port_of(s, "a") == Some(8080))
        .await;

    write(
        root,
        "b.yaml",
        &format!(
            "{}---\n{}",
            service("b", "10.96.0.2", 80),
            slice("b", &["10.0.0.1"])
        ),
    );
    probe.until("b created", |s| s.endpoint_count() == 1).await;

    fs::remove_file(root.join("a.yaml")).expect("remove a");
    let snap = probe
        .until("a deleted", |s| port_of(s, "a").is_none())
        .await;
    assert_eq!(names(&snap), ["default/b"]);
    assert!(errors(&snap).is_empty(), "{:#?}", errors(&snap));
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_saves_are_seen() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "a.yaml", &service("a", "10.96.0.1", 80));
    let (watcher, mut probe) = start(root);
    probe
        .until("a loaded", |s| port_of(s, "a") == Some(80))
        .await;
    for port in [81, 82, 83, 84] {
        write_atomic(root, "a.yaml", &service("a", "10.96.0.1", port));
        probe
            .until("the save", |s| port_of(s, "a") == Some(port))
            .await;
    }
    let snap = probe.until("no errors", |_| true).await;
    assert_eq!(
        snap.diagnostics.files, 1,
        "the temporary file is never loaded"
    );
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_swap_is_seen_and_nothing_loads_twice() {
    let dir = tempdir();
    let root = dir.path();
    write(
        root,
        "..2024_01_01_v1/svc.yaml",
        &service("a", "10.96.0.1", 80),
    );
    write(root, "..2024_01_01_v1/eps.yaml", &slice("a", &["10.0.0.1"]));
    symlink("..2024_01_01_v1", root.join("..data")).expect("..data");
    symlink("..data/svc.yaml", root.join("svc.yaml")).expect("svc link");
    symlink("..data/eps.yaml", root.join("eps.yaml")).expect("eps link");
    let (watcher, mut probe) = start(root);
    let snap = probe
        .until("v1 loaded", |s| port_of(s, "a") == Some(80))
        .await;
    assert_eq!(snap.diagnostics.files, 2);

    // What the kubelet does: new data directory, new link, rename over `..data`, cleanup.
    write(
        root,
        "..2024_01_02_v2/svc.yaml",
        &service("a", "10.96.0.1", 81),
    );
    write(
        root,
        "..2024_01_02_v2/eps.yaml",
        &slice("a", &["10.0.0.2", "10.0.0.3"]),
    );
    symlink("..2024_01_02_v2", root.join("..data_tmp")).expect("..data_tmp");
    fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
    fs::remove_dir_all(root.join("..2024_01_01_v1")).expect("remove old data");

    let snap = probe
        .until("v2 loaded", |s| {
            // No snapshot along the way may hold anything twice (or anything broken).
            assert!(
                errors(s).is_empty(),
                "version {}: {:#?}",
                s.version,
                errors(s)
            );
            port_of(s, "a") == Some(81) && s.endpoint_count() == 2
        })
        .await;
    assert_eq!(names(&snap), ["default/a"]);
    assert_eq!(
        snap.diagnostics.files, 2,
        "only the top-level links are files"
    );
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_keeps_its_last_good_objects_until_fixed() {
    let dir = tempdir();
    let root = dir.path();
    let good = format!(
        "{}---\n{}",
        service("a", "10.96.0.1", 80),
        slice("a", &["10.0.0.1"])
    );
    write(root, "a.yaml", &good);
    write(root, "b.yaml", &service("b", "10.96.0.2", 80));
    let (watcher, mut probe) = start(root);
    probe.until("loaded", |s| s.services().len() == 2).await;
    let stats = watcher.stats();
    assert_eq!(stats.reload_errors.load(Ordering::Relaxed), 0);

    write_atomic(
        root,
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n",
    );
    let snap = probe.until("the error", |s| !errors(s).is_empty()).await;
    assert_eq!(
        names(&snap),
        ["default/a", "default/b"],
        "last good objects kept"
    );
    assert_eq!(snap.endpoint_count(), 1);
    let errs = errors(&snap);
    assert!(errs.len() == 1 && errs[0].contains("a.yaml"), "{errs:#?}");
    assert_eq!(stats.reload_errors.load(Ordering::Relaxed), 1);

    write_atomic(root, "a.yaml", &good.replace("10.0.0.1", "10.0.0.9"));
    let snap = probe
        .until("the fix", |s| {
            errors(s).is_empty()
                && s.service(&key("a"))
                    .is_some_and(|a| a.endpoints.iter().any(|e| e.ip.to_string() == "10.0.0.9"))
        })
        .await;
    assert_eq!(names(&snap), ["default/a", "default/b"]);
    assert_eq!(
        stats.reload_errors.load(Ordering::Relaxed),
        1,
        "counted once"
    );
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_becomes_invalid_keeps_its_last_good_version() {
    let dir = tempdir();
    let root = dir.path();
    write(
        root,
        "svc.yaml",
        &format!(
            "{}---\n{}",
            service("a", "10.96.0.1", 80),
            service("b", "10.96.0.2", 80)
        ),
    );
    let (watcher, mut probe) = start(root);
    probe.until("loaded", |s| s.services().len() == 2).await;

    let edited = format!(
        "{}---\n{}",
        service("a", "10.96.0.1", 80).replace("port: 80", "port: 70000"),
        service("b", "10.96.0.2", 81)
    );
    write_atomic(root, "svc.yaml", &edited);
    let snap = probe
        .until("b's edit", |s| port_of(s, "b") == Some(81))
        .await;
    assert_eq!(
        port_of(&snap, "a"),
        Some(80),
        "a keeps its last good version"
    );
    let errs = errors(&snap);
    assert!(
        errs.iter()
            .any(|e| e.contains("default/a") && e.contains("spec.ports[0].port")),
        "{errs:#?}"
    );
    assert!(watcher.stats().reload_errors.load(Ordering::Relaxed) >= 1);

    write_atomic(root, "svc.yaml", &edited.replace("port: 70000", "port: 90"));
    let snap = probe
        .until("the fix", |s| port_of(s, "a") == Some(90))
        .await;
    assert!(errors(&snap).is_empty(), "{:#?}", errors(&snap));
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_new_subdirectories_are_loaded() {
    let dir = tempdir();
    let root = dir.path();
    let (watcher, mut probe) = start(root);
    probe.loaded().await;
    write(root, "team/a.yaml", &service("a", "10.96.0.1", 80));
    probe
        .until("team/a.yaml", |s| port_of(s, "a").is_some())
        .await;
    write(root, "team/x/y/b.yaml", &service("b", "10.96.0.2", 80));
    probe
        .until("team/x/y/b.yaml", |s| port_of(s, "b").is_some())
        .await;
    // A change deep down, after the directories were created.
    write_atomic(root, "team/x/y/b.yaml", &service("b", "10.96.0.2", 81));
    probe
        .until("the edit of b", |s| port_of(s, "b") == Some(81))
        .await;
    fs::remove_dir_all(root.join("team")).expect("remove team");
    probe
        .until("team removed", |s| s.services().is_empty())
        .await;
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_names_and_unchanged_bytes_publish_nothing() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "a.yaml", &service("a", "10.96.0.1", 80));
    let (watcher, mut probe) = start(root);
    let first = probe.until("a", |s| port_of(s, "a").is_some()).await;

    write(root, "notes.txt", &service("txt", "10.96.0.10", 80));
    write(root, "a.yaml.bak", &service("bak", "10.96.0.11", 80));
    write(root, "README", &service("noext", "10.96.0.12", 80));
    write(root, ".hidden.yaml", &service("hidden", "10.96.0.13", 80));
    write(
        root,
        ".cache/c.yaml",
        &service("in-hidden-dir", "10.96.0.14", 80),
    );
    write_atomic(root, "a.yaml", &service("a", "10.96.0.1", 80));
    // A barrier: once it shows, every event above has been handled.
    write(root, "z.yaml", &service("z", "10.96.0.2", 80));
    let snap = probe
        .until("the barrier", |s| port_of(s, "z").is_some())
        .await;
    assert_eq!(names(&snap), ["default/a", "default/z"]);
    assert_eq!(
        snap.version,
        first.version + 1,
        "only the barrier published a version"
    );
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_file_root_is_watched_through_its_directory() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "only.yaml", &service("a", "10.96.0.1", 80));
    write(root, "sibling.yaml", &service("sibling", "10.96.0.2", 80));
    let (watcher, mut probe) = start(&root.join("only.yaml"));
    let first = probe.until("loaded", |s| port_of(s, "a") == Some(80)).await;
    assert_eq!(names(&first), ["default/a"]);

    write(root, "sibling.yaml", &service("sibling", "10.96.0.2", 81));
    write_atomic(root, "only.yaml", &service("a", "10.96.0.1", 81));
    let snap = probe
        .until("the save", |s| port_of(s, "a") == Some(81))
        .await;
    assert_eq!(names(&snap), ["default/a"]);
    assert_eq!(
        snap.version,
        first.version + 1,
        "the sibling published nothing"
    );
    write(root, "only.yaml", &service("a", "10.96.0.1", 82));
    probe
        .until("the in-place write", |s| port_of(s, "a") == Some(82))
        .await;
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_files_is_loaded_whole() {
    let dir = tempdir();
    let root = dir.path();
    let (watcher, mut probe) = start(root);
    probe.loaded().await;
    for i in 0..60 {
        write(
            root,
            &format!("svc-{i:02}.yaml"),
            &service(&format!("svc-{i:02}"), &format!("10.96.1.{i}"), 80),
        );
    }
    let snap = probe.until("all 60", |s| s.services().len() == 60).await;
    assert!(errors(&snap).is_empty(), "{:#?}", errors(&snap));
    let stats = watcher.stats();
    let reloads = stats.reloads.load(Ordering::Relaxed);
    assert!((1..=60).contains(&reloads), "{reloads} reloads");
    stop(watcher).await;
}

/// Events that never stop (a log written next to the manifests) must not postpone
/// reloads forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_of_events_does_not_starve_reloads() {
    let dir = tempdir();
    let root = dir.path().to_owned();
    write(&root, "a.yaml", &service("a", "10.96.0.1", 80));
    let (watcher, mut probe) = start(&root);
    probe.until("loaded", |s| port_of(s, "a") == Some(80)).await;

    let stop_noise = Arc::new(AtomicBool::new(false));
    let noise = std::thread::spawn({
        let (root, stop_noise) = (root.clone(), stop_noise.clone());
        move || {
            let mut n = 0u64;
            while !stop_noise.load(Ordering::Relaxed) {
                n += 1;
                let _ = fs::write(root.join("noise.log"), n.to_string());
                std::thread::park_timeout(Duration::from_millis(2));
            }
        }
    });
    write_atomic(&root, "a.yaml", &service("a", "10.96.0.1", 81));
    let res = tokio::time::timeout(
        TIMEOUT,
        probe.until("the edit under noise", |s| port_of(s, "a") == Some(81)),
    )
    .await;
    stop_noise.store(true, Ordering::Relaxed);
    noise.join().expect("noise thread");
    res.expect("reloaded despite the noise");
    stop(watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_roots_are_all_watched() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "one/a.yaml", &service("a", "10.96.0.1", 80));
    write(root, "two/b.yaml", &service("b", "10.96.0.2", 80));
    let loader = Loader::with_roots(
        vec![root.join("one"), root.join("two/b.yaml")],
        ParseOptions::default(),
    );
    let watcher = ManifestWatcher::start(loader, QUIET).expect("start watcher");
    let mut probe = Probe::new(&watcher);
    probe.until("both", |s| s.services().len() == 2).await;
    write_atomic(&root.join("two"), "b.yaml", &service("b", "10.96.0.2", 81));
    probe
        .until("b's edit", |s| port_of(s, "b") == Some(81))
        .await;
    write(root, "one/c.yaml", &service("c", "10.96.0.3", 80));
    probe.until("c", |s| port_of(s, "c").is_some()).await;
    stop(watcher).await;
}
