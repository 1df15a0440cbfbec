//! What a start says when something it needs is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use std::sync::Arc;

use svcplane_config::Snapshot;
use svcplane_ebpf::{EbpfDataPlane, EbpfError, EbpfOptions};
use tokio::sync::watch;

async fn start(opts: EbpfOptions) -> Result<EbpfDataPlane, EbpfError> {
    let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    EbpfDataPlane::start(opts, rx).await
}

#[tokio::test]
async fn a_cgroup_that_is_not_cgroup2_is_named() {
    if !common::require_root() {
        return;
    }
    let pins = common::PinRoot::new();
    let err = start(EbpfOptions {
        pin_root: pins.path.clone(),
        cgroup: Some("/tmp".into()),
        ..EbpfOptions::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, EbpfError::NotCgroup2 { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("/tmp") && msg.contains("findmnt -t cgroup2"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_pin_root_off_bpffs_is_named() {
    if !common::require_root() {
        return;
    }
    let cg = common::Cgroup::new();
    let dir = tempfile::tempdir().unwrap();
    let err = start(EbpfOptions {
        pin_root: dir.path().join("pins"),
        cgroup: Some(cg.path.clone()),
        ..EbpfOptions::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, EbpfError::Bpffs { .. }), "{err}");
    assert!(
        err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
        "{err}"
    );
}
