//! Applies each published snapshot to DNS and the data plane in the order that keeps DNS
//! consistent with routing (the rules are `svcplane_dns::gate`'s):
//!
//! 1. DNS takes `{programmed: P, pending: N}`: it stops answering what N removes and does
//!    not answer yet what N adds; the step ends when DNS reports it answers from that;
//! 2. the data plane programs N; the step ends when it reports N's version programmed;
//! 3. DNS takes `{programmed: N}` and answers all of N.
//!
//! One snapshot is in flight at a time; snapshots published meanwhile are skipped for the
//! latest (the watch channel keeps only that). With no data plane (`--mode none`), DNS
//! takes each snapshot whole at once.

use std::sync::Arc;

use svcplane_config::Snapshot;
use svcplane_dns::DnsSource;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The data plane's side: where snapshots go and where it reports the version programmed.
#[derive(Debug)]
pub(crate) struct Plane {
    pub(crate) snapshots: watch::Sender<Arc<Snapshot>>,
    pub(crate) programmed: watch::Receiver<u64>,
}

/// Runs until `cancel`, or until the watcher or a consumer goes away. `settled` gets each
/// version once both DNS and the data plane answer it.
pub(crate) async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    dns: watch::Sender<DnsSource>,
    mut dns_applied: watch::Receiver<u64>,
    mut plane: Option<Plane>,
    settled: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut programmed = Arc::new(Snapshot::default());
    let mut seq = 0;
    loop {
        let next = snapshots.borrow_and_update().clone();
        if next.version > programmed.version {
            if let Some(plane) = plane.as_mut() {
                seq += 1;
                dns.send_replace(DnsSource {
                    seq,
                    programmed: Arc::clone(&programmed),
                    pending: Some(Arc::clone(&next)),
                });
                if !wait_for(&mut dns_applied, seq, &cancel).await {
                    return;
                }
                plane.snapshots.send_replace(Arc::clone(&next));
                if !wait_for(&mut plane.programmed, next.version, &cancel).await {
                    return;
                }
            }
            seq += 1;
            dns.send_replace(DnsSource::settled(seq, Arc::clone(&next)));
            if !wait_for(&mut dns_applied, seq, &cancel).await {
                return;
            }
            settled.send_replace(next.version);
            programmed = next;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            res = snapshots.changed() => if res.is_err() { return },
        }
    }
}

/// Waits until `rx` reports at least `want`; false when cancelled or the sender is gone.
async fn wait_for(rx: &mut watch::Receiver<u64>, want: u64, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        res = rx.wait_for(|&v| v >= want) => res.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snap(version: u64) -> Arc<Snapshot> {
        let mut s = Snapshot::default();
        s.version = version;
        Arc::new(s)
    }

    /// Each step waits for the previous one's report, in the order of the module docs.
    #[tokio::test]
    async fn dns_gates_then_plane_programs_then_dns_settles() {
        let (snap_tx, snap_rx) = watch::channel(snap(1));
        let (dns_tx, mut dns_rx) = watch::channel(DnsSource::default());
        let (applied_tx, applied_rx) = watch::channel(0);
        let (plane_tx, mut plane_rx) = watch::channel(snap(0));
        let (prog_tx, prog_rx) = watch::channel(0);
        let (settled_tx, mut settled) = watch::channel(0);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            snap_rx,
            dns_tx,
            applied_rx,
            Some(Plane {
                snapshots: plane_tx,
                programmed: prog_rx,
            }),
            settled_tx,
            cancel.clone(),
        ));
        let short = Duration::from_millis(50);

        // Step 1: DNS gets the pending view; the plane gets nothing until DNS applies it.
        dns_rx.changed().await.unwrap();
        let src = dns_rx.borrow_and_update().clone();
        assert_eq!(
            (
                src.programmed.version,
                src.pending.as_ref().map(|p| p.version)
            ),
            (0, Some(1))
        );
        assert!(
            tokio::time::timeout(short, plane_rx.changed())
                .await
                .is_err()
        );
        applied_tx.send_replace(src.seq);
        // Step 2: the plane gets it; DNS is not settled until the plane reports.
        plane_rx.changed().await.unwrap();
        assert_eq!(plane_rx.borrow_and_update().version, 1);
        assert!(tokio::time::timeout(short, dns_rx.changed()).await.is_err());
        prog_tx.send_replace(1);
        // Step 3: DNS takes all of it; `settled` follows DNS's report.
        dns_rx.changed().await.unwrap();
        let src = dns_rx.borrow_and_update().clone();
        assert!(src.pending.is_none());
        assert_eq!(src.programmed.version, 1);
        assert_eq!(*settled.borrow_and_update(), 0);
        applied_tx.send_replace(src.seq);
        settled.changed().await.unwrap();
        assert_eq!(*settled.borrow(), 1);

        // The next snapshot starts from the programmed one.
        snap_tx.send_replace(snap(2));
        dns_rx.changed().await.unwrap();
        let src = dns_rx.borrow_and_update().clone();
        assert_eq!(
            (
                src.programmed.version,
                src.pending.as_ref().map(|p| p.version)
            ),
            (1, Some(2))
        );
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn without_a_data_plane_dns_takes_each_snapshot_whole() {
        let (_snap_tx, snap_rx) = watch::channel(snap(3));
        let (dns_tx, mut dns_rx) = watch::channel(DnsSource::default());
        let (applied_tx, applied_rx) = watch::channel(0);
        let (settled_tx, mut settled) = watch::channel(0);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            snap_rx,
            dns_tx,
            applied_rx,
            None,
            settled_tx,
            cancel.clone(),
        ));
        dns_rx.changed().await.unwrap();
        let src = dns_rx.borrow_and_update().clone();
        assert!(src.pending.is_none());
        assert_eq!(src.programmed.version, 3);
        applied_tx.send_replace(src.seq);
        settled.changed().await.unwrap();
        assert_eq!(*settled.borrow(), 3);
        cancel.cancel();
        task.await.unwrap();
    }
}
