//! kube-proxy's rulesets, generated from a Service set: the iptables mode's chain structure
//! (KUBE-SERVICES -> KUBE-SVC-* with `statistic` probabilities -> KUBE-SEP-* DNAT, with the
//! KUBE-MARK-MASQ / KUBE-POSTROUTING masquerade marks) and the nftables mode's layout (a
//! `service-ips` verdict map, one chain per Service with `numgen random mod N vmap`, one
//! chain per endpoint). Pure text generation: applied by `iptables-restore` / `nft -f`.
//!
//! Chain names follow kube-proxy's shape (a 16-character, resp. 8-character, base32 hash of
//! the service port name and protocol); the hash function is not kube-proxy's SHA-256, which
//! changes names, not structure or cost.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::services::Svc;
use crate::topology::CLUSTER_CIDR;

const MASQ_MARK: &str = "0x4000";

/// 80 bits of a 128-bit FNV-1a based hash of `s`, in base32 (A-Z, 2-7), `len` characters.
pub(crate) fn hash32(s: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        s.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let v = (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4));
    (0..len)
        .map(|i| char::from(ALPHABET[((v >> (5 * i)) & 31) as usize]))
        .collect()
}

/// `KUBE-SVC-<hash>` of a service port.
pub fn svc_chain(svc: &Svc) -> String {
    format!(
        "KUBE-SVC-{}",
        hash32(&format!("{}tcp", svc.port_name()), 16)
    )
}

/// `KUBE-SEP-<hash>` of one endpoint of a service port.
pub fn sep_chain(svc: &Svc, ep: Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash32(
            &format!("{}tcp{ep}:{}", svc.port_name(), svc.target_port),
            16
        )
    )
}

/// The probability of the statistic match of endpoint `i` of `n` (kube-proxy's
/// `%0.10f` of 1/(n-i)); the last endpoint has none.
pub fn probability(i: usize, n: usize) -> Option<String> {
    (i + 1 < n).then(|| format!("{:.10}", 1.0 / (n - i) as f64))
}

/// The whole `iptables-restore --noflush` input for `svcs` (nat and filter tables).
pub fn iptables_ruleset(svcs: &[Svc]) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    for hook in ["PREROUTING", "OUTPUT"] {
        let _ = writeln!(
            rules,
            "-A {hook} -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        );
    }
    let _ = writeln!(
        rules,
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
    );
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"
    );
    for svc in svcs {
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -d {}/32 -p tcp -m tcp \
             --dport {} -j {}",
            svc.port_name(),
            svc.vip,
            svc.port,
            svc_chain(svc)
        );
        service_chains(svc, &mut chains, &mut rules);
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    format!("*nat\n{chains}{rules}COMMIT\n{}", filter_table())
}

/// Declarations and rules of one Service's KUBE-SVC chain and its KUBE-SEP chains.
fn service_chains(svc: &Svc, chains: &mut String, rules: &mut String) {
    let svc_chain = svc_chain(svc);
    let name = svc.port_name();
    let _ = writeln!(chains, ":{svc_chain} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {svc_chain} -m comment --comment \"{name} cluster IP\" ! -s {CLUSTER_CIDR} -d {}/32 \
         -p tcp -m tcp --dport {} -j KUBE-MARK-MASQ",
        svc.vip, svc.port
    );
    let n = svc.endpoints.len();
    for (i, ep) in svc.endpoints.iter().enumerate() {
        let sep = sep_chain(svc, *ep);
        let stat = probability(i, n)
            .map(|p| format!(" -m statistic --mode random --probability {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            rules,
            "-A {svc_chain} -m comment --comment \"{name} -> {ep}:{}\"{stat} -j {sep}",
            svc.target_port
        );
    }
    for ep in &svc.endpoints {
        let sep = sep_chain(svc, *ep);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -s {ep}/32 -j KUBE-MARK-MASQ\n\
             -A {sep} -m comment --comment {name} -p tcp -m tcp -j DNAT --to-destination {ep}:{}",
            svc.target_port
        );
    }
}

/// kube-proxy's forwarding rules in the filter table (every forwarded packet meets them).
fn filter_table() -> String {
    format!(
        "*filter\n:KUBE-FORWARD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark \
         {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack \
         --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n"
    )
}

