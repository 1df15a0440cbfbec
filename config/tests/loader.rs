//! `Loader`: a manifest tree (or one file) on disk -> versioned snapshots, re-reading only
//! what changed. Synchronous: every step calls `reload` itself (the watcher is tested in
//! `watch.rs`).

#![allow(
    clippy::expect_used,
    reason = "test helpers fail the test with context, like the tests themselves"
)]

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use common::tree::{self, service, slice, write, write_atomic};
use svcplane_config::{LoadError, Loader, ParseOptions, ReloadStats, ServiceKey, Snapshot};
use tempfile::TempDir;

// === helpers ===

fn key(name: &str) -> ServiceKey {
    ServiceKey::new("default", name)
}

fn tempdir() -> TempDir {
    tree::tempdir("svcplane-loader-")
}

fn loader(root: &Path) -> Loader {
    Loader::new(root, ParseOptions::default())
}

/// A reload that must publish a new snapshot.
fn reload_new(loader: &mut Loader) -> (Arc<Snapshot>, ReloadStats) {
    let (snap, stats) = loader.reload().expect("reload");
    let snap = snap.unwrap_or_else(|| panic!("expected a new snapshot; stats: {stats:?}"));
    assert!(stats.changed, "{stats:?}");
    (snap, stats)
}

/// A reload that must publish nothing.
fn reload_same(loader: &mut Loader) -> ReloadStats {
    let (snap, stats) = loader.reload().expect("reload");
    assert!(
        snap.is_none(),
        "expected no new snapshot, got version {:?}; stats: {stats:?}",
        snap.map(|s| s.version)
    );
    assert!(!stats.changed, "{stats:?}");
    stats
}

fn names(snap: &Snapshot) -> Vec<String> {
    snap.services().keys().map(ToString::to_string).collect()
}

fn port_of(snap: &Snapshot, name: &str) -> u16 {
    let svc = snap
        .service(&key(name))
        .unwrap_or_else(|| panic!("service {name} missing; have {:?}", names(snap)));
    svc.def.ports[0].port
}

fn errors(snap: &Snapshot) -> Vec<String> {
    snap.diagnostics
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

// === what is loaded ===

#[test]
fn a_tree_loads_with_subdirectories_and_skips_other_names() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "a.yaml", &service("a", "10.96.0.1", 80));
    write(root, "team/b.yml", &service("b", "10.96.0.2", 80));
    write(
        root,
        "team/deeper/c.json",
        r#"{"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "c"}, "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}}"#,
    );
    write(root, "upper.YAML", &service("upper", "10.96.0.4", 80));
    // Not manifests by name: skipped without a word.
    write(root, "notes.txt", &service("txt", "10.96.0.10", 80));
    write(root, "a.yaml.bak", &service("bak", "10.96.0.11", 80));
    write(root, "a.yaml~", &service("tilde", "10.96.0.12", 80));
    write(root, "Makefile", &service("noext", "10.96.0.13", 80));
    // Hidden names: editor swap files, ConfigMap data directories.
    write(root, ".hidden.yaml", &service("hidden", "10.96.0.14", 80));
    write(
        root,
        ".git/x.yaml",
        &service("in-hidden-dir", "10.96.0.15", 80),
    );

    let mut l = loader(root);
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(
        names(&snap),
        ["default/a", "default/b", "default/c", "default/upper"]
    );
    assert_eq!(stats.files, 4, "{stats:?}");
    assert_eq!(stats.parsed, 4, "{stats:?}");
    assert_eq!(snap.diagnostics.files, 4);
    assert!(errors(&snap).is_empty(), "{:#?}", errors(&snap));
    assert_eq!(snap.version, 1);
}

#[test]
fn a_single_file_root_loads_and_follows_rename_over_saves() {
    let dir = tempdir();
    let file = dir.path().join("only.yaml");
    write(dir.path(), "only.yaml", &service("one", "10.96.0.1", 80));
    write(
        dir.path(),
        "sibling.yaml",
        &service("sibling", "10.96.0.2", 80),
    );

    let mut l = loader(&file);
    let (snap, _) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/one"], "siblings are not loaded");

    write_atomic(dir.path(), "only.yaml", &service("one", "10.96.0.1", 81));
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(port_of(&snap, "one"), 81);
    assert_eq!((stats.files, stats.parsed), (1, 1), "{stats:?}");
}

