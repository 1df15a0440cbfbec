//! Data-path threads: one current-thread tokio runtime per core. Every frontend gets one
//! socket per worker (SO_REUSEPORT), and a connection lives on the worker that accepted it,
//! so the data path never wakes another thread.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` (at least 1) worker threads.
    pub(crate) fn start(n: usize) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let mut workers = Workers {
            handles: Vec::new(),
            threads: Vec::new(),
            stop: stop.clone(),
        };
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("svcplane-proxy-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.spawn(keep_timer_armed());
                    // Runs every task spawned on this worker until the proxy stops; what is
                    // still open then is dropped with the runtime.
                    rt.block_on(stop.cancelled());
                })?;
            workers.threads.push(thread);
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("proxy worker thread died at start"))??;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops every worker (dropping what still runs on them) and waits for the threads.
    pub(crate) fn shutdown(mut self) {
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Keeps one timer pending at all times, due sooner than any connect timeout.
///
/// tokio wakes its driver thread (an eventfd write, then an extra epoll round) whenever a
/// new timer is due before every pending one. Between connections no timer is pending, so
/// each connect's timeout would cost that wake-up; with this ticker it never does.
async fn keep_timer_armed() {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
