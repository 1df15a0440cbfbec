//! YAML throughput on a directory of manifests: granit-parser events alone, serde-saphyr's
//! `from_multiple::<Spanned<Value>>` (what `parse_file` used before) and `yaml::documents`.
//!
//! `cargo run --release -p svcplane-config --example yaml_speed -- DIR [REPS [ONLY]]`, where
//! ONLY (`events`, `saphyr`, `ours`, `values` or `parse_file`) times just one of them, for
//! profiling. `parse_file` is the whole per-file parse (YAML, k8s types, validation), for
//! scale; `values` is the same through `serde_json::Value` (the path the fast one replaced).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use svcplane_config::{ParseOptions, parse_file, parse_file_via_values, yaml};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: yaml_speed DIR [REPS [ONLY]]")?;
    let reps: usize = args.next().map_or(Ok(5), |r| r.parse())?;
    let only = args.next();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut paths = Vec::new();
    walk(Path::new(&dir), &mut paths)?;
    paths.sort();
    let texts = paths
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<Vec<_>, _>>()?;
    let bytes: usize = texts.iter().map(String::len).sum();
    println!(
        "{} files, {:.1} MB, best of {reps}",
        texts.len(),
        bytes as f64 / 1e6
    );

    let opts = ParseOptions::default();
    let labels: Vec<Arc<Path>> = paths.iter().map(|p| Arc::from(p.as_path())).collect();
    // Same documents and objects every way, before timing anything (skipped with ONLY, so
    // a profile shows one of them alone).
    for ((path, label), text) in paths.iter().zip(&labels).zip(&texts) {
        if only.is_some() {
            break;
        }
        let theirs = saphyr(text).map_err(|e| e.to_string());
        let ours = yaml::documents(text).map_err(|e| e.to_string());
        if theirs.is_ok() != ours.is_ok() || theirs.as_ref().ok() != ours.as_ref().ok() {
            bail!("{} reads differently", path.display());
        }
        if parse_file(label, text, &opts) != parse_file_via_values(label, text, &opts) {
            bail!("{} parses differently on the fast path", path.display());
        }
    }

    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    if run("events") {
        let events = best(reps, || {
            for t in &texts {
                for ev in serde_saphyr::granit_parser::Parser::new_from_str(t) {
                    std::hint::black_box(ev.is_ok());
                }
            }
        });
        println!("granit events only:      {:6.1} MB/s", rate(events));
    }
    if run("saphyr") {
        let theirs = best(reps, || {
            for t in &texts {
                std::hint::black_box(saphyr(t).is_ok());
            }
        });
        println!("serde-saphyr (Spanned):  {:6.1} MB/s", rate(theirs));
    }
    if run("ours") {
        let ours = best(reps, || {
            for t in &texts {
                std::hint::black_box(yaml::documents(t).is_ok());
            }
        });
        println!("yaml::documents:         {:6.1} MB/s", rate(ours));
    }
    if run("values") {
        let whole = best(reps, || {
            for (label, t) in labels.iter().zip(&texts) {
                std::hint::black_box(parse_file_via_values(label, t, &opts).objects.len());
            }
        });
        println!("parse_file_via_values:   {:6.1} MB/s", rate(whole));
    }
    if run("parse_file") {
        let whole = best(reps, || {
            for (label, t) in labels.iter().zip(&texts) {
                std::hint::black_box(parse_file(label, t, &opts).objects.len());
            }
        });
        println!("parse_file (all of it):  {:6.1} MB/s", rate(whole));
    }
    Ok(())
}

fn saphyr(text: &str) -> Result<Vec<(usize, Value)>, serde_saphyr::Error> {
    let docs = serde_saphyr::from_multiple::<serde_saphyr::Spanned<Value>>(text)?;
    Ok(docs
        .into_iter()
        .map(|d| (d.referenced.line() as usize, d.value))
        .collect())
}

fn best(reps: usize, mut f: impl FnMut()) -> Duration {
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}
