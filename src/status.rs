//! `svcplane status`: what the running daemon has programmed, per frontend and endpoint,
//! read from its admin endpoint (`/debug/proxy`), as a table like `ipvsadm -Ln` or as JSON.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::cli::{StatusArgs, StatusOutput};

pub(crate) fn main(args: StatusArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svcplane status: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &StatusArgs) -> anyhow::Result<()> {
    let body = get(args.admin, "/debug/proxy")
        .with_context(|| format!("cannot read the admin endpoint at {}", args.admin))?;
    let status: Value = serde_json::from_str(&body)
        .with_context(|| format!("{} answered something that is not JSON", args.admin))?;
    match args.output {
        StatusOutput::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        StatusOutput::Table => print!("{}", table(&status)),
    }
    Ok(())
}

/// A plain HTTP/1.1 GET (the admin endpoint is local and tiny; no client library needed).
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.split(' ').nth(1).unwrap_or("?");
    if status != "200" {
        anyhow::bail!("{path}: HTTP {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

fn table(status: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    // Counters the data plane does not keep (the eBPF mode counts only new connections).
    let c = |v: &Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
    let mut out = format!(
        "mode {}, snapshot version {}\n",
        s(&status["mode"]),
        n(&status["version"])
    );
    let empty = Vec::new();
    let frontends = status["frontends"].as_array().unwrap_or(&empty);
    if frontends.is_empty() {
        out.push_str("no frontends\n");
        return out;
    }
    out.push_str(&format!(
        "{:<5} {:<40} {:<13} {}\n",
        "PROT", "FRONTEND", "KIND", "SERVICE"
    ));
    out.push_str(&format!(
        "  -> {:<38} {:<13} {:>6} {:>9} {:>7} {:>12} {:>12}\n",
        "ENDPOINT", "STATE", "ACTIVE", "TOTAL", "FAILED", "BYTES-IN", "BYTES-OUT"
    ));
    for f in frontends {
        out.push_str(&format!(
            "{:<5} {:<40} {:<13} {}:{}\n",
            s(&f["protocol"]),
            s(&f["frontend"]),
            s(&f["kind"]),
            s(&f["service"]),
            n(&f["port"])
        ));
        for e in f["endpoints"].as_array().unwrap_or(&empty) {
            let mut state = s(&e["state"]);
            if state == "ejected" {
                state = format!("ejected {}s", n(&e["ejected_ms"]).div_ceil(1000));
            }
            if e["routed"] == Value::Bool(false) {
                state.push_str(" (unused)");
            }
            out.push_str(&format!(
                "  -> {:<38} {:<13} {:>6} {:>9} {:>7} {:>12} {:>12}\n",
                s(&e["endpoint"]),
                state,
                c(&e["active"]),
                c(&e["connections"]),
                c(&e["connect_failures"]),
                c(&e["bytes_to_endpoint"]),
                c(&e["bytes_to_client"])
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_frontends_endpoints_and_states() {
        let status = serde_json::json!({
            "mode": "userspace", "version": 7,
            "frontends": [{
                "protocol": "TCP", "frontend": "10.96.0.10:80", "kind": "ClusterIP",
                "service": "default/web", "port": 80,
                "endpoints": [
                    {"endpoint": "10.0.0.1:8080", "state": "ready", "routed": true,
                     "ejected_ms": 0, "active": 2, "connections": 10, "connect_failures": 0,
                     "bytes_to_endpoint": 100, "bytes_to_client": 2000},
                    {"endpoint": "10.0.0.2:8080", "state": "ejected", "routed": true,
                     "ejected_ms": 1500, "active": 0, "connections": 3, "connect_failures": 4,
                     "bytes_to_endpoint": 0, "bytes_to_client": 0},
                    {"endpoint": "10.0.0.3:8080", "state": "not-ready", "routed": false,
                     "ejected_ms": 0, "active": 0, "connections": 0, "connect_failures": 0,
                     "bytes_to_endpoint": 0, "bytes_to_client": 0}
                ]
            }]
        });
        let t = table(&status);
        assert!(t.starts_with("mode userspace, snapshot version 7\n"), "{t}");
        assert!(t.contains("TCP   10.96.0.10:80"), "{t}");
        assert!(t.contains("default/web:80"), "{t}");
        let line = |ep: &str| t.lines().find(|l| l.contains(ep)).unwrap().to_string();
        let ready = line("10.0.0.1:8080");
        let ready: Vec<&str> = ready.split_whitespace().collect();
        assert_eq!(ready[2..], ["ready", "2", "10", "0", "100", "2000"]);
        assert!(line("10.0.0.2:8080").contains("ejected 2s"), "{t}");
        assert!(line("10.0.0.3:8080").contains("not-ready (unused)"), "{t}");
    }

    #[test]
    fn no_frontends_says_so() {
        let t = table(&serde_json::json!({"mode": "none", "version": 1, "frontends": []}));
        assert_eq!(t, "mode none, snapshot version 1\nno frontends\n");
    }
}
