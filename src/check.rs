//! `svcplane check PATH... [-o wide]`: load manifests once, list every problem.

use std::fmt::Write as _;
use std::process::ExitCode;

use svcplane_config::{AllocOptions, Loader, ParseOptions, ServiceType, Snapshot, TargetPort};

use crate::cli::{CheckArgs, CheckOutput};

pub(crate) fn main(args: CheckArgs) -> ExitCode {
    let opts = ParseOptions {
        node_port_range: args.nodeport_range,
    };
    let alloc = AllocOptions {
        service_cidrs: args.service_cidrs.clone(),
        ..AllocOptions::default()
    };
    let mut loader = match Loader::with_allocation(args.paths.clone(), opts, alloc) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("svcplane check: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let snapshot = match loader.reload() {
        Ok(_) => loader.snapshot().clone(),
        Err(e) => {
            eprintln!("svcplane check: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let d = &snapshot.diagnostics;
    for w in &d.warnings {
        eprintln!("warning: {w}");
    }
    for e in &d.errors {
        eprintln!("error: {e}");
    }
    if args.output == Some(CheckOutput::Wide) {
        print!("{}", wide_table(&snapshot));
    }
    println!("{}", summary(&snapshot));
    if d.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `OK: 3 files, 4 services (1 headless, 1 ExternalName), 5 ports, 6 endpoints, 0 warnings`.
pub(crate) fn summary(s: &Snapshot) -> String {
    let d = &s.diagnostics;
    let svcs = s.services();
    let headless = svcs.values().filter(|v| v.def.headless).count();
    let ext = svcs
        .values()
        .filter(|v| v.def.type_ == ServiceType::ExternalName)
        .count();
    let ports: usize = svcs.values().map(|v| v.def.ports.len()).sum();
    let status = if d.errors.is_empty() {
        "OK".to_owned()
    } else {
        format!("FAILED ({} errors)", d.errors.len())
    };
    format!(
        "{status}: {} files, {} services ({headless} headless, {ext} ExternalName), {ports} ports, {} endpoints, {} warnings",
        d.files,
        svcs.len(),
        s.endpoint_count(),
        d.warnings.len()
    )
}

/// One row per Service, like `kubectl get svc -o wide` plus where endpoints came from.
pub(crate) fn wide_table(s: &Snapshot) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "ENDPOINTS",
        "SOURCE",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(str::to_owned)];
    for svc in s.services().values() {
        let def = &svc.def;
        let join = |ips: &[std::net::IpAddr]| {
            ips.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let cluster_ip = if def.headless {
            "None".to_owned()
        } else if def.cluster_ips.is_empty() {
            "<none>".to_owned()
        } else {
            join(&def.cluster_ips)
        };
        let mut external: Vec<String> = Vec::new();
        if let Some(n) = &def.external_name {
            external.push(n.to_string());
        }
        external.extend(
            def.load_balancer_ips
                .iter()
                .chain(&def.external_ips)
                .map(|i| i.to_string()),
        );
        let external = if external.is_empty() {
            "<none>".to_owned()
        } else {
            external.join(",")
        };
        let ports = def
            .ports
            .iter()
            .map(|p| {
                let mut out = p.port.to_string();
                if let Some(np) = p.node_port {
                    let _ = write!(out, ":{np}");
                }
                if p.target_port != TargetPort::Number(p.port) {
                    let _ = write!(out, "->{}", p.target_port);
                }
                let _ = write!(out, "/{}", p.protocol);
                out
            })
            .collect::<Vec<_>>()
            .join(",");
        let ready = svc.endpoints.iter().filter(|e| e.conditions.ready).count();
        rows.push([
            def.key.namespace.to_string(),
            def.key.name.to_string(),
            format!("{:?}", def.type_),
            cluster_ip,
            external,
            if ports.is_empty() {
                "<none>".into()
            } else {
                ports
            },
            format!("{} ({ready} ready)", svc.endpoints.len()),
            format!("{:?}", svc.endpoint_source),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}
