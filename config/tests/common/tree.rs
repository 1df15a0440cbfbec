//! Manifest trees on disk for the loader and watcher tests: small Service and
//! EndpointSlice texts, and writes in place or the way editors save.

use std::fs;
use std::path::Path;

use tempfile::TempDir;

/// A ClusterIP Service in `default` with one port to 8080.
pub(crate) fn service(name: &str, ip: &str, port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  clusterIP: {ip}
  ports:
  - port: {port}
    targetPort: 8080
"
    )
}

/// An IPv4 EndpointSlice of `service` (port 8080) with one endpoint per address.
pub(crate) fn slice(service: &str, ips: &[&str]) -> String {
    let mut out = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-abc
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
ports:
- port: 8080
endpoints:
"
    );
    for ip in ips {
        out.push_str(&format!("- addresses: [\"{ip}\"]\n"));
    }
    out
}

pub(crate) fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"))
}

/// Writes `rel` under `root` in place, creating its directories.
pub(crate) fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Replaces `rel` the way editors save: a hidden temporary file, then `rename(2)` over it.
pub(crate) fn write_atomic(root: &Path, rel: &str, text: &str) {
    let tmp = root.join(".save.tmp");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    let path = root.join(rel);
    fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("cannot rename to {}: {e}", path.display()));
}
