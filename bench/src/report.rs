//! Outputs of a run: `results.json` (every record, the summaries, machine facts),
//! `results.md` (one table row per services count and mode) and `ratios.svg` (ratios to
//! `direct`, drawn with plotters' SVG backend).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::load::{Figures, Test};
use crate::modes::Mode;
use crate::stats::{self, Summary};

/// One measurement: a mode, a test, a run, a services count and its figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub mode: Mode,
    pub test: Test,
    pub run: usize,
    pub services: u32,
    pub figures: Figures,
    /// Failed operations (connect errors, timeouts) during the measurement.
    pub errors: u64,
}

/// Facts about the machine that produced the figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    /// 1, 5 and 15 minute load averages when the run started.
    pub load_average: [f64; 3],
    pub unix_time: u64,
    pub svcplane_version: String,
    /// `haproxy -v`, `iptables --version`, `nft --version` when installed.
    pub tools: BTreeMap<String, String>,
}

/// One summarized cell: mode x test x services x figure.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub mode: Mode,
    pub test: Test,
    pub services: u32,
    pub figure: String,
    #[serde(flatten)]
    pub summary: Summary,
    /// Median over the median of `direct` at the same services count.
    pub ratio_to_direct: Option<f64>,
}

/// The whole `results.json`.
#[derive(Debug, Serialize)]
pub struct Results<'a> {
    pub machine: &'a Machine,
    pub config: serde_json::Value,
    pub records: &'a [Record],
    pub summary: Vec<Cell>,
}

/// Summaries of every figure of `records`, with ratios to `direct`.
pub fn summarize(records: &[Record]) -> Vec<Cell> {
    let mut groups: BTreeMap<(u32, Mode, Test, String), Vec<f64>> = BTreeMap::new();
    for r in records {
        for (name, v) in &r.figures {
            groups
                .entry((r.services, r.mode, r.test, name.clone()))
                .or_default()
                .push(*v);
        }
    }
    let medians: BTreeMap<(u32, Mode, Test, String), Summary> = groups
        .iter()
        .filter_map(|(k, v)| stats::summarize(v).map(|s| (k.clone(), s)))
        .collect();
    medians
        .iter()
        .map(|((services, mode, test, figure), summary)| {
            let base = medians.get(&(*services, Mode::Direct, *test, figure.clone()));
            Cell {
                mode: *mode,
                test: *test,
                services: *services,
                figure: figure.clone(),
                summary: *summary,
                ratio_to_direct: base.and_then(|b| stats::ratio(summary.median, b.median)),
            }
        })
        .collect()
}

/// The markdown table's columns: (header, test, figure).
pub const COLUMNS: [(&str, Test, &str); 13] = [
    ("new conn/s", Test::Conn, "conn_per_s"),
    ("CPU µs/conn", Test::Conn, "total_cpu_us_per_op"),
    ("BPF ns/conn", Test::Conn, "bpf_ns_per_op"),
    ("keep-alive req/s", Test::Keepalive, "req_per_s"),
    ("CPU µs/req", Test::Keepalive, "total_cpu_us_per_op"),
    ("proxy CPU µs/req", Test::Keepalive, "proxy_cpu_us_per_op"),
    ("p50 µs", Test::Latency, "p50_us"),
    ("p99 µs", Test::Latency, "p99_us"),
    ("p99.9 µs", Test::Latency, "p999_us"),
    ("bulk Gbit/s", Test::Bulk, "gbit_per_s"),
    ("cold load ms", Test::Program, "cold_ms"),
    ("1 endpoint change ms", Test::Program, "change_ms"),
    ("errors", Test::Conn, "errors"),
];

