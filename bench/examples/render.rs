//! Redraws `ratios.svg` (and prints the markdown table) from a run's `results.json`.
//!
//! ```sh
//! render DIR        # reads DIR/results.json, writes DIR/ratios.svg
//! ```

use std::path::PathBuf;

use svcplane_bench::{Machine, Mode, Record, report};

fn main() -> Result<(), String> {
    let dir: PathBuf = std::env::args().nth(1).ok_or("usage: render DIR")?.into();
    let text = std::fs::read_to_string(dir.join("results.json")).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let records: Vec<Record> =
        serde_json::from_value(v["records"].clone()).map_err(|e| e.to_string())?;
    let machine: Machine =
        serde_json::from_value(v["machine"].clone()).map_err(|e| e.to_string())?;
    let modes: Vec<Mode> =
        serde_json::from_value(v["config"]["modes"].clone()).map_err(|e| e.to_string())?;
    let cells = report::summarize(&records);
    report::svg(&cells, &modes, &dir.join("ratios.svg")).map_err(|e| e.to_string())?;
    print!("{}", report::markdown(&machine, &records, &cells, &modes));
    Ok(())
}
