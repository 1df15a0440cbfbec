//! Reading a manifest directory (or one file) into snapshots, re-reading only what changed.
//!
//! Every reload lists the tree and compares each file's (size, mtime, inode) with the cached
//! one, so it is correct whatever events a watcher saw or missed: editors' rename-over saves
//! and the `..data` symlink swap of Kubernetes ConfigMap volumes are just changed stamps.
//! Names starting with `.` are skipped (that is where ConfigMap volumes keep their data
//! directories, reached through the top-level symlinks).
//!
//! A file whose stamp changed is read again, but parsed only if its bytes changed (a hash
//! is kept per file), and the snapshot is rebuilt only if what it parses to changed: a
//! `touch` or a comment edit costs a read, not a rebuild. A stamp taken within
//! [`RACY_WINDOW`] of the file's mtime is not trusted (a same-size rewrite in the same
//! timestamp tick would leave it unchanged): such files are re-read on the next reload.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::hash::{DefaultHasher, Hasher as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::alloc::{AllocOptions, Allocator, StateError};
use crate::error::{ConfigError, LoadError};
use crate::parse::{ParseOptions, ParsedFile, parse_file};
use crate::resolver::{FileChange, Resolver};
use crate::snapshot::{Diagnostics, Snapshot};

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

/// How recent a file's mtime may be, relative to the start of the reload that stat'ed it,
/// for its stamp to be re-checked on the next reload. Filesystem timestamps come from a
/// coarse clock (a jiffy on Linux without multigrain timestamps, 1 s or 2 s on some
/// filesystems): a same-size in-place write in the same tick as our read keeps the stamp.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Cached {
    /// `None` when the file could not be stat'ed (a dangling symlink): always re-read.
    stamp: Option<Stamp>,
    /// Hash of the bytes `parsed` came from; `None` when the file could not be read.
    content: Option<u64>,
    /// The stamp was taken within [`RACY_WINDOW`] of the file's mtime: re-read next time.
    racy: bool,
    parsed: Arc<ParsedFile>,
}

/// A file's parsed objects before and after a reload (`None`: absent).
type Changed = (Option<Arc<ParsedFile>>, Option<Arc<ParsedFile>>);

/// Figures about one reload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Manifest files listed.
    pub files: usize,
    /// Files read and parsed (new, or whose bytes changed).
    pub parsed: usize,
    /// Files read again (new stamp, or a racy one) whose bytes had not changed: not parsed.
    pub rechecked: usize,
    /// Files gone since the previous reload.
    pub removed: usize,
    /// Errors found in the files parsed by this reload.
    pub new_errors: usize,
    /// Listing, reading and parsing.
    pub parse_time: Duration,
    /// Building the snapshot (zero when no parsed object changed).
    pub build_time: Duration,
    /// A new snapshot was produced (something changed).
    pub changed: bool,
}

/// A listed file that has to be read.
#[derive(Debug)]
struct Todo {
    path: PathBuf,
    stamp: Option<Stamp>,
    /// Hash of the cached content: when the bytes still hash to it, nothing is parsed.
    known: Option<u64>,
}

/// What reading one file found.
#[derive(Debug)]
enum Read {
    /// The bytes hash to the cached content.
    Unchanged,
    /// Parsed afresh, with the hash of the bytes (`None`: unreadable).
    Parsed(ParsedFile, Option<u64>),
}

/// Keeps the parsed state of a manifest tree and produces snapshots from it.
#[derive(Debug)]
pub struct Loader {
    /// Files or directories, loaded together (as `kubectl apply -f A -f B` would).
    roots: Vec<PathBuf>,
    opts: ParseOptions,
    files: BTreeMap<PathBuf, Cached>,
    current: Arc<Snapshot>,
    resolver: Resolver,
}

/// Whether a path names a manifest file by its extension.
pub fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "yaml" | "yml" | "json"))
}

impl Loader {
    pub fn new(root: impl Into<PathBuf>, opts: ParseOptions) -> Self {
        Self::with_roots(vec![root.into()], opts)
    }

    /// A loader over several files or directories whose objects form one snapshot, with
    /// allocations kept in memory only.
    pub fn with_roots(roots: Vec<PathBuf>, opts: ParseOptions) -> Self {
        let alloc = AllocOptions {
            node_port_range: opts.node_port_range,
            ..AllocOptions::default()
        };
        // Without a state file there is nothing to read, so this cannot fail.
        let allocator = Allocator::new(alloc).unwrap_or_default();
        Self::build(roots, opts, allocator)
    }

