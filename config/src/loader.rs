//! Reading a manifest directory (or one file) into snapshots, re-reading only what changed.
//!
//! Every reload lists the tree and compares each file's (size, mtime, inode) with the cached
//! one, so it is correct whatever events a watcher saw or missed: editors' rename-over saves
//! and the `..data` symlink swap of Kubernetes ConfigMap volumes are just changed stamps.
//! Names starting with `.` are skipped (that is where ConfigMap volumes keep their data
//! directories, reached through the top-level symlinks).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::diff::diff;
use crate::error::{ConfigError, LoadError};
use crate::parse::{Object, ParseOptions, ParsedFile, parse_file};
use crate::snapshot::{Diagnostics, Snapshot, build};

/// Identity of a file's content as far as `stat` can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Stamp {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    parsed: Arc<ParsedFile>,
}

/// Figures about one reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadStats {
    pub files: usize,
    pub parsed: usize,
    pub removed: usize,
    /// Errors found in the files parsed by this reload.
    pub new_errors: usize,
    pub parse_time: Duration,
    pub build_time: Duration,
    /// A new snapshot was produced (something changed).
    pub changed: bool,
}

/// Keeps the parsed state of a manifest tree and produces snapshots from it.
#[derive(Debug)]
pub struct Loader {
    root: PathBuf,
    opts: ParseOptions,
    files: BTreeMap<PathBuf, Cached>,
    current: Arc<Snapshot>,
}

/// Whether a path names a manifest file by its extension.
pub fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "yaml" | "yml" | "json"))
}

