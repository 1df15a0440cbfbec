//! Prints the kube-proxy ruleset the bench loads for N filler Services, to inspect it or to
//! time `iptables-restore` / `nft -f` by hand.
//!
//! ```sh
//! ruleset iptables|nftables|iptables-change|nftables-change N > rules.txt
//! ```

use svcplane_bench::{rules, services};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, kind, n] = args.as_slice() else {
        return Err("usage: ruleset iptables|nftables N".into());
    };
    let n: u32 = n.parse().map_err(|e| format!("{n}: {e}"))?;
    let svcs = services::service_set(n, svcplane_bench::topology::BACKENDS);
    match kind.as_str() {
        "iptables" => print!("{}", rules::iptables_ruleset(&svcs)),
        "nftables" => print!("{}", rules::nft_ruleset(&svcs)),
        "iptables-change" => print!(
            "{}",
            rules::iptables_change(&services::probe(false), &services::probe(true))
        ),
        "nftables-change" => print!(
            "{}",
            rules::nft_change(&services::probe(false), &services::probe(true))
        ),
        other => return Err(format!("{other}: iptables or nftables")),
    }
    Ok(())
}