    /// A loader whose ClusterIP / nodePort allocations come from `alloc` (ranges and the
    /// state file). Fails when the state file exists but cannot be read or parsed.
    pub fn with_allocation(
        roots: Vec<PathBuf>,
        opts: ParseOptions,
        mut alloc: AllocOptions,
    ) -> Result<Self, StateError> {
        alloc.node_port_range = opts.node_port_range;
        Ok(Self::build(roots, opts, Allocator::new(alloc)?))
    }

    fn build(roots: Vec<PathBuf>, opts: ParseOptions, allocator: Allocator) -> Self {
        Self {
            roots,
            opts,
            files: BTreeMap::new(),
            current: Arc::new(Snapshot::default()),
            resolver: Resolver::new(allocator),
        }
    }

    /// The first root.
    pub fn root(&self) -> &Path {
        self.roots.first().map_or(Path::new("."), PathBuf::as_path)
    }

    /// Every root (a watcher watches them all).
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The latest snapshot (version 0 and empty before the first successful reload).
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.current
    }

    /// Re-reads what changed on disk. Returns the new snapshot when anything changed.
    /// Blocking: call it off the async reactor.
    pub fn reload(&mut self) -> Result<(Option<Arc<Snapshot>>, ReloadStats), LoadError> {
        let started = Instant::now();
        // Taken before any stat: a file modified after this instant may be modified again
        // within the same timestamp tick.
        let racy_after = unix_nanos(SystemTime::now()) - RACY_WINDOW.as_nanos() as i128;
        let mut listing = Vec::new();
        for root in &self.roots {
            listing.extend(list_manifests(root)?);
        }
        listing.sort_by(|a, b| a.0.cmp(&b.0));
        listing.dedup_by(|a, b| a.0 == b.0);
        let mut stats = ReloadStats {
            files: listing.len(),
            ..ReloadStats::default()
        };
        let present: HashSet<&PathBuf> = listing.iter().map(|(p, _)| p).collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        // (old, new) objects of every file that changed, for the incremental resolver.
        let mut changed: Vec<Changed> = Vec::new();
        for p in &gone {
            if let Some(c) = self.files.remove(p) {
                changed.push((Some(c.parsed), None));
            }
        }
        stats.removed = gone.len();
        let todo: Vec<Todo> = listing
            .into_iter()
            .filter_map(|(path, stamp)| {
                let known = match self.files.get(&path) {
                    Some(c) if stamp.is_some() && c.stamp == stamp && !c.racy => return None,
                    Some(c) => c.content,
                    None => None,
                };
                Some(Todo { path, stamp, known })
            })
            .collect();
        let results = read_parallel(&todo, &self.opts);
        for (todo, read) in todo.into_iter().zip(results) {
            let racy = todo.stamp.is_some_and(|s| s.mtime_ns >= racy_after);
            let prev = self.files.remove(&todo.path);
            let cached = match (read, prev) {
                (Read::Unchanged, Some(prev)) => {
                    stats.rechecked += 1;
                    Cached {
                        stamp: todo.stamp,
                        racy,
                        ..prev
                    }
                }
                // `Unchanged` needs a cached hash; left uncached, the file is parsed next time.
                (Read::Unchanged, None) => continue,
                (Read::Parsed(parsed, content), prev) => {
                    stats.parsed += 1;
                    stats.new_errors += parsed.errors.len();
                    let old = prev.as_ref().map(|c| &*c.parsed);
                    let merged = reuse_unchanged(keep_last_good(parsed, old), old);
                    let parsed = match prev {
                        // Same objects and diagnostics: keep the old ones (and their Arcs).
                        Some(prev) if *prev.parsed == merged => prev.parsed,
                        prev => {
                            let new = Arc::new(merged);
                            changed.push((prev.map(|c| c.parsed), Some(Arc::clone(&new))));
                            new
                        }
                    };
                    Cached {
                        stamp: todo.stamp,
                        content,
                        racy,
                        parsed,
                    }
                }
            };
            self.files.insert(todo.path, cached);
        }
        stats.parse_time = started.elapsed();
        if changed.is_empty() && self.current.version > 0 {
            return Ok((None, stats));
        }
        let build_started = Instant::now();
        let mut next = self.build_snapshot(&changed);
        next.changed_at = Some(started);
        stats.build_time = build_started.elapsed();
        // Ports and frontend indexes derive from the services alone, so comparing services
        // (stopping at the first difference; unchanged ones are often the same Arc) says
        // whether a consumer would see anything new. Cheaper than a full `diff`.
        let changed = self.current.version == 0
            || next.services() != self.current.services()
            || next.diagnostics != self.current.diagnostics;
        stats.changed = changed;
        if !changed {
            return Ok((None, stats));
        }
        self.current = Arc::new(next);
        Ok((Some(self.current.clone()), stats))
    }

    fn build_snapshot(&mut self, changed: &[Changed]) -> Snapshot {
        let mut diagnostics = Diagnostics {
            files: self.files.len(),
            ..Diagnostics::default()
        };
        for c in self.files.values() {
            diagnostics.errors.extend(c.parsed.errors.iter().cloned());
            diagnostics
                .warnings
                .extend(c.parsed.warnings.iter().cloned());
        }
        let changes: Vec<FileChange<'_>> = changed
            .iter()
            .map(|(old, new)| FileChange {
                old: old.as_deref(),
                new: new.as_deref(),
            })
            .collect();
        self.resolver
            .update(self.current.version + 1, &changes, diagnostics)
    }
}