impl Loader {
    pub fn new(root: impl Into<PathBuf>, opts: ParseOptions) -> Self {
        Self {
            root: root.into(),
            opts,
            files: BTreeMap::new(),
            current: Arc::new(Snapshot::default()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The latest snapshot (version 0 and empty before the first successful reload).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.current
    }

    /// Re-reads what changed on disk. Returns the new snapshot when anything changed.
    /// Blocking: call it off the async reactor.
    pub fn reload(&mut self) -> Result<(Option<Arc<Snapshot>>, ReloadStats), LoadError> {
        let started = Instant::now();
        let listing = list_manifests(&self.root)?;
        let mut stats = ReloadStats {
            files: listing.len(),
            ..ReloadStats::default()
        };
        let present: HashSet<&PathBuf> = listing.iter().map(|(p, _)| p).collect();
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        stats.removed = before - self.files.len();
        let todo: Vec<(PathBuf, Option<Stamp>)> = listing
            .into_iter()
            .filter(|(p, stamp)| self.files.get(p).map(|c| Some(c.stamp)) != Some(*stamp))
            .collect();
        stats.parsed = todo.len();
        let results = parse_parallel(&todo, &self.opts);
        for ((path, stamp), parsed) in todo.into_iter().zip(results) {
            stats.new_errors += parsed.errors.len();
            let prev = self.files.remove(&path);
            let merged = keep_last_good(parsed, prev.as_ref().map(|c| &*c.parsed));
            // An unreadable file keeps no stamp, so it is retried on the next reload.
            let stamp = stamp.unwrap_or(Stamp {
                len: u64::MAX,
                mtime_ns: 0,
                ino: 0,
                dev: 0,
            });
            self.files.insert(
                path,
                Cached {
                    stamp,
                    parsed: Arc::new(merged),
                },
            );
        }
        stats.parse_time = started.elapsed();
        if stats.parsed == 0 && stats.removed == 0 && self.current.version > 0 {
            return Ok((None, stats));
        }
        let build_started = Instant::now();
        let next = self.build_snapshot();
        stats.build_time = build_started.elapsed();
        let changed = self.current.version == 0
            || !diff(&self.current, &next).is_empty()
            || next.diagnostics != self.current.diagnostics;
        stats.changed = changed;
        if !changed {
            return Ok((None, stats));
        }
        self.current = Arc::new(next);
        Ok((Some(self.current.clone()), stats))
    }

    fn build_snapshot(&self) -> Snapshot {
        let mut diagnostics = Diagnostics {
            files: self.files.len(),
            ..Diagnostics::default()
        };
        let mut objects: Vec<&Object> = Vec::new();
        for c in self.files.values() {
            objects.extend(c.parsed.objects.iter());
            diagnostics.errors.extend(c.parsed.errors.iter().cloned());
            diagnostics.warnings.extend(c.parsed.warnings.iter().cloned());
        }
        build(
            self.current.version + 1,
            &objects,
            Some(&self.current),
            diagnostics,
        )
    }
}

/// A fresh parse keeps the previous version of objects it now rejects, and all previous
/// objects when the file no longer parses at all: one bad edit never removes good state.
fn keep_last_good(mut parsed: ParsedFile, prev: Option<&ParsedFile>) -> ParsedFile {
    let Some(prev) = prev else { return parsed };
    if !parsed.syntax_ok {
        parsed.objects = prev.objects.clone();
        for e in &mut parsed.errors {
            e.reason.push_str("; keeping the objects last loaded from this file");
        }
        return parsed;
    }
    for (kind, ns, name) in &parsed.rejected {
        let old = prev
            .objects
            .iter()
            .find(|o| o.identity() == (*kind, ns.as_str(), name.as_str()));
        if let Some(old) = old {
            parsed.objects.push(old.clone());
            for e in &mut parsed.errors {
                if e.kind.as_deref() == Some(*kind) && e.object.as_deref() == Some(&format!("{ns}/{name}")) {
                    e.reason.push_str("; keeping its last good version");
                }
            }
        }
    }
    parsed
}

/// Lists manifest files under `root` (or `root` itself when it is a file) with their
/// stamps; `None` when a listed file cannot be stat'ed.
fn list_manifests(root: &Path) -> Result<Vec<(PathBuf, Option<Stamp>)>, LoadError> {
    let meta = fs::metadata(root).map_err(|source| LoadError::Root {
        path: root.to_owned(),
        source,
    })?;
    if meta.is_file() {
        return Ok(vec![(root.to_owned(), Some(Stamp::of(&meta)))]);
    }
    let mut out = Vec::new();
    let mut seen_dirs = HashSet::new();
    seen_dirs.insert((meta.dev(), meta.ino()));
    walk(root, &mut out, &mut seen_dirs).map_err(|source| LoadError::Root {
        path: root.to_owned(),
        source,
    })?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn walk(
    dir: &Path,
    out: &mut Vec<(PathBuf, Option<Stamp>)>,
    seen_dirs: &mut HashSet<(u64, u64)>,
) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        if entry.file_name().as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        let path = entry.path();
        // Follow symlinks: ConfigMap volumes expose files as links into `..data/`.
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                if seen_dirs.insert((m.dev(), m.ino())) {
                    // A subdirectory that vanished meanwhile is simply absent this time.
                    let _ = walk(&path, out, seen_dirs);
                }
            }
            Ok(m) if m.is_file() && is_manifest(&path) => out.push((path, Some(Stamp::of(&m)))),
            Ok(_) => {}
            // A dangling symlink with a manifest name is reported when it is read.
            Err(_) if is_manifest(&path) => out.push((path, None)),
            Err(_) => {}
        }
    }
    Ok(())
}

fn read_and_parse(path: &Path, opts: &ParseOptions) -> ParsedFile {
    let label: Arc<Path> = Arc::from(path);
    match fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_file(&label, &text, opts),
            Err(e) => unreadable(&label, format!("not UTF-8 text: {e}")),
        },
        Err(e) => unreadable(&label, format!("cannot read file: {e}")),
    }
}

fn unreadable(label: &Arc<Path>, reason: String) -> ParsedFile {
    ParsedFile {
        errors: vec![ConfigError::file(label, None, reason)],
        syntax_ok: false,
        ..ParsedFile::default()
    }
}

/// Parses files on every core when there are enough of them to be worth a thread.
fn parse_parallel(todo: &[(PathBuf, Option<Stamp>)], opts: &ParseOptions) -> Vec<ParsedFile> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if todo.len() < 8 || threads == 1 {
        return todo.iter().map(|(p, _)| read_and_parse(p, opts)).collect();
    }
    let chunk = todo.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                let handle = s.spawn(move || {
                    part.iter()
                        .map(|(p, _)| read_and_parse(p, opts))
                        .collect::<Vec<_>>()
                });
                (part, handle)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(part, h)| match h.join() {
                Ok(v) => v,
                // A parser panic is a bug; report it per file instead of taking the
                // daemon down.
                Err(_) => part
                    .iter()
                    .map(|(p, _)| unreadable(&Arc::from(p.as_path()), "internal parser error".into()))
                    .collect(),
            })
            .collect()
    })
}
