//! The records of the Kubernetes DNS-Based Service Discovery specification 1.1.0, one test per
//! rule, through the public API: manifests -> Loader -> Snapshot -> DnsTable -> wire::respond.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic with context"
)]

mod common;

use std::net::IpAddr;

use common::{Ask, ZONE, answers_of, ask, ask_with, authority_soa, fixture, name, table_of};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use svcplane_dns::wire::{Outcome, Transport};

fn ptr_name(ip: &str) -> String {
    Name::from(ip.parse::<IpAddr>().unwrap()).to_ascii()
}

// === A / AAAA ===

#[test]
fn cluster_ip_service_has_an_a_record() {
    let t = fixture();
    let m = ask(&t, "web.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(answers_of(&m, RecordType::A), ["10.96.0.10"]);
    let a = &m.answers[0];
    assert_eq!(a.name, name("web.demo.svc.cluster.local."));
    assert_eq!(a.ttl, 5);
}

#[test]
fn dual_stack_service_has_a_and_aaaa() {
    let t = fixture();
    let a = ask(&t, "dual.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(answers_of(&a, RecordType::A), ["10.96.0.11"]);
    let aaaa = ask(&t, "dual.demo.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(answers_of(&aaaa, RecordType::AAAA), ["fd00::11"]);
    // A single-stack service asked for the other family: NODATA.
    let none = ask(&t, "web.demo.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(none.metadata.response_code, ResponseCode::NoError);
    assert!(none.answers.is_empty());
}

// === headless ===

#[test]
fn headless_service_has_one_a_per_ready_endpoint() {
    let t = fixture();
    let m = ask(&t, "db.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // db-2 (10.244.3.22) is not ready.
    assert_eq!(
        answers_of(&m, RecordType::A),
        ["10.244.1.20", "10.244.1.23", "10.244.2.21"]
    );
    let m6 = ask(&t, "db6.demo.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(answers_of(&m6, RecordType::AAAA), ["fd00:10:244::5"]);
    assert!(
        ask(&t, "db6.demo.svc.cluster.local.", RecordType::A)
            .answers
            .is_empty()
    );
}

#[test]
fn headless_service_without_ready_endpoints_is_nxdomain() {
    let t = fixture();
    for qtype in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
        let m = ask(&t, "idle.demo.svc.cluster.local.", qtype);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{qtype}");
        assert!(m.answers.is_empty());
        assert_eq!(authority_soa(&m).name, name(ZONE));
    }
    let srv = ask(
        &t,
        "_http._tcp.idle.demo.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(srv.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn publish_not_ready_addresses_publishes_unready_endpoints() {
    let t = fixture();
    let m = ask(&t, "eager.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(answers_of(&m, RecordType::A), ["10.244.6.60"]);
    let host = ask(&t, "e-0.eager.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(answers_of(&host, RecordType::A), ["10.244.6.60"]);
}

#[test]
fn endpoint_hostnames_have_their_own_names() {
    let t = fixture();
    for (host, ip) in [("db-0", "10.244.1.20"), ("db-1", "10.244.2.21")] {
        let m = ask(
            &t,
            &format!("{host}.db.demo.svc.cluster.local."),
            RecordType::A,
        );
        assert_eq!(answers_of(&m, RecordType::A), [ip], "{host}");
    }
    // Not ready: no name.
    let m = ask(&t, "db-2.db.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(&t, "h6.db6.demo.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(answers_of(&m, RecordType::AAAA), ["fd00:10:244::5"]);
    // An endpoint without a hostname gets a unique one derived from its address.
    let m = ask(&t, "10-244-1-23.db.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(answers_of(&m, RecordType::A), ["10.244.1.23"]);
}

// === SRV ===

#[test]
fn srv_of_a_cluster_ip_service_names_the_service_port() {
    let t = fixture();
    let m = ask(
        &t,
        "_http._tcp.web.demo.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    let RData::SRV(srv) = &m.answers[0].data else {
        panic!("{:?}", m.answers)
    };
    // The Service port, not the targetPort.
    assert_eq!(srv.port, 80);
    assert_eq!(srv.target, name("web.demo.svc.cluster.local."));
    // The target's address travels in the additional section.
    let extra: Vec<String> = m.additionals.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(extra, ["10.96.0.10"]);

    let udp = ask(
        &t,
        "_dns._udp.dual.demo.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(answers_of(&udp, RecordType::SRV).len(), 1);
    let mut extra: Vec<String> = udp.additionals.iter().map(|r| r.data.to_string()).collect();
    extra.sort();
    assert_eq!(extra, ["10.96.0.11", "fd00::11"]);
    let tcp = ask(
        &t,
        "_dns-tcp._tcp.dual.demo.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(answers_of(&tcp, RecordType::SRV).len(), 1);
    // The port name with the other protocol does not exist.
    let wrong = ask(
        &t,
        "_dns._tcp.dual.demo.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(wrong.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn srv_of_a_headless_service_has_one_record_per_hostname_and_port() {
    let t = fixture();
    for (port_name, port) in [("postgres", 5432), ("metrics", 9187)] {
        let m = ask(
            &t,
            &format!("_{port_name}._tcp.db.demo.svc.cluster.local."),
            RecordType::SRV,
        );
        let mut got: Vec<(u16, String)> = m
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.port, s.target.to_ascii()),
                other => panic!("{other:?}"),
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (port, "10-244-1-23.db.demo.svc.cluster.local.".to_owned()),
                (port, "db-0.db.demo.svc.cluster.local.".to_owned()),
                (port, "db-1.db.demo.svc.cluster.local.".to_owned()),
            ],
            "{port_name}"
        );
        // Each target's address is in the additional section.
        let mut extra: Vec<(String, String)> = m
            .additionals
            .iter()
            .map(|r| (r.name.to_ascii(), r.data.to_string()))
            .collect();
        extra.sort();
        assert_eq!(extra.len(), 3, "{extra:?}");
        assert_eq!(
            extra[1],
            (
                "db-0.db.demo.svc.cluster.local.".to_owned(),
                "10.244.1.20".to_owned()
            )
        );
    }
}

#[test]
fn unnamed_ports_have_no_srv() {
    let t = fixture();
    let m = ask(&t, "plain.demo.svc.cluster.local.", RecordType::SRV);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    for q in [
        "_tcp.plain.demo.svc.cluster.local.",
        "_8080._tcp.plain.demo.svc.cluster.local.",
        "_._tcp.plain.demo.svc.cluster.local.",
    ] {
        let m = ask(&t, q, RecordType::SRV);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{q}");
    }
}

// === PTR ===

#[test]
fn cluster_ips_have_ptr_records_in_both_reverse_zones() {
    let t = fixture();
    for (ip, target) in [
        ("10.96.0.10", "web.demo.svc.cluster.local."),
        ("10.96.0.11", "dual.demo.svc.cluster.local."),
        ("fd00::11", "dual.demo.svc.cluster.local."),
    ] {
        let q = ptr_name(ip);
        let m = ask(&t, &q, RecordType::PTR);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{q}");
        assert!(m.metadata.authoritative);
        assert_eq!(answers_of(&m, RecordType::PTR), [target], "{q}");
    }
    assert_eq!(ptr_name("10.96.0.10"), "10.0.96.10.in-addr.arpa.");
    assert_eq!(
        ptr_name("fd00::11"),
        "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."
    );
}

#[test]
fn headless_endpoint_ips_have_ptr_records() {
    let t = fixture();
    for (ip, target) in [
        ("10.244.1.20", "db-0.db.demo.svc.cluster.local."),
        ("10.244.1.23", "10-244-1-23.db.demo.svc.cluster.local."),
        ("fd00:10:244::5", "h6.db6.demo.svc.cluster.local."),
    ] {
        let m = ask(&t, &ptr_name(ip), RecordType::PTR);
        assert_eq!(answers_of(&m, RecordType::PTR), [target], "{ip}");
    }
    // Not ready: not published, not even in reverse.
    let m = ask(&t, &ptr_name("10.244.3.22"), RecordType::PTR);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(authority_soa(&m).name, name("in-addr.arpa."));
}

#[test]
fn an_ip_of_two_services_has_both_ptrs() {
    let t = fixture();
    let m = ask(&t, &ptr_name("10.244.9.9"), RecordType::PTR);
    assert_eq!(
        answers_of(&m, RecordType::PTR),
        [
            "l.left.demo.svc.cluster.local.",
            "r.right.demo.svc.cluster.local."
        ]
    );
}

// === ExternalName ===

#[test]
fn external_name_answers_a_cname() {
    let t = fixture();
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::CNAME,
        RecordType::TXT,
    ] {
        let m = ask(&t, "payments.demo.svc.cluster.local.", qtype);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{qtype}");
        assert_eq!(
            answers_of(&m, RecordType::CNAME),
            ["payments.example.com."],
            "{qtype}"
        );
        assert_eq!(
            m.answers.len(),
            1,
            "{qtype}: the target is not ours to chase"
        );
    }
}

#[test]
fn external_name_inside_the_zone_is_chased() {
    let t = fixture();
    let m = ask(&t, "alias.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(
        answers_of(&m, RecordType::CNAME),
        ["web.demo.svc.cluster.local."]
    );
    assert_eq!(answers_of(&m, RecordType::A), ["10.96.0.10"]);
    assert_eq!(m.answers[1].name, name("web.demo.svc.cluster.local."));
}

// === zone apex ===

#[test]
fn dns_version_is_a_txt_record() {
    let t = fixture();
    let m = ask(&t, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers_of(&m, RecordType::TXT), ["1.1.0"]);
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(txt.txt_data.len(), 1);
    assert_eq!(&*txt.txt_data[0], b"1.1.0");
}

#[test]
fn apex_has_soa_and_ns() {
    let t = fixture();
    let soa = ask(&t, ZONE, RecordType::SOA);
    assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
    assert!(soa.metadata.authoritative);
    assert_eq!(soa.answers.len(), 1);
    assert_eq!(soa.answers[0].name, name(ZONE));
    let RData::SOA(s) = &soa.answers[0].data else {
        panic!("{:?}", soa.answers)
    };
    assert_eq!(s.mname, name("ns.dns.cluster.local."));
    assert_eq!(s.minimum, 5);
    let ns = ask(&t, ZONE, RecordType::NS);
    assert_eq!(answers_of(&ns, RecordType::NS), ["ns.dns.cluster.local."]);
}

#[test]
fn other_cluster_domains_work() {
    let cfg = svcplane_dns::DnsConfig::new("Corp.Example", 30).unwrap();
    let snap = common::snapshot(&[("c.yaml", common::FIXTURE)]);
    let t = svcplane_dns::DnsTable::build(&snap, &cfg);
    let m = ask(&t, "web.demo.svc.corp.example.", RecordType::A);
    assert_eq!(answers_of(&m, RecordType::A), ["10.96.0.10"]);
    assert_eq!(m.answers[0].ttl, 30);
    let m = ask(&t, "web.demo.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

// === negative answers ===

#[test]
fn nxdomain_and_nodata_carry_the_zone_soa() {
    let t = fixture();
    let nodata = [
        (ZONE, RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("demo.svc.cluster.local.", RecordType::A),
        ("demo.svc.cluster.local.", RecordType::SRV),
        ("web.demo.svc.cluster.local.", RecordType::TXT),
        ("web.demo.svc.cluster.local.", RecordType::MX),
        ("dns-version.cluster.local.", RecordType::A),
        ("_tcp.web.demo.svc.cluster.local.", RecordType::SRV),
    ];
    let nxdomain = [
        "nope.demo.svc.cluster.local.",
        "web.nope.svc.cluster.local.",
        "nope.cluster.local.",
        "a.web.demo.svc.cluster.local.",
        "web.demo.cluster.local.",
    ];
    let cases = nodata
        .iter()
        .map(|&(n, t)| (n, t, ResponseCode::NoError))
        .chain(
            nxdomain
                .iter()
                .map(|&n| (n, RecordType::A, ResponseCode::NXDomain)),
        );
    for (qname, qtype, rcode) in cases {
        let m = ask(&t, qname, qtype);
        assert_eq!(m.metadata.response_code, rcode, "{qname} {qtype}");
        assert!(m.metadata.authoritative, "{qname} {qtype}");
        assert!(m.answers.is_empty(), "{qname} {qtype}");
        let soa = authority_soa(&m);
        assert_eq!(soa.name, name(ZONE), "{qname} {qtype}");
        assert_eq!(soa.ttl, 5);
        let RData::SOA(s) = &soa.data else { panic!() };
        assert_eq!(s.minimum, 5);
    }
}

#[test]
fn names_are_case_insensitive_and_the_question_case_is_echoed() {
    let t = fixture();
    let qname = "WeB.DeMo.SvC.ClUsTeR.LoCaL.";
    let m = ask(&t, qname, RecordType::A);
    assert_eq!(answers_of(&m, RecordType::A), ["10.96.0.10"]);
    // Name equality ignores case; compare the text.
    assert_eq!(m.queries[0].name().to_ascii(), qname);
    assert_eq!(m.answers[0].name.to_ascii(), qname);

    let srv = ask(
        &t,
        "_HTTP._Tcp.WEB.demo.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(answers_of(&srv, RecordType::SRV).len(), 1);
    assert_eq!(
        srv.answers[0].name.to_ascii(),
        "_HTTP._Tcp.WEB.demo.svc.cluster.local."
    );

    let ptr = ask(&t, "10.0.96.10.IN-ADDR.ARPA.", RecordType::PTR);
    assert_eq!(
        answers_of(&ptr, RecordType::PTR),
        ["web.demo.svc.cluster.local."]
    );

    let neg = ask(&t, "NOPE.Demo.SVC.Cluster.Local.", RecordType::A);
    assert_eq!(neg.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        neg.queries[0].name().to_ascii(),
        "NOPE.Demo.SVC.Cluster.Local."
    );
    assert_eq!(authority_soa(&neg).name, name(ZONE));
}

// === before the first snapshot, outside the zones ===

#[test]
fn no_table_is_servfail() {
    for (qname, qtype) in [
        ("web.demo.svc.cluster.local.", RecordType::A),
        ("nope.demo.svc.cluster.local.", RecordType::A),
        ("10.0.96.10.in-addr.arpa.", RecordType::PTR),
    ] {
        for transport in [Transport::Udp, Transport::Tcp] {
            let how = Ask {
                transport,
                ..Ask::default()
            };
            let m = ask_with(None, qname, qtype, how);
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{qname}");
            assert!(m.answers.is_empty());
            assert_eq!(m.queries[0].name(), &name(qname));
        }
    }
}

#[test]
fn names_outside_the_zones_are_refused_without_an_upstream() {
    let t = fixture();
    // `xcluster.local.` ends with the zone's bytes but not on a label boundary.
    let outside = [
        "example.com.",
        "cluster.local.example.com.",
        "local.",
        ".",
        "xcluster.local.",
        "web.demo.svc.xcluster.local.",
        "arpa.",
    ];
    for qname in outside {
        let m = ask(&t, qname, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{qname}");
        assert!(!m.metadata.authoritative);
        assert!(!m.metadata.recursion_available);
        assert!(m.answers.is_empty() && m.authorities.is_empty());
    }
}

#[test]
fn names_outside_the_zones_are_forwarded_with_an_upstream() {
    let t = fixture();
    let run = |qname: &str, qtype| {
        let req = common::query(7, qname, qtype, None);
        common::respond_raw(Some(&t), &req, Transport::Udp, true).0
    };
    assert_eq!(run("example.com.", RecordType::A), Outcome::Forward);
    // Reverse names we do not know belong to someone else.
    assert_eq!(
        run(&ptr_name("192.0.2.1"), RecordType::PTR),
        Outcome::Forward
    );
    // The cluster zone is ours alone.
    assert_eq!(
        run("nope.demo.svc.cluster.local.", RecordType::A),
        Outcome::Reply(ResponseCode::NXDomain)
    );
    // In-zone answers advertise recursion when an upstream exists.
    let how = Ask {
        forward: true,
        ..Ask::default()
    };
    let m = ask_with(Some(&t), "web.demo.svc.cluster.local.", RecordType::A, how);
    assert!(m.metadata.recursion_available);
    assert!(m.metadata.recursion_desired);
}

#[test]
fn a_service_added_or_removed_changes_the_table() {
    let web = "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: x}\nspec:\n  clusterIP: 10.96.7.7\n  ports: [{port: 80}]\n";
    let t = table_of(&[("late.yaml", web)]);
    assert_eq!(
        answers_of(
            &ask(&t, "late.x.svc.cluster.local.", RecordType::A),
            RecordType::A
        ),
        ["10.96.7.7"]
    );
    let empty = table_of(&[]);
    let m = ask(&empty, "late.x.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // The apex exists in an empty table.
    let m = ask(&empty, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(answers_of(&m, RecordType::TXT), ["1.1.0"]);
}

#[test]
fn a_dual_stack_pod_is_one_srv_target_with_both_addresses() {
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: ss, namespace: demo}\nspec:\n  \
             clusterIP: None\n  selector: {app: ss}\n  ports:\n  - {name: http, port: 80}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: ss-0, namespace: demo, labels: {app: ss}}\n\
             spec:\n  hostname: ss-0\n  subdomain: ss\n  \
             containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]\n\
             status:\n  podIP: 10.244.1.5\n  podIPs: [{ip: 10.244.1.5}, {ip: \"fd00::5\"}]\n  \
             conditions: [{type: Ready, status: \"True\"}]\n";
    let t = table_of(&[("ss.yaml", y)]);
    let m = ask(&t, "_http._tcp.ss.demo.svc.cluster.local.", RecordType::SRV);
    assert_eq!(answers_of(&m, RecordType::SRV).len(), 1, "{:?}", m.answers);
    let RData::SRV(srv) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(srv.weight, 100);
    assert_eq!(srv.target, name("ss-0.ss.demo.svc.cluster.local."));
    let mut extra: Vec<String> = m.additionals.iter().map(|r| r.data.to_string()).collect();
    extra.sort();
    assert_eq!(extra, ["10.244.1.5", "fd00::5"]);
    let a = ask(&t, "ss-0.ss.demo.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(answers_of(&a, RecordType::AAAA), ["fd00::5"]);
    let ptr = ask(&t, &ptr_name("fd00::5"), RecordType::PTR);
    assert_eq!(
        answers_of(&ptr, RecordType::PTR),
        ["ss-0.ss.demo.svc.cluster.local."]
    );
}

#[test]
fn an_endpoint_listed_twice_is_published_once() {
    let slice = |name: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
             namespace: demo\n  labels: {{kubernetes.io/service-name: hl}}\naddressType: IPv4\n\
             ports:\n- {{name: http, port: 80, protocol: TCP}}\nendpoints:\n\
             - addresses: [\"10.244.1.7\"]\n  hostname: hl-0\n"
        )
    };
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: hl, namespace: demo}\nspec:\n  \
               clusterIP: None\n  ports:\n  - {name: http, port: 80}\n";
    let t = table_of(&[
        ("svc.yaml", svc),
        ("a.yaml", &slice("hl-a")),
        ("b.yaml", &slice("hl-b")),
    ]);
    for (q, qtype) in [
        ("hl.demo.svc.cluster.local.", RecordType::A),
        ("hl-0.hl.demo.svc.cluster.local.", RecordType::A),
        ("_http._tcp.hl.demo.svc.cluster.local.", RecordType::SRV),
    ] {
        let m = ask(&t, q, qtype);
        assert_eq!(m.answers.len(), 1, "{q}: {:?}", m.answers);
    }
    let m = ask(&t, &ptr_name("10.244.1.7"), RecordType::PTR);
    assert_eq!(m.answers.len(), 1, "{:?}", m.answers);
}

#[test]
fn zone_membership_is_on_label_boundaries() {
    use svcplane_dns::table::is_subdomain;
    let w = |s: &str| {
        let mut out = Vec::new();
        for l in s.split('.').filter(|l| !l.is_empty()) {
            out.push(u8::try_from(l.len()).unwrap());
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
        out
    };
    let zone = w("cluster.local");
    assert!(is_subdomain(&w("cluster.local"), &zone));
    assert!(is_subdomain(&w("a.b.cluster.local"), &zone));
    assert!(!is_subdomain(&w("xcluster.local"), &zone));
    assert!(!is_subdomain(&w("a.xcluster.local"), &zone));
    assert!(!is_subdomain(&w("local"), &zone));
    // A label whose bytes look like the zone's length bytes.
    assert!(!is_subdomain(&w("\x07cluster.local"), &zone));
}

#[test]
fn endpoints_without_hostnames_are_named_after_their_address() {
    use svcplane_dns::table::dashed;
    assert_eq!(dashed("10.244.1.23".parse().unwrap()), "10-244-1-23");
    assert_eq!(dashed("fd00::5".parse().unwrap()), "fd00--5");
    assert_eq!(dashed("fd00:1::".parse().unwrap()), "fd00-1--0");
}

#[test]
fn any_answers_with_records_of_the_name() {
    let t = fixture();
    let m = ask(&t, "web.demo.svc.cluster.local.", RecordType::ANY);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(!m.answers.is_empty());
    assert!(
        m.answers
            .iter()
            .all(|r| r.name == name("web.demo.svc.cluster.local."))
    );
    assert_eq!(m.queries[0].query_type(), RecordType::ANY);
}