#[test]
fn a_missing_root_is_an_error_and_keeps_the_last_snapshot() {
    let dir = tempdir();
    let root = dir.path().join("manifests");
    let mut l = loader(&root);
    assert!(matches!(l.reload(), Err(LoadError::Root { .. })));
    assert_eq!(l.snapshot().version, 0);

    write(&root, "a.yaml", &service("a", "10.96.0.1", 80));
    let (snap, _) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/a"]);
    fs::remove_dir_all(&root).expect("remove root");
    assert!(matches!(l.reload(), Err(LoadError::Root { .. })));
    assert_eq!(names(l.snapshot()), ["default/a"]);
}

#[test]
fn several_roots_form_one_snapshot() {
    let dir = tempdir();
    write(dir.path(), "one/a.yaml", &service("a", "10.96.0.1", 80));
    write(dir.path(), "b.yaml", &service("b", "10.96.0.2", 80));
    let roots = vec![dir.path().join("one"), dir.path().join("b.yaml")];
    let mut l = Loader::with_roots(roots.clone(), ParseOptions::default());
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/a", "default/b"]);
    assert_eq!(stats.files, 2);
    assert_eq!(l.roots(), roots);
}

// === what a reload re-reads, and when it publishes ===

#[test]
fn only_changed_files_are_parsed() {
    let dir = tempdir();
    let root = dir.path();
    for i in 0..30 {
        write(
            root,
            &format!("svc-{i:02}.yaml"),
            &service(&format!("svc-{i:02}"), &format!("10.96.0.{}", i + 1), 80),
        );
    }
    let mut l = loader(root);
    let (snap, stats) = reload_new(&mut l);
    assert_eq!((stats.files, stats.parsed), (30, 30), "{stats:?}");
    assert_eq!(snap.services().len(), 30);

    write_atomic(root, "svc-07.yaml", &service("svc-07", "10.96.0.8", 8080));
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(stats.parsed, 1, "one file changed: {stats:?}");
    assert_eq!((stats.files, stats.removed), (30, 0), "{stats:?}");
    assert_eq!(port_of(&snap, "svc-07"), 8080);
    assert_eq!(snap.services().len(), 30);

    // In place this time (same inode), and a different length.
    write(root, "svc-08.yaml", &service("svc-08", "10.96.0.9", 18080));
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(stats.parsed, 1, "{stats:?}");
    assert_eq!(port_of(&snap, "svc-08"), 18080);
}

#[test]
fn versions_increase_and_a_reload_without_change_publishes_nothing() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "a.yaml", &service("a", "10.96.0.1", 80));
    let mut l = loader(root);
    let (first, _) = reload_new(&mut l);
    assert_eq!(first.version, 1);

    let stats = reload_same(&mut l);
    assert_eq!(stats.parsed, 0, "{stats:?}");
    assert_eq!(l.snapshot().version, 1, "no change, no version");

    let mut last = first.version;
    for port in [81, 82, 83] {
        write_atomic(root, "a.yaml", &service("a", "10.96.0.1", port));
        let (snap, _) = reload_new(&mut l);
        assert!(snap.version > last, "{} after {last}", snap.version);
        assert_eq!(port_of(&snap, "a"), port);
        last = snap.version;
        reload_same(&mut l);
        assert_eq!(l.snapshot().version, last);
    }
}

#[test]
fn new_bytes_with_the_same_meaning_publish_nothing() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "a.yaml", &service("a", "10.96.0.1", 80));
    let mut l = loader(root);
    reload_new(&mut l);

    // Same bytes, new inode and mtime: read again, not parsed.
    write_atomic(root, "a.yaml", &service("a", "10.96.0.1", 80));
    let stats = reload_same(&mut l);
    assert_eq!((stats.parsed, stats.rechecked), (0, 1), "{stats:?}");

    // A trailing comment: parsed, but the objects are the same.
    write_atomic(
        root,
        "a.yaml",
        &format!("{}# a comment\n", service("a", "10.96.0.1", 80)),
    );
    let stats = reload_same(&mut l);
    assert_eq!(stats.parsed, 1, "{stats:?}");
    assert_eq!(
        stats.build_time,
        std::time::Duration::ZERO,
        "no rebuild: {stats:?}"
    );
    assert_eq!(l.snapshot().version, 1);
}

