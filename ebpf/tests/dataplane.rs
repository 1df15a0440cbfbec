//! End-to-end tests of the eBPF data plane: real programs on a child cgroup, clients in a
//! network namespace (see `common`). Need root; skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::{Backend, Env, require_root, service, wait_programmed};

fn names(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_robin_is_exact() {
    if !require_root() {
        return;
    }
    let mut env = Env::new();
    let _b: Vec<Backend> = (1..=3)
        .map(|i| {
            Backend::start(
                &env.ns,
                &format!("b{i}"),
                &format!("127.0.0.{}:8080", i + 1),
            )
        })
        .collect();
    let v = env.publish(&service(
        "web",
        &["10.96.0.10"],
        &[
            ("127.0.0.2", true),
            ("127.0.0.3", true),
            ("127.0.0.4", true),
        ],
    ));
    let dp = env.start().await;
    wait_programmed(&dp, v).await;
    let lines = env.client(&["tcp", "10.96.0.10", "80", "9"]);
    let got = names(&lines);
    assert_eq!(got.len(), 9, "{lines:?}");
    // Exact rotation: every window of 3 holds each backend once, in the same order.
    for w in got.chunks(3) {
        let mut s = w.to_vec();
        s.sort();
        assert_eq!(s, ["b1", "b2", "b3"], "{got:?}");
        assert_eq!(w, &got[..3], "{got:?}");
    }
}
