//! Keeping the snapshot current: a file watcher triggers reloads; snapshots are published
//! over `tokio::sync::watch` (latest wins, nobody queues).
//!
//! Departure from DESIGN.md: `notify` is used without `notify-debouncer-full`. Reloads
//! compare file stamps (see `loader`), so events only say "look again"; rename pairing is
//! not needed, and a short quiet-period wait here replaces the debouncer's polling thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::LoadError;
use crate::loader::{Loader, ReloadStats};
use crate::snapshot::Snapshot;

/// Counters the admin endpoint exports.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Reloads that read at least one file or noticed a removal.
    pub reloads: AtomicU64,
    /// Errors found in files read by reloads, summed over all reloads.
    pub reload_errors: AtomicU64,
    /// Reloads that failed as a whole (manifest path unreadable).
    pub reload_failures: AtomicU64,
    /// Duration of the last reload that read something, in microseconds.
    pub last_reload_micros: AtomicU64,
}

/// Watches a manifest tree and publishes a new snapshot whenever it changes.
/// Dropping the watcher (or calling `stop`) ends the reload task.
#[derive(Debug)]
pub struct ManifestWatcher {
    rx: watch::Receiver<Arc<Snapshot>>,
    stats: Arc<WatchStats>,
    _watcher: RecommendedWatcher,
    task: JoinHandle<()>,
}

impl ManifestWatcher {
    /// Starts watching and loads the tree once. Must be called inside a tokio runtime.
    /// `quiet` is how long to wait for a burst of file events to end before reloading.
    pub fn start(mut loader: Loader, quiet: Duration) -> Result<Self, LoadError> {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let (kick, mut kicks) = mpsc::channel::<()>(1);
        let root = loader.root().to_owned();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let relevant = match res {
                // Our own reads show up as access events; they change nothing.
                Ok(ev) => !matches!(ev.kind, EventKind::Access(_)),
                Err(_) => true,
            };
            if relevant {
                // Full means a reload is already pending: it will see this change too.
                let _ = kick.try_send(());
            }
        })
        .map_err(|source| LoadError::Watch {
            path: root.clone(),
            source,
        })?;
        // A single file is watched through its directory, so a rename-over save is seen.
        let (watched, mode) = match root.parent() {
            Some(dir) if root.is_file() => (dir.to_owned(), RecursiveMode::NonRecursive),
            _ => (root.clone(), RecursiveMode::Recursive),
        };
        let watched = if watched.as_os_str().is_empty() {
            std::path::PathBuf::from(".")
        } else {
            watched
        };
        watcher
            .watch(&watched, mode)
            .map_err(|source| LoadError::Watch {
                path: root.clone(),
                source,
            })?;
        let stats = Arc::new(WatchStats::default());
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            loader = reload(loader, &tx, &task_stats).await;
            while kicks.recv().await.is_some() {
                // Wait until events stop arriving for `quiet`, so a burst is one reload.
                loop {
                    tokio::time::sleep(quiet).await;
                    if kicks.try_recv().is_err() {
                        break;
                    }
                }
                loader = reload(loader, &tx, &task_stats).await;
            }
        });
        Ok(Self {
            rx,
            stats,
            _watcher: watcher,
            task,
        })
    }

    /// A receiver of the latest snapshot (version 0 until the first load finished).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    pub fn stats(&self) -> Arc<WatchStats> {
        self.stats.clone()
    }

    /// Stops watching and waits for a reload in progress to finish.
    pub async fn stop(self) {
        let Self { _watcher, task, .. } = self;
        drop(_watcher);
        let _ = task.await;
    }
}

async fn reload(
    mut loader: Loader,
    tx: &watch::Sender<Arc<Snapshot>>,
    stats: &WatchStats,
) -> Loader {
    let joined = tokio::task::spawn_blocking(move || {
        let res = loader.reload();
        (loader, res)
    })
    .await;
    let (loader, res) = match joined {
        Ok(v) => v,
        // The loader panicked: a bug. Keep serving the last snapshot forever.
        Err(e) => {
            tracing::error!(error = %e, "manifest reload task failed; no further reloads");
            return std::future::pending::<Loader>().await;
        }
    };
    match res {
        Ok((snapshot, s)) => {
            record(stats, &s);
            if let Some(snapshot) = snapshot {
                tracing::debug!(
                    version = snapshot.version,
                    files = s.files,
                    parsed = s.parsed,
                    parse_ms = s.parse_time.as_secs_f64() * 1e3,
                    build_ms = s.build_time.as_secs_f64() * 1e3,
                    "manifests reloaded"
                );
                tx.send_replace(snapshot);
            }
        }
        Err(e) => {
            stats.reload_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "manifest reload failed; keeping the last snapshot");
        }
    }
    loader
}

fn record(stats: &WatchStats, s: &ReloadStats) {
    if s.parsed == 0 && s.removed == 0 {
        return;
    }
    stats.reloads.fetch_add(1, Ordering::Relaxed);
    stats
        .reload_errors
        .fetch_add(s.new_errors as u64, Ordering::Relaxed);
    let micros = (s.parse_time + s.build_time).as_micros();
    stats
        .last_reload_micros
        .store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Relaxed);
}