#[test]
fn a_same_size_rewrite_right_after_a_load_is_seen() {
    // A rewrite in the same timestamp tick as the previous load's stat, same length, same
    // inode: the stamp cannot tell; the content hash of a racy stamp must.
    let dir = tempdir();
    let root = dir.path();
    let path = root.join("a.yaml");
    write(root, "a.yaml", &service("a", "10.96.0.1", 81));
    let mut l = loader(root);
    reload_new(&mut l);
    let before = fs::metadata(&path).expect("stat");
    write(root, "a.yaml", &service("a", "10.96.0.1", 82));
    // Put the old mtime back, as a coarse clock would have left it.
    let f = fs::File::options().write(true).open(&path).expect("open");
    f.set_modified(before.modified().expect("mtime"))
        .expect("set mtime");
    drop(f);
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(port_of(&snap, "a"), 82, "{stats:?}");
}

#[test]
fn a_deleted_file_takes_its_objects_with_it() {
    let dir = tempdir();
    let root = dir.path();
    write(
        root,
        "a.yaml",
        &format!(
            "{}---\n{}",
            service("a", "10.96.0.1", 80),
            slice("a", &["10.0.0.1"])
        ),
    );
    write(root, "b.yaml", &service("b", "10.96.0.2", 80));
    let mut l = loader(root);
    let (snap, _) = reload_new(&mut l);
    assert_eq!(snap.endpoint_count(), 1);

    fs::remove_file(root.join("a.yaml")).expect("remove");
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/b"]);
    assert_eq!(
        (stats.removed, stats.parsed, stats.files),
        (1, 0, 1),
        "{stats:?}"
    );
    assert_eq!(snap.endpoint_count(), 0);
    assert_eq!(snap.diagnostics.files, 1);
}

// === bad input keeps what was good ===

#[test]
fn a_syntax_error_keeps_the_files_objects_until_fixed() {
    let dir = tempdir();
    let root = dir.path();
    let good = format!(
        "{}---\n{}",
        service("a", "10.96.0.1", 80),
        slice("a", &["10.0.0.1"])
    );
    write(root, "a.yaml", &good);
    write(root, "b.yaml", &service("b", "10.96.0.2", 80));
    let mut l = loader(root);
    reload_new(&mut l);

    write_atomic(
        root,
        "a.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n",
    );
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(stats.new_errors, 1, "{stats:?}");
    assert_eq!(
        names(&snap),
        ["default/a", "default/b"],
        "last good objects kept"
    );
    assert_eq!(snap.endpoint_count(), 1);
    let errs = errors(&snap);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("a.yaml") && errs[0].contains("YAML"),
        "{errs:#?}"
    );
    assert!(
        errs[0].contains("keeping the objects last loaded"),
        "{errs:#?}"
    );

    // Broken again differently: still the last good objects, not nothing.
    write_atomic(root, "a.yaml", "kind: [\n");
    let (snap, _) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/a", "default/b"]);

    write_atomic(root, "a.yaml", &good.replace("10.0.0.1", "10.0.0.2"));
    let (snap, _) = reload_new(&mut l);
    assert!(errors(&snap).is_empty(), "fixed: {:#?}", errors(&snap));
    let ep = &snap.service(&key("a")).expect("a").endpoints;
    assert_eq!(ep.len(), 1);
    assert_eq!(ep[0].ip.to_string(), "10.0.0.2");
}

#[test]
fn an_object_that_becomes_invalid_keeps_its_last_good_version() {
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
    let mut l = loader(root);
    reload_new(&mut l);

    // `a` gets an invalid port; `b` changes validly in the same save; `c` is new.
    let edited = format!(
        "{}---\n{}---\n{}",
        service("a", "10.96.0.1", 80).replace("port: 80", "port: 70000"),
        service("b", "10.96.0.2", 81),
        service("c", "10.96.0.3", 80),
    );
    write_atomic(root, "svc.yaml", &edited);
    let (snap, stats) = reload_new(&mut l);
    assert!(stats.new_errors >= 1, "{stats:?}");
    assert_eq!(names(&snap), ["default/a", "default/b", "default/c"]);
    assert_eq!(port_of(&snap, "a"), 80, "last good version of a");
    assert_eq!(port_of(&snap, "b"), 81, "b's valid edit applies");
    let errs = errors(&snap);
    assert!(
        errs.iter()
            .any(|e| e.contains("default/a") && e.contains("keeping its last good version")),
        "{errs:#?}"
    );

    write_atomic(root, "svc.yaml", &edited.replace("port: 70000", "port: 90"));
    let (snap, _) = reload_new(&mut l);
    assert!(errors(&snap).is_empty(), "{:#?}", errors(&snap));
    assert_eq!(port_of(&snap, "a"), 90);
}

