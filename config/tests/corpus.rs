//! The real-world manifests in `../shared/corpus/` (when present, as in CI): each file loads
//! on its own with zero errors, every Service gets an address, every kind svcplane does not
//! use is skipped with one warning naming it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

use std::path::{Path, PathBuf};

use svcplane_config::{Loader, ParseOptions, ServiceKey, ServiceType};

fn corpus() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    p.is_dir().then_some(p)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// (kind, apiVersion) of every object of a file, read independently of svcplane's parser.
fn kinds(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.iter()
        .filter(|d| d.is_object())
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["apiVersion"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn used(kind: &str, api: &str) -> bool {
    matches!(
        (api, kind),
        ("v1", "Service" | "Endpoints" | "Pod" | "Namespace")
            | ("discovery.k8s.io/v1", "EndpointSlice")
    )
}

#[test]
fn every_corpus_file_loads_on_its_own() {
    let Some(dir) = corpus() else {
        eprintln!("no corpus directory: skipped");
        return;
    };
    let files = files(&dir);
    assert!(files.len() >= 22, "{} files", files.len());
    let mut services = 0;
    for f in &files {
        let mut l = Loader::new(f, ParseOptions::default());
        l.reload().unwrap();
        let s = l.snapshot();
        let d = &s.diagnostics;
        assert!(d.errors.is_empty(), "{}: {:?}", f.display(), d.errors);
        let kinds = kinds(f);
        let expected_services = kinds
            .iter()
            .filter(|(k, a)| k == "Service" && a == "v1")
            .count();
        assert_eq!(s.services().len(), expected_services, "{}", f.display());
        services += expected_services;
        for svc in s.services().values() {
            let def = &svc.def;
            if !def.headless && def.type_ != ServiceType::ExternalName {
                assert!(
                    !def.cluster_ips.is_empty(),
                    "{}: {} has no address",
                    f.display(),
                    def.key
                );
            }
            if matches!(def.type_, ServiceType::NodePort | ServiceType::LoadBalancer) {
                assert!(
                    def.ports.iter().all(|p| p.node_port.is_some()),
                    "{}: {} lacks a nodePort",
                    f.display(),
                    def.key
                );
            }
        }
        let skipped: Vec<&(String, String)> = kinds.iter().filter(|(k, a)| !used(k, a)).collect();
        assert_eq!(
            d.warnings.len(),
            skipped.len(),
            "{}: {:?}",
            f.display(),
            d.warnings
        );
        for ((kind, _), w) in skipped.iter().zip(&d.warnings) {
            assert!(
                w.message.contains(&format!("skipping {kind} ")),
                "{}: {w}",
                f.display()
            );
        }
    }
    assert_eq!(services, 49, "the corpus README counts 49 Services");
}

#[test]
fn named_target_ports_resolve_from_pods_and_endpoints_of_the_corpus() {
    let Some(dir) = corpus() else { return };
    let ex = dir.join("kubernetes-examples");
    // A selectorless Service with a hand-written Endpoints object of the same name.
    let mut l = Loader::with_roots(
        vec![
            ex.join("glusterfs-service.yaml"),
            ex.join("glusterfs-endpoints.yaml"),
        ],
        ParseOptions::default(),
    );
    l.reload().unwrap();
    let s = l.snapshot();
    let svc = s
        .service(&ServiceKey::new("default", "glusterfs-cluster"))
        .unwrap();
    assert!(!svc.endpoints.is_empty());
    let port = s.ports().values().next().unwrap();
    assert!(
        !port.endpoints.is_empty(),
        "endpoints serve the Service port"
    );
    // A Service whose selector matches a Pod of another file. The Pod as written has no
    // address yet (no status): no endpoint. Once it runs (status.podIP), it is one.
    let mut l = Loader::with_roots(
        vec![
            ex.join("redis-sentinel-service.yaml"),
            ex.join("redis-master.yaml"),
        ],
        ParseOptions::default(),
    );
    l.reload().unwrap();
    let s = l.snapshot();
    assert!(
        s.diagnostics.errors.is_empty(),
        "{:?}",
        s.diagnostics.errors
    );
    let svc = s.services().values().next().unwrap();
    assert_eq!(svc.def.key.name.as_ref(), "redis-sentinel");
    assert!(svc.endpoints.is_empty());
    let tmp = tempfile::tempdir().unwrap();
    let pod = std::fs::read_to_string(ex.join("redis-master.yaml")).unwrap()
        + "status:\n  podIP: 10.244.0.5\n  conditions:\n  - {type: Ready, status: \"True\"}\n";
    std::fs::write(tmp.path().join("pod.yaml"), pod).unwrap();
    std::fs::copy(
        ex.join("redis-sentinel-service.yaml"),
        tmp.path().join("svc.yaml"),
    )
    .unwrap();
    let mut l = Loader::new(tmp.path(), ParseOptions::default());
    l.reload().unwrap();
    let s = l.snapshot();
    let port = s.ports().values().next().unwrap();
    let backends: Vec<String> = port
        .endpoints
        .iter()
        .map(|e| e.backend.to_string())
        .collect();
    assert_eq!(backends, ["10.244.0.5:26379"]);
}

#[test]
fn the_whole_corpus_reports_the_duplicate_service_naming_both_files() {
    let Some(dir) = corpus() else { return };
    let mut l = Loader::new(&dir, ParseOptions::default());
    l.reload().unwrap();
    let s = l.snapshot();
    let dups: Vec<String> = s
        .diagnostics
        .errors
        .iter()
        .filter(|e| e.reason.contains("defined more than once"))
        .map(|e| e.to_string())
        .collect();
    assert!(!dups.is_empty(), "{:?}", s.diagnostics.errors);
    for e in &dups {
        assert!(e.contains("other definition at"), "{e}");
    }
    let files_named: usize = dups
        .iter()
        .map(|e| e.matches(".yaml").count() + e.matches(".json").count())
        .min()
        .unwrap();
    assert!(files_named >= 2, "{dups:?}");
}