/// `results.md`: one row per services count and mode, each cell `median [min–max] (ratio)`.
pub fn markdown(machine: &Machine, records: &[Record], cells: &[Cell], modes: &[Mode]) -> String {
    let mut out = format!(
        "# svcplane bench\n\nKernel {}, {} ({} CPUs), load average {:.2} at start, svcplane {}.\n\
         Each cell: median [min–max] over the runs, and (ratio to `direct` at the same services \
         count). Errors: failed operations summed over every test and run.\n\n",
        machine.kernel,
        machine.cpu_model,
        machine.cpus,
        machine.load_average[0],
        machine.svcplane_version
    );
    out.push_str("| services | mode |");
    for (h, _, _) in COLUMNS {
        let _ = write!(out, " {h} |");
    }
    out.push_str("\n| ---: | --- |");
    for _ in COLUMNS {
        out.push_str(" ---: |");
    }
    out.push('\n');
    let index: BTreeMap<(u32, Mode, Test, &str), &Cell> = cells
        .iter()
        .map(|c| ((c.services, c.mode, c.test, c.figure.as_str()), c))
        .collect();
    let mut counts: Vec<u32> = records.iter().map(|r| r.services).collect();
    counts.sort_unstable();
    counts.dedup();
    for services in counts {
        for mode in modes {
            let _ = write!(out, "| {services} | {mode} |");
            for (_, test, figure) in COLUMNS {
                if figure == "errors" {
                    let errors: u64 = records
                        .iter()
                        .filter(|r| r.mode == *mode && r.services == services)
                        .map(|r| r.errors)
                        .sum();
                    let _ = write!(out, " {errors} |");
                    continue;
                }
                let text = match index.get(&(services, *mode, test, figure)) {
                    None => "–".to_string(),
                    Some(c) => {
                        let ratio = match c.ratio_to_direct {
                            Some(r) if *mode != Mode::Direct => format!(" ({r:.2}x)"),
                            _ => String::new(),
                        };
                        format!("{}{ratio}", stats::fmt_summary(&c.summary))
                    }
                };
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
    }
    out
}

/// One DNS measurement: a server at a services count in a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DnsRecord {
    pub server: crate::dns::DnsServer,
    pub run: usize,
    pub services: u32,
    pub figures: Figures,
    /// Queries without an answer.
    pub lost: u64,
}

/// One summarized DNS cell, with the ratio to Knot's median.
#[derive(Clone, Debug, Serialize)]
pub struct DnsCell {
    pub server: crate::dns::DnsServer,
    pub services: u32,
    pub figure: String,
    #[serde(flatten)]
    pub summary: Summary,
    pub ratio_to_knot: Option<f64>,
}

/// Summaries of the DNS records with ratios to Knot.
pub fn summarize_dns(records: &[DnsRecord]) -> Vec<DnsCell> {
    use crate::dns::DnsServer;
    let mut groups: BTreeMap<(u32, DnsServer, String), Vec<f64>> = BTreeMap::new();
    for r in records {
        for (name, v) in &r.figures {
            groups
                .entry((r.services, r.server, name.clone()))
                .or_default()
                .push(*v);
        }
    }
    let medians: BTreeMap<(u32, DnsServer, String), Summary> = groups
        .iter()
        .filter_map(|(k, v)| stats::summarize(v).map(|s| (k.clone(), s)))
        .collect();
    medians
        .iter()
        .map(|((services, server, figure), summary)| DnsCell {
            server: *server,
            services: *services,
            figure: figure.clone(),
            summary: *summary,
            ratio_to_knot: medians
                .get(&(*services, DnsServer::Knot, figure.clone()))
                .and_then(|b| stats::ratio(summary.median, b.median)),
        })
        .collect()
}

/// The DNS table of `results.md`.
pub fn dns_markdown(records: &[DnsRecord], cells: &[DnsCell]) -> String {
    use crate::dns::DnsServer;
    const COLS: [(&str, &str); 5] = [
        ("QPS", "qps"),
        ("server CPU µs/query", "server_cpu_us_per_query"),
        ("p50 µs", "p50_us"),
        ("p99 µs", "p99_us"),
        ("p99.9 µs", "p999_us"),
    ];
    let mut out = String::from(
        "\n## Cluster DNS: svcplane vs Knot (same A records; ratio to Knot)\n\n| services | server |",
    );
    for (h, _) in COLS {
        let _ = write!(out, " {h} |");
    }
    out.push_str(" lost |\n| ---: | --- |");
    for _ in 0..=COLS.len() {
        out.push_str(" ---: |");
    }
    out.push('\n');
    let mut counts: Vec<u32> = records.iter().map(|r| r.services).collect();
    counts.sort_unstable();
    counts.dedup();
    for n in counts {
        for server in [DnsServer::Svcplane, DnsServer::Knot] {
            let _ = write!(out, "| {n} | {} |", server.name());
            for (_, fig) in COLS {
                let text = cells
                    .iter()
                    .find(|c| c.services == n && c.server == server && c.figure == fig)
                    .map_or("–".to_string(), |c| {
                        let ratio = match c.ratio_to_knot {
                            Some(r) if server != DnsServer::Knot => format!(" ({r:.2}x)"),
                            _ => String::new(),
                        };
                        format!("{}{ratio}", stats::fmt_summary(&c.summary))
                    });
                let _ = write!(out, " {text} |");
            }
            let lost: u64 = records
                .iter()
                .filter(|r| r.services == n && r.server == server)
                .map(|r| r.lost)
                .sum();
            let _ = writeln!(out, " {lost} |");
        }
    }
    out
}

/// The figures drawn in `ratios.svg`.
const CHART: [(&str, Test, &str); 5] = [
    ("conn/s", Test::Conn, "conn_per_s"),
    ("req/s", Test::Keepalive, "req_per_s"),
    ("p99 latency", Test::Latency, "p99_us"),
    ("bulk", Test::Bulk, "gbit_per_s"),
    ("CPU/req", Test::Keepalive, "total_cpu_us_per_op"),
];

/// `ratios.svg`: for each charted figure and services count, one bar per mode (its median
/// over `direct`'s); the line at 1.0 is `direct`.
pub fn svg(cells: &[Cell], modes: &[Mode], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| BenchError::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let bars: Vec<Mode> = modes
        .iter()
        .copied()
        .filter(|m| *m != Mode::Direct)
        .collect();
    let mut counts: Vec<u32> = cells.iter().map(|c| c.services).collect();
    counts.sort_unstable();
    counts.dedup();
    // Groups: figure x services count.
    let groups: Vec<(String, Test, &str, u32)> = CHART
        .iter()
        .flat_map(|(label, test, fig)| {
            counts
                .iter()
                .map(move |n| (format!("{label} @{n}"), *test, *fig, *n))
        })
        .collect();
    let value = |mode: Mode, test: Test, fig: &str, n: u32| {
        cells
            .iter()
            .find(|c| c.mode == mode && c.test == test && c.figure == fig && c.services == n)
            .and_then(|c| c.ratio_to_direct)
    };
    // A log scale: 0.5x and 2x are as far from 1.0 (direct); bars grow from the 1.0 line.
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|(_, t, f, n)| bars.iter().filter_map(move |m| value(*m, *t, f, *n)))
        .filter(|v| *v > 0.0)
        .collect();
    let ymax = values.iter().copied().fold(2.0f64, f64::max) * 1.3;
    let ymin = values.iter().copied().fold(0.5f64, f64::min) / 1.3;
    let width = (120 * groups.len().max(1) as u32).clamp(640, 2400);
    let root = SVGBackend::new(path, (width, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "svcplane bench: median / direct's median at the same services count (1.0 = direct)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, (ymin..ymax).log_scale())
        .map_err(|e| err(&e))?;
    let labels: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("x direct (log scale; rates: higher is better, latency/CPU: lower)")
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()
        .map_err(|e| err(&e))?;
    let width_per_bar = 0.8 / bars.len().max(1) as f64;
    for (b, mode) in bars.iter().enumerate() {
        let color = Palette99::pick(b).to_rgba();
        let rects: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, (_, t, f, n))| {
                let v = value(*mode, *t, f, *n)?;
                let x0 = g as f64 + 0.1 + b as f64 * width_per_bar;
                Some(Rectangle::new(
                    [(x0, 1.0), (x0 + width_per_bar * 0.9, v)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(|e| err(&e))?
            .label(mode.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(0.0, 1.0), (groups.len().max(1) as f64, 1.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(mode: Mode, test: Test, run: usize, fig: &str, v: f64) -> Record {
        Record {
            mode,
            test,
            run,
            services: 0,
            figures: [(fig.to_string(), v)].into_iter().collect(),
            errors: 0,
        }
    }

    #[test]
    fn cells_carry_ratios_to_direct() {
        let records = vec![
            rec(Mode::Direct, Test::Conn, 0, "conn_per_s", 100.0),
            rec(Mode::Direct, Test::Conn, 1, "conn_per_s", 120.0),
            rec(Mode::Userspace, Test::Conn, 0, "conn_per_s", 50.0),
            rec(Mode::Userspace, Test::Conn, 1, "conn_per_s", 60.0),
            rec(Mode::Userspace, Test::Conn, 2, "conn_per_s", 70.0),
        ];
        let cells = summarize(&records);
        let u = cells.iter().find(|c| c.mode == Mode::Userspace).unwrap();
        assert_eq!(u.summary.median, 60.0);
        assert_eq!(u.ratio_to_direct, Some(60.0 / 110.0));
        let machine = Machine {
            kernel: "k".into(),
            cpu_model: "c".into(),
            cpus: 2,
            load_average: [0.0; 3],
            unix_time: 0,
            svcplane_version: "v".into(),
            tools: BTreeMap::new(),
        };
        let md = markdown(&machine, &records, &cells, &[Mode::Direct, Mode::Userspace]);
        assert!(
            md.contains("| 0 | userspace | 60.00 [50.00–70.00] (0.55x) |"),
            "{md}"
        );
        assert!(md.contains("| 0 | direct | 110.0 [100.0–120.0] |"), "{md}");
        let dir = std::env::temp_dir().join(format!("svb-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.svg");
        svg(&cells, &[Mode::Direct, Mode::Userspace], &p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..50.min(text.len())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