#[test]
fn an_object_invalid_from_the_start_is_reported_and_absent() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "a.yaml", &service("a", "10.96.0.1", 0));
    write(root, "b.yaml", &service("b", "10.96.0.2", 80));
    let mut l = loader(root);
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/b"]);
    assert_eq!(stats.new_errors, 1, "{stats:?}");
    assert!(
        errors(&snap)[0].contains("spec.ports[0].port"),
        "{:#?}",
        errors(&snap)
    );
}

// === links ===

#[test]
fn a_dangling_link_is_an_error_until_its_target_appears() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "b.yaml", &service("b", "10.96.0.2", 80));
    // The target lives in a hidden directory, so it is only reached through the link.
    symlink(".store/a.yaml", root.join("a.yaml")).expect("symlink");
    let mut l = loader(root);
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/b"]);
    assert_eq!(stats.files, 2, "{stats:?}");
    let errs = errors(&snap);
    assert!(errs.len() == 1 && errs[0].contains("a.yaml"), "{errs:#?}");

    write(root, ".store/a.yaml", &service("a", "10.96.0.1", 80));
    let (snap, _) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/a", "default/b"]);
    assert!(errors(&snap).is_empty(), "{:#?}", errors(&snap));
}

#[test]
fn a_directory_link_loop_terminates() {
    let dir = tempdir();
    let root = dir.path();
    write(root, "sub/a.yaml", &service("a", "10.96.0.1", 80));
    symlink(root, root.join("sub/loop")).expect("symlink");
    let mut l = loader(root);
    let (snap, _) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/a"]);
    assert!(
        errors(&snap).is_empty(),
        "loaded once: {:#?}",
        errors(&snap)
    );
}

/// A ConfigMap volume as the kubelet lays it out: `..<timestamp>/` holds the files,
/// `..data` links to it, every key is a top-level link through `..data`.
#[test]
fn a_configmap_volume_swap_loads_the_new_data_once() {
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
    let mut l = loader(root);
    let (snap, stats) = reload_new(&mut l);
    assert_eq!(names(&snap), ["default/a"]);
    assert_eq!(stats.files, 2, "only the top-level links: {stats:?}");
    assert!(errors(&snap).is_empty(), "{:#?}", errors(&snap));

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

    let (snap, stats) = reload_new(&mut l);
    assert_eq!((stats.files, stats.parsed), (2, 2), "{stats:?}");
    assert_eq!(names(&snap), ["default/a"]);
    assert_eq!(port_of(&snap, "a"), 81);
    assert_eq!(snap.endpoint_count(), 2);
    assert!(
        errors(&snap).is_empty(),
        "nothing twice: {:#?}",
        errors(&snap)
    );
}

/// Each snapshot lists the Service ports it touched since the one before, so a data plane
/// holding that one applies a change without scanning every port.
#[test]
fn a_snapshot_names_the_ports_it_changed_since_the_previous_one() {
    let dir = tempdir();
    for i in 0..20 {
        write(
            dir.path(),
            &format!("s{i}.yaml"),
            &service(&format!("s{i}"), &format!("10.96.0.{}", i + 1), 80),
        );
    }
    let mut l = loader(dir.path());
    let (first, _) = reload_new(&mut l);
    let d = first.delta.as_ref().unwrap();
    assert_eq!(d.from_version, first.version - 1);
    assert_eq!(d.ports.len(), 20, "the first snapshot touches every port");

    // One Service's port changes, one Service goes, one comes.
    write_atomic(dir.path(), "s3.yaml", &service("s3", "10.96.0.4", 81));
    fs::remove_file(dir.path().join("s7.yaml")).unwrap();
    write(dir.path(), "new.yaml", &service("new", "10.96.0.99", 80));
    let (next, _) = reload_new(&mut l);
    let d = next.delta.as_ref().unwrap();
    assert_eq!(d.from_version, first.version);
    let touched: Vec<String> = d.ports.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        touched,
        [
            "default/new:80/TCP",
            "default/s3:80/TCP",
            "default/s3:81/TCP",
            "default/s7:80/TCP"
        ]
    );
    // The superset property the data planes rely on: every port that differs is listed.
    let diff = svcplane_config::diff(&first, &next);
    for c in &diff.ports {
        let k = match c {
            svcplane_config::Change::Added(k, _)
            | svcplane_config::Change::Changed(k, _)
            | svcplane_config::Change::Removed(k) => k,
        };
        assert!(d.ports.contains(k), "{k} changed but is not in the delta");
    }
}