/// kube-proxy's partial sync after `before` became `after` (same Service): its KUBE-SVC
/// chain rewritten, new KUBE-SEP chains added, stale ones deleted.
pub fn iptables_change(before: &Svc, after: &Svc) -> String {
    let (mut chains, mut rules) = (String::new(), String::new());
    service_chains(after, &mut chains, &mut rules);
    let stale: Vec<String> = before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
        .map(|ep| sep_chain(before, *ep))
        .collect();
    // Stale chains are declared (flushed) and then deleted, as kube-proxy writes them.
    for c in &stale {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    let mut out = format!("*nat\n{chains}{rules}");
    for c in &stale {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    out
}

/// The nat table emptied (teardown between slots).
pub fn iptables_flush() -> &'static str {
    "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
     :POSTROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
     :OUTPUT ACCEPT [0:0]\nCOMMIT\n"
}

// === nftables ===

/// The nftables table kube-proxy's nftables mode owns.
pub const NFT_TABLE: &str = "kube-proxy";

/// `service-<hash>-ns/name/tcp/http`.
pub fn nft_service_chain(svc: &Svc) -> String {
    let id = format!("{}/{}/tcp/http", svc.namespace, svc.name);
    format!(
        "service-{}-{id}",
        hash32(&format!("{}tcp", svc.port_name()), 8)
    )
}

/// `endpoint-<hash>-ns/name/tcp/http__IP/PORT`.
pub fn nft_endpoint_chain(svc: &Svc, ep: Ipv4Addr) -> String {
    let id = format!(
        "{}/{}/tcp/http__{ep}/{}",
        svc.namespace, svc.name, svc.target_port
    );
    format!(
        "endpoint-{}-{id}",
        hash32(
            &format!("{}tcp{ep}:{}", svc.port_name(), svc.target_port),
            8
        )
    )
}

/// The whole `nft -f` input for `svcs`.
pub fn nft_ruleset(svcs: &[Svc]) -> String {
    let t = format!("ip {NFT_TABLE}");
    let mut out = format!(
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}\n\
         add chain {t} mark-for-masquerade\n\
         add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}\n\
         add chain {t} masquerading\n\
         add rule {t} masquerading mark and {MASQ_MARK} == 0 return\n\
         add rule {t} masquerading mark set mark xor {MASQ_MARK}\n\
         add rule {t} masquerading masquerade fully-random\n\
         add chain {t} services\n\
         add chain {t} nat-prerouting {{ type nat hook prerouting priority dstnat ; }}\n\
         add rule {t} nat-prerouting jump services\n\
         add chain {t} nat-output {{ type nat hook output priority -100 ; }}\n\
         add rule {t} nat-output jump services\n\
         add chain {t} nat-postrouting {{ type nat hook postrouting priority srcnat ; }}\n\
         add rule {t} nat-postrouting jump masquerading\n\
         add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}\n\
         add rule {t} filter-forward ct state invalid drop\n\
         add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n"
    );
    for svc in svcs {
        nft_service(svc, &[], &mut out);
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {} . tcp . {} : goto {} }}",
            svc.vip,
            svc.port,
            nft_service_chain(svc)
        );
    }
    out
}

/// One Service's chain (created or rewritten) and its endpoint chains, except those of
/// `existing` endpoints.
fn nft_service(svc: &Svc, existing: &[Ipv4Addr], out: &mut String) {
    let t = format!("ip {NFT_TABLE}");
    for ep in svc.endpoints.iter().filter(|e| !existing.contains(e)) {
        let c = nft_endpoint_chain(svc, *ep);
        let _ = writeln!(
            out,
            "add chain {t} {c}\n\
             add rule {t} {c} ip saddr {ep} jump mark-for-masquerade\n\
             add rule {t} {c} meta l4proto tcp dnat to {ep}:{}",
            svc.target_port
        );
    }
    let c = nft_service_chain(svc);
    let arms: Vec<String> = svc
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(svc, *ep)))
        .collect();
    let _ = writeln!(
        out,
        "add chain {t} {c}\n\
         add rule {t} {c} ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} jump \
         mark-for-masquerade\n\
         add rule {t} {c} numgen random mod {} vmap {{ {} }}",
        svc.vip,
        svc.port,
        svc.endpoints.len(),
        arms.join(" , ")
    );
}

