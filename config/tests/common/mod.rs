//! Helpers shared by the integration tests: parsing a text, loading a temporary manifest
//! directory, reading fixtures and checking diagnostics field by field.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use svcplane_config::parse::Object;
use svcplane_config::{
    ConfigError, Loader, ParseOptions, ParsedFile, ServiceKey, Snapshot, parse_file,
};
use tempfile::TempDir;

pub(crate) mod tree;

/// A valid Service that sits before the object under test in a file.
pub(crate) const GOOD_BEFORE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: good-before
spec:
  clusterIP: 10.96.0.101
  ports:
  - port: 80
";

/// A valid Service that sits after the object under test in a file.
pub(crate) const GOOD_AFTER: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: good-after
spec:
  clusterIP: 10.96.0.102
  ports:
  - port: 80
";

/// `GOOD_BEFORE`, then `bad` as document 1, then `GOOD_AFTER` as document 2.
pub(crate) fn sandwich(bad: &str) -> String {
    format!("{GOOD_BEFORE}---\n{bad}---\n{GOOD_AFTER}")
}

/// The 1-based line where the object under test starts inside `sandwich`.
pub(crate) fn sandwich_line() -> usize {
    GOOD_BEFORE.lines().count() + 2
}

pub(crate) fn parse(file: &str, text: &str) -> ParsedFile {
    parse_with(file, text, &ParseOptions::default())
}

pub(crate) fn parse_with(file: &str, text: &str, opts: &ParseOptions) -> ParsedFile {
    let label: Arc<Path> = Arc::from(Path::new(file));
    parse_file(&label, text, opts)
}

/// `Kind namespace/name` of every accepted object, in file order.
pub(crate) fn accepted(p: &ParsedFile) -> Vec<String> {
    p.objects.iter().map(describe).collect()
}

pub(crate) fn describe(o: &Object) -> String {
    let (kind, ns, name) = o.identity();
    format!("{kind} {ns}/{name}")
}

/// Asserts both neighbours of `sandwich` loaded and nothing else did.
pub(crate) fn assert_neighbours_only(p: &ParsedFile) {
    assert_eq!(
        accepted(p),
        ["Service default/good-before", "Service default/good-after"],
        "the bad object must be rejected and its neighbours kept; errors: {:#?}",
        p.errors
    );
}

/// What one diagnostic must say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want<'a> {
    pub(crate) file: &'a str,
    pub(crate) document: usize,
    pub(crate) line: usize,
    pub(crate) kind: Option<&'a str>,
    pub(crate) object: Option<&'a str>,
    pub(crate) field: Option<&'a str>,
    /// A part of the reason.
    pub(crate) reason: &'a str,
}

impl<'a> Want<'a> {
    /// An object error in document 1 of a `sandwich` in `file`.
    pub(crate) fn in_sandwich(
        file: &'a str,
        kind: &'a str,
        object: &'a str,
        field: &'a str,
        reason: &'a str,
    ) -> Self {
        Want {
            file,
            document: 1,
            line: sandwich_line(),
            kind: Some(kind),
            object: Some(object),
            field: Some(field),
            reason,
        }
    }
}

/// Checks every field of `e` and its `Display` form.
pub(crate) fn check_error(e: &ConfigError, want: &Want<'_>) {
    assert_eq!(e.file.as_ref(), Path::new(want.file), "file of {e}");
    assert_eq!(e.document, Some(want.document), "document of {e}");
    assert_eq!(e.line, Some(want.line), "line of {e}");
    assert_eq!(e.kind.as_deref(), want.kind, "kind of {e}");
    assert_eq!(e.object.as_deref(), want.object, "object of {e}");
    assert_eq!(e.field.as_deref(), want.field, "field of {e}");
    assert!(
        e.reason.contains(want.reason),
        "reason of {e}: expected it to contain {:?}",
        want.reason
    );
    let mut shown = format!("{}:{}: document {}", want.file, want.line, want.document);
    match (want.kind, want.object) {
        (Some(k), Some(o)) => shown.push_str(&format!(": {k} {o}")),
        (Some(k), None) => shown.push_str(&format!(": {k}")),
        (None, Some(o)) => shown.push_str(&format!(": {o}")),
        (None, None) => {}
    }
    if let Some(f) = want.field {
        shown.push_str(&format!(": {f}"));
    }
    shown.push_str(&format!(": {}", e.reason));
    if let Some(other) = &e.other {
        shown.push_str(&format!(" (other definition at {other})"));
    }
    assert_eq!(e.to_string(), shown);
}

/// Asserts `p` has exactly one error and that it says what `want` says.
pub(crate) fn only_error<'p>(p: &'p ParsedFile, want: &Want<'_>) -> &'p ConfigError {
    assert_eq!(
        p.errors.len(),
        1,
        "expected exactly one error: {:#?}",
        p.errors
    );
    assert!(
        p.warnings.is_empty(),
        "unexpected warnings: {:#?}",
        p.warnings
    );
    check_error(&p.errors[0], want);
    &p.errors[0]
}

/// A manifest directory on disk with a loader over it.
#[derive(Debug)]
pub(crate) struct Dir {
    pub(crate) tmp: TempDir,
    pub(crate) loader: Loader,
}

impl Dir {
    pub(crate) fn new() -> Self {
        Self::with_options(ParseOptions::default())
    }

    pub(crate) fn with_options(opts: ParseOptions) -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let loader = Loader::new(tmp.path(), opts);
        Dir { tmp, loader }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes `name` through a temporary file and a rename, as editors and `kubectl` do:
    /// the new content always has a new inode, so the loader's stamp sees the change even
    /// when size and mtime are unchanged.
    pub(crate) fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("cannot rename to {}: {e}", path.display()));
    }

    pub(crate) fn remove(&self, name: &str) {
        let path = self.path(name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("cannot remove {}: {e}", path.display()));
    }

    /// Reloads and returns the current snapshot (new or not).
    pub(crate) fn reload(&mut self) -> Arc<Snapshot> {
        self.loader
            .reload()
            .unwrap_or_else(|e| panic!("reload failed: {e}"));
        self.loader.snapshot().clone()
    }

    /// The label the loader gives `name` in diagnostics.
    pub(crate) fn label(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// Loads `files` (name, text) from a fresh directory.
pub(crate) fn load(files: &[(&str, &str)]) -> (Dir, Arc<Snapshot>) {
    let mut dir = Dir::new();
    for (name, text) in files {
        dir.write(name, text);
    }
    let snap = dir.reload();
    (dir, snap)
}

pub(crate) fn key(namespace: &str, name: &str) -> ServiceKey {
    ServiceKey::new(namespace, name)
}

/// The workspace-level fixture directory.
pub(crate) fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

pub(crate) fn fixture(name: &str) -> String {
    let path = fixture_path(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Keys of the Services in a snapshot, as `namespace/name`.
pub(crate) fn service_names(snap: &Snapshot) -> Vec<String> {
    snap.services().keys().map(ToString::to_string).collect()
}
