//! The bench's load generator alone, against any address from any network namespace: to
//! compare it with other generators (e.g. `wrk`) on the same server.
//!
//! ```sh
//! loadgen NETNS ADDR:PORT conn|keepalive|latency|bulk [SECONDS] [CPU]
//! ```

use std::time::Duration;

use svcplane_bench::{LoadOptions, Test, load};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, ns, addr, test, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: loadgen NETNS ADDR:PORT conn|keepalive|latency|bulk [SECONDS] [CPU]".into(),
        );
    };
    let secs: f64 = rest
        .first()
        .map_or(Ok(3.0), |s| s.parse())
        .map_err(|e| format!("{e}"))?;
    let cpu: Option<usize> = rest
        .get(1)
        .map(|c| c.parse())
        .transpose()
        .map_err(|e| format!("{e}"))?;
    let test: Test = test.parse()?;
    let opts = LoadOptions {
        duration: Duration::from_secs_f64(secs),
        connections: 32,
        rate: 5000,
        bulk_bytes: 64 << 20,
        cpu,
    };
    let target = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let (figures, errors) =
        load::measure(ns, target, test, &opts, None).map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::json!({"figures": figures, "errors": errors})
    );
    Ok(())
}