/// The nft transaction of one endpoint change: the Service chain flushed and rewritten,
/// new endpoint chains added, stale ones deleted.
pub fn nft_change(before: &Svc, after: &Svc) -> String {
    let t = format!("ip {NFT_TABLE}");
    let mut out = format!("flush chain {t} {}\n", nft_service_chain(after));
    nft_service(after, &before.endpoints, &mut out);
    for ep in before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
    {
        let _ = writeln!(out, "delete chain {t} {}", nft_endpoint_chain(before, *ep));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{probe, service_set};

    #[test]
    fn probabilities_are_one_over_the_rest() {
        let p: Vec<_> = (0..3).map(|i| probability(i, 3)).collect();
        assert_eq!(
            p,
            vec![
                Some("0.3333333333".to_string()),
                Some("0.5000000000".to_string()),
                None
            ]
        );
        assert_eq!(probability(0, 1), None);
        assert_eq!(probability(0, 10).as_deref(), Some("0.1000000000"));
        assert_eq!(probability(8, 10).as_deref(), Some("0.5000000000"));
    }

    #[test]
    fn chain_names_have_kube_proxys_shape() {
        let set = service_set(2, crate::topology::BACKENDS);
        let c = svc_chain(&set[0]);
        assert!(c.starts_with("KUBE-SVC-") && c.len() == 9 + 16, "{c}");
        assert!(
            c[9..]
                .chars()
                .all(|ch| ch.is_ascii_uppercase() || ('2'..='7').contains(&ch))
        );
        assert_ne!(svc_chain(&set[0]), svc_chain(&set[1]));
        let s = sep_chain(&set[0], set[0].endpoints[0]);
        assert!(s.starts_with("KUBE-SEP-") && s.len() == 25);
        // iptables chain names are limited to 28 characters.
        assert!(s.len() <= 28);
        assert_ne!(s, sep_chain(&set[0], set[0].endpoints[1]));
    }

    #[test]
    fn iptables_ruleset_structure() {
        let set = service_set(2, crate::topology::BACKENDS);
        let r = iptables_ruleset(&set);
        let web = set.last().unwrap();
        let svc = svc_chain(web);
        // The measured Service's jump is the last service rule of KUBE-SERVICES.
        let jumps: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES") && l.contains("-j KUBE-SVC-"))
            .collect();
        assert_eq!(jumps.len(), 4);
        assert!(jumps[3].ends_with(&svc) && jumps[3].contains("-d 10.96.0.10/32"));
        let svc_rules: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .collect();
        assert_eq!(svc_rules.len(), 4, "masq mark + 3 endpoints");
        assert!(svc_rules[0].contains("-j KUBE-MARK-MASQ"));
        assert!(svc_rules[1].contains("--probability 0.3333333333"));
        assert!(svc_rules[2].contains("--probability 0.5000000000"));
        assert!(!svc_rules[3].contains("statistic"));
        let sep = sep_chain(web, web.endpoints[0]);
        assert!(r.contains(&format!(":{sep} - [0:0]")));
        assert!(r.contains(&format!("-A {sep} -m comment --comment bench/web:http -p tcp -m tcp -j DNAT --to-destination 10.201.0.2:8080")));
        assert!(r.contains("-j MASQUERADE --random-fully"));
        assert!(r.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"));
        // Every declared chain is used, every used chain declared.
        assert_eq!(r.matches(":KUBE-SVC-").count(), 4);
        assert_eq!(r.matches(":KUBE-SEP-").count(), 2 * 10 + 10 + 3);
        assert_eq!(r.matches("COMMIT").count(), 2);
    }

    #[test]
    fn iptables_change_rewrites_one_service() {
        let (a, b) = (probe(false), probe(true));
        let c = iptables_change(&a, &b);
        assert_eq!(c.matches(":KUBE-SVC-").count(), 1);
        assert_eq!(
            c.matches(":KUBE-SEP-").count(),
            11,
            "10 endpoints + the stale one"
        );
        assert!(c.contains(&format!("-X {}", sep_chain(&a, a.endpoints[0]))));
        assert!(c.contains("10.239.1.1:8080"));
    }

    #[test]
    fn nft_ruleset_structure() {
        let set = service_set(1, crate::topology::BACKENDS);
        let r = nft_ruleset(&set);
        assert_eq!(
            r.matches("add element ip kube-proxy service-ips").count(),
            3
        );
        let web = set.last().unwrap();
        let c = nft_service_chain(web);
        assert!(
            c.starts_with("service-") && c.ends_with("-bench/web/tcp/http"),
            "{c}"
        );
        assert!(r.contains(&format!(
            "add rule ip kube-proxy {c} numgen random mod 3 vmap {{ 0 : goto {} , 1 : goto {} , 2 : goto {} }}",
            nft_endpoint_chain(web, web.endpoints[0]),
            nft_endpoint_chain(web, web.endpoints[1]),
            nft_endpoint_chain(web, web.endpoints[2])
        )));
        assert!(r.contains("dnat to 10.201.2.2:8080"));
        assert!(r.lines().last().unwrap().contains("10.96.0.10 . tcp . 80"));
        let ch = nft_change(&probe(false), &probe(true));
        assert!(ch.starts_with("flush chain ip kube-proxy service-"));
        assert_eq!(ch.matches("delete chain").count(), 1);
        assert_eq!(
            ch.matches("dnat to").count(),
            1,
            "only the new endpoint's chain"
        );
    }
}