/// Objects of a re-parsed file that equal their previous version keep the previous `Arc`,
/// so the resolver sees them as untouched.
fn reuse_unchanged(mut parsed: ParsedFile, prev: Option<&ParsedFile>) -> ParsedFile {
    let Some(prev) = prev else { return parsed };
    for o in &mut parsed.objects {
        if let Some(old) = prev
            .objects
            .iter()
            .find(|p| p.identity() == o.identity() && *p == o)
        {
            *o = old.clone();
        }
    }
    parsed
}

/// A fresh parse keeps the previous version of objects it now rejects, and all previous
/// objects when the file no longer parses at all: one bad edit never removes good state.
fn keep_last_good(mut parsed: ParsedFile, prev: Option<&ParsedFile>) -> ParsedFile {
    let Some(prev) = prev else { return parsed };
    if !parsed.syntax_ok {
        parsed.objects = prev.objects.clone();
        for e in &mut parsed.errors {
            e.reason
                .push_str("; keeping the objects last loaded from this file");
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
                if e.kind.as_deref() == Some(*kind)
                    && e.object.as_deref() == Some(&format!("{ns}/{name}"))
                {
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

fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// Reads a file and parses it, unless its bytes hash to `known`.
fn read_and_parse(path: &Path, known: Option<u64>, opts: &ParseOptions) -> Read {
    let label: Arc<Path> = Arc::from(path);
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Read::Parsed(unreadable(&label, format!("cannot read file: {e}")), None);
        }
    };
    let content = content_hash(&bytes);
    if known == Some(content) {
        return Read::Unchanged;
    }
    let parsed = match String::from_utf8(bytes) {
        // A parser panic is a bug; it costs this file (whose last good objects are kept),
        // not the reload, nor the watcher.
        Ok(text) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parse_file(&label, &text, opts)
        }))
        .unwrap_or_else(|_| unreadable(&label, "internal parser error".into())),
        Err(e) => unreadable(&label, format!("not UTF-8 text: {e}")),
    };
    Read::Parsed(parsed, Some(content))
}

fn unreadable(label: &Arc<Path>, reason: String) -> ParsedFile {
    ParsedFile {
        errors: vec![ConfigError::file(label, None, reason)],
        syntax_ok: false,
        ..ParsedFile::default()
    }
}

/// Reads (and parses) files on every core when there are enough of them to be worth a
/// thread.
fn read_parallel(todo: &[Todo], opts: &ParseOptions) -> Vec<Read> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let read = |t: &Todo| read_and_parse(&t.path, t.known, opts);
    if todo.len() < 8 || threads == 1 {
        return todo.iter().map(read).collect();
    }
    // Files differ in size: hand them out one at a time from a shared counter so no thread
    // idles while another still has a queue (fixed chunks left one core idle at the end).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Read>> = std::iter::repeat_with(|| None).take(todo.len()).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(todo.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(t) = todo.get(i) else { break };
                        done.push((i, read(t)));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            // A parser panic is a bug; the files that thread had not returned are reported
            // below instead of taking the daemon down.
            if let Ok(done) = w.join() {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
        }
    });
    results
        .into_iter()
        .zip(todo)
        .map(|(r, t)| {
            r.unwrap_or_else(|| {
                let label = Arc::from(t.path.as_path());
                Read::Parsed(unreadable(&label, "internal parser error".into()), None)
            })
        })
        .collect()
}
