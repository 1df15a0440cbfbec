//! Times `DnsTable::build` on a manifest directory: `cargo run --release -p svcplane-dns
//! --example table_build -- DIR`.
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: table_build DIR"))?;
    let mut loader = svcplane_config::Loader::new(dir, svcplane_config::ParseOptions::default());
    loader.reload()?;
    let snap = loader.snapshot().clone();
    let cfg = svcplane_dns::DnsConfig::new("cluster.local", 5).map_err(anyhow::Error::msg)?;
    let mut builder = svcplane_dns::table::TableBuilder::new(cfg);
    for round in 0..3 {
        let t = Instant::now();
        let table = builder.build(&snap);
        let what = if round == 0 {
            "cold"
        } else {
            "unchanged snapshot"
        };
        println!(
            "{what}: {} names in {:.1} ms",
            table.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
