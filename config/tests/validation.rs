//! One test per validation rule. Every error must name the file, the document index, the
//! kind, `namespace/name`, the field path and the reason, and a bad object must never take
//! its good neighbours in the same file down with it.

mod common;

use common::{
    GOOD_AFTER, GOOD_BEFORE, Want, accepted, assert_neighbours_only, check_error, key, load,
    only_error, parse, parse_with, sandwich, sandwich_line, service_names,
};
use svcplane_config::{ParseOptions, PortRange, Protocol, ServiceType, SessionAffinity};

const FILE: &str = "manifests/app.yaml";

/// A Service `default/<name>` with `spec` (lines indented by two spaces).
fn service(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// Parses `bad` between two good Services and checks the single error it produces.
fn rejects(bad: &str, want: Want<'_>) {
    let p = parse(FILE, &sandwich(bad));
    only_error(&p, &want);
    assert_neighbours_only(&p);
    assert_eq!(
        p.rejected.len(),
        1,
        "the bad object is reported as rejected"
    );
}

fn svc_err<'a>(object: &'a str, field: &'a str, reason: &'a str) -> Want<'a> {
    Want::in_sandwich(FILE, "Service", object, field, reason)
}

// === IP addresses ===

#[test]
fn cluster_ip_must_parse() {
    rejects(
        &service("web", "  clusterIP: 10.96.0.300\n  ports:\n  - port: 80\n"),
        svc_err(
            "default/web",
            "spec.clusterIP",
            "\"10.96.0.300\" is not a valid IP address",
        ),
    );
}

#[test]
fn cluster_ips_entries_must_parse() {
    rejects(
        &service(
            "web",
            "  clusterIP: 10.96.0.30\n  clusterIPs: [10.96.0.30, 'fd00::zz']\n  ports:\n  - port: 80\n",
        ),
        svc_err(
            "default/web",
            "spec.clusterIPs[1]",
            "\"fd00::zz\" is not a valid IP address",
        ),
    );
}

#[test]
fn dual_stack_cluster_ips_need_one_of_each_family() {
    rejects(
        &service(
            "web",
            "  clusterIPs: [10.96.0.30, 10.96.0.31]\n  ports:\n  - port: 80\n",
        ),
        svc_err("default/web", "spec.clusterIPs", "one of each IP family"),
    );
    let p = parse(
        FILE,
        &service(
            "web",
            "  clusterIPs: [10.96.0.30, 'fd00::30']\n  ports:\n  - port: 80\n",
        ),
    );
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
}

#[test]
fn external_ips_must_parse() {
    rejects(
        &service(
            "web",
            "  ports:\n  - port: 80\n  externalIPs: [198.51.100.7, example.com]\n",
        ),
        svc_err(
            "default/web",
            "spec.externalIPs[1]",
            "\"example.com\" is not a valid IP address",
        ),
    );
}

#[test]
fn load_balancer_ingress_ips_must_parse() {
    let bad = service("lb", "  type: LoadBalancer\n  ports:\n  - port: 80\n")
        + "status:\n  loadBalancer:\n    ingress:\n    - hostname: lb.example.com\n    - ip: 203.0.113.999\n";
    rejects(
        &bad,
        svc_err(
            "default/lb",
            "status.loadBalancer.ingress[1].ip",
            "is not a valid IP address",
        ),
    );
}

fn slice(name: &str, address_type: &str, addresses: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
         namespace: shop\n  labels:\n    kubernetes.io/service-name: web\naddressType: {address_type}\n\
         ports:\n- name: http\n  port: 8080\nendpoints:\n"
    );
    for a in addresses {
        s.push_str(&format!("- addresses: ['{a}']\n"));
    }
    s
}

#[test]
fn slice_addresses_must_parse() {
    rejects(
        &slice("web-abc", "IPv4", &["10.244.1.7", "10.244.1.x"]),
        Want::in_sandwich(
            FILE,
            "EndpointSlice",
            "shop/web-abc",
            "endpoints[1].addresses[0]",
            "\"10.244.1.x\" is not a valid IP address",
        ),
    );
}

#[test]
fn slice_addresses_must_match_the_address_type() {
    rejects(
        &slice("web-v4", "IPv4", &["10.244.1.7", "fd00::7"]),
        Want::in_sandwich(
            FILE,
            "EndpointSlice",
            "shop/web-v4",
            "endpoints[1].addresses[0]",
            "fd00::7 does not match the slice's addressType IPv4",
        ),
    );
    rejects(
        &slice("web-v6", "IPv6", &["fd00::7", "10.244.1.7"]),
        Want::in_sandwich(
            FILE,
            "EndpointSlice",
            "shop/web-v6",
            "endpoints[1].addresses[0]",
            "10.244.1.7 does not match the slice's addressType IPv6",
        ),
    );
    let p = parse(FILE, &slice("web-v6", "IPv6", &["fd00::7", "fd00::8"]));
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
}

#[test]
fn slice_address_type_must_be_known() {
    rejects(
        &slice("web-abc", "IPv5", &["10.244.1.7"]),
        Want::in_sandwich(
            FILE,
            "EndpointSlice",
            "shop/web-abc",
            "addressType",
            "unsupported value \"IPv5\"",
        ),
    );
}

#[test]
fn fqdn_slices_are_skipped_with_a_warning_not_rejected() {
    let p = parse(
        FILE,
        &sandwich(&slice("web-fqdn", "FQDN", &["db.example.com"])),
    );
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    assert!(p.rejected.is_empty(), "a deliberate skip is no rejection");
    assert_eq!(p.warnings.len(), 1);
    let w = &p.warnings[0];
    assert_eq!(w.document, Some(1));
    assert!(w.message.contains("shop/web-fqdn"), "{w}");
    assert_eq!(p.objects.len(), 2);
}

#[test]
fn endpoints_addresses_must_parse() {
    let bad = "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: legacy\nsubsets:\n\
               - addresses:\n  - ip: 10.1.2.3\n  notReadyAddresses:\n  - ip: 10.1.2.256\n  ports:\n  - port: 80\n";
    rejects(
        bad,
        Want::in_sandwich(
            FILE,
            "Endpoints",
            "default/legacy",
            "subsets[0].notReadyAddresses[0].ip",
            "\"10.1.2.256\" is not a valid IP address",
        ),
    );
}

#[test]
fn pod_ips_must_parse() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n\
               spec:\n  containers:\n  - name: web\n    image: web\nstatus:\n  podIP: 10.0.0.1\n  \
               podIPs:\n  - ip: 10.0.0.1\n  - ip: 'fd00::g'\n";
    rejects(
        bad,
        Want::in_sandwich(
            FILE,
            "Pod",
            "shop/web-1",
            "status.podIPs[1].ip",
            "\"fd00::g\" is not a valid IP address",
        ),
    );
}

// === ports ===

#[test]
fn service_ports_must_be_1_to_65535() {
    for bad in ["0", "65536", "-1"] {
        rejects(
            &service("web", &format!("  ports:\n  - port: {bad}\n")),
            svc_err(
                "default/web",
                "spec.ports[0].port",
                &format!("{bad} is not a port: must be 1-65535"),
            ),
        );
    }
    let p = parse(
        FILE,
        &service("web", "  ports:\n  - port: 65535\n    targetPort: 1\n"),
    );
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
}

#[test]
fn a_port_of_the_wrong_type_names_its_path() {
    rejects(
        &service("web", "  ports:\n  - name: http\n    port: '80'\n"),
        svc_err(
            "default/web",
            "spec.ports[0].port",
            "invalid type: string \"80\"",
        ),
    );
}

#[test]
fn target_ports_must_be_ports_or_port_names() {
    rejects(
        &service("web", "  ports:\n  - port: 80\n    targetPort: 70000\n"),
        svc_err(
            "default/web",
            "spec.ports[0].targetPort",
            "70000 is not a port",
        ),
    );
    rejects(
        &service("web", "  ports:\n  - port: 80\n    targetPort: '-3'\n"),
        svc_err(
            "default/web",
            "spec.ports[0].targetPort",
            "-3 is not a port",
        ),
    );
    rejects(
        &service("web", "  ports:\n  - port: 80\n    targetPort: Web_Port\n"),
        svc_err(
            "default/web",
            "spec.ports[0].targetPort",
            "is not a valid port name",
        ),
    );
}

#[test]
fn node_ports_must_be_ports() {
    rejects(
        &service(
            "web",
            "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 70000\n",
        ),
        svc_err(
            "default/web",
            "spec.ports[0].nodePort",
            "70000 is not a port",
        ),
    );
}

#[test]
fn slice_ports_must_be_1_to_65535() {
    let bad = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-abc\n\
               addressType: IPv4\nports:\n- name: http\n  port: 8080\n- name: admin\n  port: 0\n\
               endpoints:\n- addresses: [10.1.1.1]\n";
    rejects(
        bad,
        Want::in_sandwich(
            FILE,
            "EndpointSlice",
            "default/web-abc",
            "ports[1].port",
            "0 is not a port",
        ),
    );
}

#[test]
fn endpoints_ports_must_be_1_to_65535() {
    let bad = "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: legacy\nsubsets:\n\
               - addresses:\n  - ip: 10.1.2.3\n  ports:\n  - port: 65536\n";
    rejects(
        bad,
        Want::in_sandwich(
            FILE,
            "Endpoints",
            "default/legacy",
            "subsets[0].ports[0].port",
            "65536 is not a port",
        ),
    );
}

#[test]
fn container_ports_must_be_1_to_65535() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\nspec:\n  containers:\n\
               \x20 - name: web\n    image: web\n    ports:\n    - containerPort: 8080\n    \
               - containerPort: 0\n";
    rejects(
        bad,
        Want::in_sandwich(
            FILE,
            "Pod",
            "default/web-1",
            "spec.containers[0].ports[1].containerPort",
            "0 is not a port",
        ),
    );
}

// === protocols ===

#[test]
fn service_protocols_are_tcp_udp_or_sctp() {
    rejects(
        &service("web", "  ports:\n  - port: 80\n    protocol: tcp\n"),
        svc_err(
            "default/web",
            "spec.ports[0].protocol",
            "unsupported protocol \"tcp\": must be one of TCP, UDP, SCTP",
        ),
    );
    let p = parse(
        FILE,
        &service(
            "web",
            "  ports:\n  - {name: a, port: 80, protocol: TCP}\n  - {name: b, port: 80, protocol: UDP}\n  \
             - {name: c, port: 80, protocol: SCTP}\n  - {name: d, port: 81}\n",
        ),
    );
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    let svcplane_config::parse::Object::Service(def) = &p.objects[0] else {
        panic!("expected a Service: {:?}", p.objects);
    };
    let protocols: Vec<Protocol> = def.ports.iter().map(|p| p.protocol).collect();
    assert_eq!(
        protocols,
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Tcp],
        "TCP is the default"
    );
}

#[test]
fn slice_and_endpoints_protocols_are_checked() {
    let bad_slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-abc\n\
                     addressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: HTTP\n\
                     endpoints:\n- addresses: [10.1.1.1]\n";
    rejects(
        bad_slice,
        Want::in_sandwich(
            FILE,
            "EndpointSlice",
            "default/web-abc",
            "ports[0].protocol",
            "unsupported protocol \"HTTP\"",
        ),
    );
    let bad_endpoints = "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: legacy\nsubsets:\n\
                         - addresses:\n  - ip: 10.1.2.3\n  ports:\n  - port: 80\n    protocol: QUIC\n";
    rejects(
        bad_endpoints,
        Want::in_sandwich(
            FILE,
            "Endpoints",
            "default/legacy",
            "subsets[0].ports[0].protocol",
            "unsupported protocol \"QUIC\"",
        ),
    );
}

// === node ports ===

#[test]
fn node_ports_must_be_inside_the_default_range() {
    for bad in [29999, 32768] {
        rejects(
            &service(
                "web",
                &format!("  type: NodePort\n  ports:\n  - port: 80\n    nodePort: {bad}\n"),
            ),
            svc_err(
                "default/web",
                "spec.ports[0].nodePort",
                &format!("{bad} is outside the node port range 30000-32767"),
            ),
        );
    }
    for good in [30000, 32767] {
        let p = parse(
            FILE,
            &service(
                "web",
                &format!("  type: NodePort\n  ports:\n  - port: 80\n    nodePort: {good}\n"),
            ),
        );
        assert!(p.errors.is_empty(), "{good}: {:#?}", p.errors);
    }
}

#[test]
fn node_ports_follow_the_configured_range() {
    let opts = ParseOptions {
        node_port_range: "20000-20010".parse::<PortRange>().unwrap(),
    };
    let ok = parse_with(
        FILE,
        &service(
            "web",
            "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 20005\n",
        ),
        &opts,
    );
    assert!(ok.errors.is_empty(), "{:#?}", ok.errors);
    let bad = parse_with(
        FILE,
        &sandwich(&service(
            "web",
            "  type: LoadBalancer\n  ports:\n  - port: 80\n    nodePort: 30001\n",
        )),
        &opts,
    );
    only_error(
        &bad,
        &svc_err(
            "default/web",
            "spec.ports[0].nodePort",
            "30001 is outside the node port range 20000-20010",
        ),
    );
    assert_neighbours_only(&bad);
}

#[test]
fn node_ports_need_a_node_port_type() {
    rejects(
        &service("web", "  ports:\n  - port: 80\n    nodePort: 30080\n"),
        svc_err(
            "default/web",
            "spec.ports[0].nodePort",
            "may not be used when type is ClusterIP",
        ),
    );
}

#[test]
fn a_node_port_is_used_once_per_protocol_inside_a_service() {
    rejects(
        &service(
            "web",
            "  type: NodePort\n  ports:\n  - {name: a, port: 80, nodePort: 30080}\n  \
             - {name: b, port: 81, nodePort: 30080}\n",
        ),
        svc_err(
            "default/web",
            "spec.ports[1].nodePort",
            "duplicate nodePort 30080/TCP",
        ),
    );
    let p = parse(
        FILE,
        &service(
            "dns",
            "  type: NodePort\n  ports:\n  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}\n  \
             - {name: dns-tcp, port: 53, protocol: TCP, nodePort: 30053}\n",
        ),
    );
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
}

#[test]
fn a_node_port_is_used_once_per_protocol_across_services() {
    let a = format!(
        "{GOOD_BEFORE}---\n{}",
        service(
            "alpha",
            "  type: NodePort\n  clusterIP: 10.96.1.1\n  ports:\n  - port: 80\n    nodePort: 30080\n",
        )
    );
    let b = format!(
        "{}---\n{GOOD_AFTER}",
        service(
            "beta",
            "  type: NodePort\n  clusterIP: 10.96.1.2\n  ports:\n  - port: 8080\n    nodePort: 30080\n",
        )
    );
    let (dir, snap) = load(&[("a.yaml", &a), ("b.yaml", &b)]);
    let errors = &snap.diagnostics.errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    check_error(
        e,
        &Want {
            file: &dir.label("b.yaml"),
            document: 0,
            line: 1,
            kind: Some("Service"),
            object: Some("default/beta"),
            field: Some("spec.ports[0].nodePort"),
            reason: "nodePort 30080/TCP is already used by Service default/alpha",
        },
    );
    let other = e.other.as_ref().expect("the error names the other Service");
    assert_eq!(other.file.as_ref(), dir.path("a.yaml"));
    assert_eq!(other.document, 1);
    assert_eq!(
        service_names(&snap),
        ["default/alpha", "default/good-after", "default/good-before"]
    );
    let owner = snap
        .by_node_port(30080, Protocol::Tcp)
        .expect("alpha owns 30080/TCP");
    assert_eq!(owner.key.service, key("default", "alpha"));
}

#[test]
fn the_same_node_port_with_different_protocols_is_fine() {
    let a = service(
        "dns-udp",
        "  type: NodePort\n  ports:\n  - port: 53\n    protocol: UDP\n    nodePort: 30053\n",
    );
    let b = service(
        "dns-tcp",
        "  type: NodePort\n  ports:\n  - port: 53\n    protocol: TCP\n    nodePort: 30053\n",
    );
    let (_dir, snap) = load(&[("a.yaml", &a), ("b.yaml", &b)]);
    assert!(
        snap.diagnostics.errors.is_empty(),
        "{:#?}",
        snap.diagnostics.errors
    );
    assert_eq!(snap.services().len(), 2);
    let udp = snap.by_node_port(30053, Protocol::Udp).expect("UDP owner");
    let tcp = snap.by_node_port(30053, Protocol::Tcp).expect("TCP owner");
    assert_eq!(udp.key.service, key("default", "dns-udp"));
    assert_eq!(tcp.key.service, key("default", "dns-tcp"));
}

// === frontends ===

#[test]
fn two_services_may_not_claim_the_same_cluster_ip_port_and_protocol() {
    let a = format!(
        "{}---\n{GOOD_BEFORE}",
        service(
            "dns-a",
            "  clusterIP: 10.96.0.10\n  ports:\n  - port: 53\n    protocol: UDP\n"
        )
    );
    let b = format!(
        "{GOOD_AFTER}---\n{}",
        service(
            "dns-b",
            "  clusterIP: 10.96.0.10\n  ports:\n  - port: 53\n    protocol: UDP\n"
        )
    );
    let (dir, snap) = load(&[("a.yaml", &a), ("b.yaml", &b)]);
    let errors = &snap.diagnostics.errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    check_error(
        e,
        &Want {
            file: &dir.label("b.yaml"),
            document: 1,
            line: GOOD_AFTER.lines().count() + 2,
            kind: Some("Service"),
            object: Some("default/dns-b"),
            field: Some("spec.clusterIPs[0] + spec.ports[0]"),
            reason: "10.96.0.10:53/UDP is already used by Service default/dns-a",
        },
    );
    assert_eq!(
        e.other.as_ref().map(|o| o.file.to_path_buf()),
        Some(dir.path("a.yaml"))
    );
    assert_eq!(
        service_names(&snap),
        ["default/dns-a", "default/good-after", "default/good-before"],
        "the other Service and the neighbours keep loading"
    );
    let frontend = svcplane_config::Frontend {
        ip: "10.96.0.10".parse().unwrap(),
        port: 53,
        protocol: Protocol::Udp,
    };
    assert_eq!(
        snap.by_frontend(&frontend).map(|p| p.key.service.clone()),
        Some(key("default", "dns-a"))
    );
}

#[test]
fn the_same_cluster_ip_with_another_port_or_protocol_is_no_conflict() {
    let a = service(
        "dns-udp",
        "  clusterIP: 10.96.0.10\n  ports:\n  - port: 53\n    protocol: UDP\n",
    );
    let b = service(
        "dns-tcp",
        "  clusterIP: 10.96.0.10\n  ports:\n  - port: 53\n    protocol: TCP\n",
    );
    let c = service(
        "dns-metrics",
        "  clusterIP: 10.96.0.10\n  ports:\n  - port: 9153\n",
    );
    let (_dir, snap) = load(&[("a.yaml", &a), ("b.yaml", &b), ("c.yaml", &c)]);
    assert!(
        snap.diagnostics.errors.is_empty(),
        "{:#?}",
        snap.diagnostics.errors
    );
    assert_eq!(snap.services().len(), 3);
}

#[test]
fn external_and_load_balancer_ips_conflict_like_cluster_ips() {
    let a = service(
        "alpha",
        "  externalIPs: [198.51.100.7]\n  ports:\n  - port: 443\n",
    );
    let b = service("beta", "  type: LoadBalancer\n  ports:\n  - port: 443\n")
        + "status:\n  loadBalancer:\n    ingress:\n    - ip: 198.51.100.7\n";
    let (dir, snap) = load(&[("a.yaml", &a), ("b.yaml", &b)]);
    let errors = &snap.diagnostics.errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    check_error(
        &errors[0],
        &Want {
            file: &dir.label("b.yaml"),
            document: 0,
            line: 1,
            kind: Some("Service"),
            object: Some("default/beta"),
            field: Some("status.loadBalancer.ingress[0] + spec.ports[0]"),
            reason: "198.51.100.7:443/TCP is already used by Service default/alpha",
        },
    );
    assert_eq!(service_names(&snap), ["default/alpha"]);
}

#[test]
fn a_newcomer_never_displaces_a_running_service() {
    let mut dir = common::Dir::new();
    dir.write(
        "z.yaml",
        &service("zulu", "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80\n"),
    );
    let first = dir.reload();
    assert_eq!(service_names(&first), ["default/zulu"]);
    // `alpha` sorts first, but `zulu` was running: the newcomer is the one rejected.
    dir.write(
        "a.yaml",
        &service("alpha", "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80\n"),
    );
    let second = dir.reload();
    assert_eq!(service_names(&second), ["default/zulu"]);
    let errors = &second.diagnostics.errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].object.as_deref(), Some("default/alpha"));
}

#[test]
fn an_edit_into_a_conflict_never_displaces_an_unchanged_service() {
    let mut dir = common::Dir::new();
    dir.write(
        "a.yaml",
        &service("alpha", "  clusterIP: 10.96.0.51\n  ports:\n  - port: 80\n"),
    );
    dir.write(
        "z.yaml",
        &service("zulu", "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80\n"),
    );
    assert_eq!(
        service_names(&dir.reload()),
        ["default/alpha", "default/zulu"]
    );
    // `alpha` is edited to take `zulu`'s address: the edit is refused, `zulu` keeps its
    // address and `alpha` keeps the version that was running.
    dir.write(
        "a.yaml",
        &service("alpha", "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80\n"),
    );
    let snap = dir.reload();
    let errors = &snap.diagnostics.errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    check_error(
        &errors[0],
        &Want {
            file: &dir.label("a.yaml"),
            document: 0,
            line: 1,
            kind: Some("Service"),
            object: Some("default/alpha"),
            field: Some("spec.clusterIPs[0] + spec.ports[0]"),
            reason: "10.96.0.50:80/TCP is already used by Service default/zulu; \
                     keeping its last good version",
        },
    );
    let cluster_ip = |name: &str| {
        snap.service(&key("default", name))
            .map(|s| s.def.cluster_ips.clone())
    };
    assert_eq!(
        cluster_ip("zulu"),
        Some(vec!["10.96.0.50".parse().unwrap()])
    );
    assert_eq!(
        cluster_ip("alpha"),
        Some(vec!["10.96.0.51".parse().unwrap()])
    );

    // An edit that fits again is taken.
    dir.write(
        "a.yaml",
        &service("alpha", "  clusterIP: 10.96.0.52\n  ports:\n  - port: 80\n"),
    );
    let snap = dir.reload();
    assert!(
        snap.diagnostics.errors.is_empty(),
        "{:#?}",
        snap.diagnostics.errors
    );
    let alpha = snap.service(&key("default", "alpha")).expect("alpha");
    assert_eq!(
        alpha.def.cluster_ips,
        ["10.96.0.52".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn a_new_conflicting_service_has_no_last_good_version() {
    let mut dir = common::Dir::new();
    dir.write(
        "z.yaml",
        &service("zulu", "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80\n"),
    );
    dir.reload();
    dir.write(
        "a.yaml",
        &service("alpha", "  clusterIP: 10.96.0.50\n  ports:\n  - port: 80\n"),
    );
    let snap = dir.reload();
    assert_eq!(service_names(&snap), ["default/zulu"]);
    let e = &snap.diagnostics.errors[0];
    assert!(!e.reason.contains("keeping"), "{e}");
}

// === duplicates ===

#[test]
fn the_same_service_in_two_files_names_both_files() {
    let a = format!(
        "{GOOD_BEFORE}---\n{}",
        service("web", "  clusterIP: 10.96.7.1\n  ports:\n  - port: 80\n")
    );
    let b = format!(
        "{}---\n{GOOD_AFTER}",
        service("web", "  clusterIP: 10.96.7.2\n  ports:\n  - port: 8080\n")
    );
    let (dir, snap) = load(&[("a.yaml", &a), ("b.yaml", &b)]);
    let errors = &snap.diagnostics.errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    check_error(
        e,
        &Want {
            file: &dir.label("b.yaml"),
            document: 0,
            line: 1,
            kind: Some("Service"),
            object: Some("default/web"),
            field: Some("metadata.name"),
            reason: "defined more than once",
        },
    );
    let other = e.other.as_ref().expect("the error names the other file");
    assert_eq!(other.file.as_ref(), dir.path("a.yaml"));
    assert_eq!(other.document, 1);
    assert_eq!(other.line, GOOD_BEFORE.lines().count() + 2);
    assert!(e.to_string().contains(&dir.label("a.yaml")), "{e}");
    assert_eq!(
        service_names(&snap),
        ["default/good-after", "default/good-before", "default/web"]
    );
    let web = snap
        .service(&key("default", "web"))
        .expect("one definition is kept");
    assert_eq!(web.def.origin.file.as_ref(), dir.path("a.yaml"));
    assert_eq!(
        web.def.cluster_ips,
        ["10.96.7.1".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn the_same_name_in_two_namespaces_is_two_services() {
    let a = service("web", "  ports:\n  - port: 80\n");
    let b = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - port: 80\n";
    let (_dir, snap) = load(&[("a.yaml", &a), ("b.yaml", b)]);
    assert!(
        snap.diagnostics.errors.is_empty(),
        "{:#?}",
        snap.diagnostics.errors
    );
    assert_eq!(service_names(&snap), ["default/web", "shop/web"]);
}

// === names ===

#[test]
fn external_names_must_be_dns_names() {
    rejects(
        &service(
            "db",
            "  type: ExternalName\n  externalName: 'db server.example.com'\n",
        ),
        svc_err("default/db", "spec.externalName", "is not a valid DNS name"),
    );
    rejects(
        &service(
            "db",
            "  type: ExternalName\n  externalName: db..example.com\n",
        ),
        svc_err("default/db", "spec.externalName", "is not a valid DNS name"),
    );
    rejects(
        &service("db", "  type: ExternalName\n"),
        svc_err(
            "default/db",
            "spec.externalName",
            "required for type ExternalName",
        ),
    );
    let p = parse(
        FILE,
        &service(
            "db",
            "  type: ExternalName\n  externalName: db.example.com.\n",
        ),
    );
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    let svcplane_config::parse::Object::Service(def) = &p.objects[0] else {
        panic!("expected a Service");
    };
    assert_eq!(def.type_, ServiceType::ExternalName);
    assert_eq!(def.external_name.as_deref(), Some("db.example.com."));
}

#[test]
fn service_names_must_be_dns_1035_labels() {
    for (bad, why) in [
        ("1web", "must start with a lower-case letter"),
        ("Web", "is not a valid DNS label"),
        ("web.shop", "is not a valid DNS label"),
        ("web-", "is not a valid DNS label"),
    ] {
        rejects(
            &service(bad, "  ports:\n  - port: 80\n"),
            svc_err(&format!("default/{bad}"), "metadata.name", why),
        );
    }
    let long = "a".repeat(64);
    rejects(
        &service(&long, "  ports:\n  - port: 80\n"),
        svc_err(
            &format!("default/{long}"),
            "metadata.name",
            "longer than 63 characters",
        ),
    );
}

#[test]
fn other_object_names_must_be_dns_subdomains() {
    let bad_pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Web_1\nspec:\n  containers: []\n";
    rejects(
        bad_pod,
        Want::in_sandwich(
            FILE,
            "Pod",
            "default/Web_1",
            "metadata.name",
            "is not a valid DNS name",
        ),
    );
    let dotted_slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                        name: web.v4-abc\naddressType: IPv4\nendpoints: []\n";
    let p = parse(FILE, dotted_slice);
    assert!(
        p.errors.is_empty(),
        "a dotted slice name is valid: {:#?}",
        p.errors
    );
}

#[test]
fn namespaces_must_be_dns_labels() {
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: team.a\nspec:\n  ports:\n  - port: 80\n";
    rejects(
        bad,
        svc_err(
            "team.a/web",
            "metadata.namespace",
            "is not a valid DNS label",
        ),
    );
}

#[test]
fn names_are_required() {
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: shop\nspec:\n  ports:\n  - port: 80\n";
    let p = parse(FILE, &sandwich(bad));
    only_error(
        &p,
        &Want {
            object: None,
            ..Want::in_sandwich(
                FILE,
                "Service",
                "",
                "metadata.name",
                "required field is missing",
            )
        },
    );
    assert_neighbours_only(&p);
}

// === ports of a Service ===

#[test]
fn multiple_ports_need_names() {
    let p = parse(
        FILE,
        &sandwich(&service(
            "web",
            "  ports:\n  - port: 80\n  - name: https\n    port: 443\n",
        )),
    );
    only_error(
        &p,
        &svc_err(
            "default/web",
            "spec.ports[0].name",
            "required when the Service has more than one port",
        ),
    );
    assert_neighbours_only(&p);
    let single = parse(FILE, &service("web", "  ports:\n  - port: 80\n"));
    assert!(single.errors.is_empty(), "one port needs no name");
}

#[test]
fn port_names_must_be_unique() {
    rejects(
        &service(
            "web",
            "  ports:\n  - name: http\n    port: 80\n  - name: http\n    port: 8080\n",
        ),
        svc_err(
            "default/web",
            "spec.ports[1].name",
            "duplicate port name \"http\"",
        ),
    );
}

#[test]
fn port_names_must_be_dns_labels() {
    rejects(
        &service("web", "  ports:\n  - name: HTTP\n    port: 80\n"),
        svc_err(
            "default/web",
            "spec.ports[0].name",
            "is not a valid DNS label",
        ),
    );
}

#[test]
fn port_and_protocol_pairs_must_be_unique() {
    rejects(
        &service(
            "web",
            "  ports:\n  - name: a\n    port: 80\n  - name: b\n    port: 80\n",
        ),
        svc_err("default/web", "spec.ports[1].port", "duplicate port 80/TCP"),
    );
}

#[test]
fn routable_services_need_ports() {
    rejects(
        &service("web", "  clusterIP: 10.96.0.9\n"),
        svc_err("default/web", "spec.ports", "at least one port is required"),
    );
    let headless = parse(FILE, &service("web", "  clusterIP: None\n"));
    assert!(headless.errors.is_empty(), "headless Services need no port");
}

// === addresses of a Service ===

#[test]
fn cluster_ip_and_cluster_ips_must_agree() {
    rejects(
        &service(
            "web",
            "  clusterIP: 10.96.0.30\n  clusterIPs: [10.96.0.31]\n  ports:\n  - port: 80\n",
        ),
        svc_err(
            "default/web",
            "spec.clusterIPs[0]",
            "\"10.96.0.31\" must equal spec.clusterIP \"10.96.0.30\"",
        ),
    );
    rejects(
        &service(
            "web",
            "  clusterIP: None\n  clusterIPs: [10.96.0.31]\n  ports:\n  - port: 80\n",
        ),
        svc_err(
            "default/web",
            "spec.clusterIPs[0]",
            "\"10.96.0.31\" must equal spec.clusterIP \"None\"",
        ),
    );
}

#[test]
fn headless_node_port_services_are_rejected() {
    rejects(
        &service(
            "web",
            "  type: NodePort\n  clusterIP: None\n  ports:\n  - port: 80\n",
        ),
        svc_err(
            "default/web",
            "spec.clusterIP",
            "may not be None for type NodePort",
        ),
    );
}

// === other spec fields ===

#[test]
fn session_affinity_timeouts_are_1_to_86400() {
    for bad in [0, 86401, -5] {
        rejects(
            &service(
                "web",
                &format!(
                    "  ports:\n  - port: 80\n  sessionAffinity: ClientIP\n  \
                     sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {bad}\n"
                ),
            ),
            svc_err(
                "default/web",
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                &format!("{bad} must be between 1 and 86400"),
            ),
        );
    }
    let ok = parse(
        FILE,
        &format!(
            "{}---\n{}",
            service(
                "max",
                "  ports:\n  - port: 80\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    \
                 clientIP:\n      timeoutSeconds: 86400\n",
            ),
            service(
                "dflt",
                "  ports:\n  - port: 80\n  sessionAffinity: ClientIP\n"
            )
        ),
    );
    assert!(ok.errors.is_empty(), "{:#?}", ok.errors);
    let affinities: Vec<SessionAffinity> = ok
        .objects
        .iter()
        .map(|o| match o {
            svcplane_config::parse::Object::Service(d) => d.session_affinity,
            other => panic!("expected a Service: {other:?}"),
        })
        .collect();
    assert_eq!(
        affinities,
        [
            SessionAffinity::ClientIP {
                timeout_seconds: 86400
            },
            SessionAffinity::ClientIP {
                timeout_seconds: 10800
            }
        ]
    );
}

#[test]
fn session_affinity_and_traffic_policies_must_be_known() {
    rejects(
        &service("web", "  ports:\n  - port: 80\n  sessionAffinity: Cookie\n"),
        svc_err(
            "default/web",
            "spec.sessionAffinity",
            "unsupported value \"Cookie\"",
        ),
    );
    rejects(
        &service(
            "web",
            "  ports:\n  - port: 80\n  internalTrafficPolicy: Nearest\n",
        ),
        svc_err(
            "default/web",
            "spec.internalTrafficPolicy",
            "unsupported value \"Nearest\": must be Cluster or Local",
        ),
    );
}

#[test]
fn service_types_must_be_known() {
    rejects(
        &service("web", "  type: Ingress\n  ports:\n  - port: 80\n"),
        svc_err("default/web", "spec.type", "unsupported type \"Ingress\""),
    );
}

#[test]
fn services_need_a_spec() {
    rejects(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n",
        svc_err("default/web", "spec", "required field is missing"),
    );
}

// === document shape ===

#[test]
fn kind_and_api_version_are_required() {
    let no_kind = "apiVersion: v1\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n";
    let p = parse(FILE, &sandwich(no_kind));
    only_error(
        &p,
        &Want {
            kind: None,
            ..Want::in_sandwich(FILE, "", "default/web", "kind", "required field is missing")
        },
    );
    assert_neighbours_only(&p);

    let no_api_version = "kind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n";
    rejects_without_identity(
        no_api_version,
        Want::in_sandwich(
            FILE,
            "Service",
            "default/web",
            "apiVersion",
            "required field is missing",
        ),
    );
}

/// Like `rejects`, for documents that are not recognised as an object at all.
fn rejects_without_identity(bad: &str, want: Want<'_>) {
    let p = parse(FILE, &sandwich(bad));
    only_error(&p, &want);
    assert_neighbours_only(&p);
}

#[test]
fn documents_must_be_mappings() {
    for bad in ["- a\n- b\n", "just a string\n", "42\n"] {
        let p = parse(FILE, &sandwich(bad));
        only_error(
            &p,
            &Want {
                file: FILE,
                document: 1,
                line: sandwich_line(),
                kind: None,
                object: None,
                field: None,
                reason: "document is not a mapping",
            },
        );
        assert_neighbours_only(&p);
    }
}

#[test]
fn errors_in_several_objects_are_all_reported() {
    let text = format!(
        "{}---\n{GOOD_BEFORE}---\n{}",
        service("one", "  ports:\n  - port: 0\n"),
        service("two", "  type: Bogus\n  ports:\n  - port: 80\n")
    );
    let p = parse(FILE, &text);
    assert_eq!(p.errors.len(), 2, "{:#?}", p.errors);
    assert_eq!(p.errors[0].document, Some(0));
    assert_eq!(p.errors[1].document, Some(2));
    assert_eq!(accepted(&p), ["Service default/good-before"]);
}

#[test]
fn empty_strings_and_zero_target_ports_mean_the_api_server_defaults() {
    // What templated manifests (Helm values left empty) look like.
    let text = service(
        "web",
        "  type: \"\"\n  sessionAffinity: \"\"\n  internalTrafficPolicy: \"\"\n  \
         externalTrafficPolicy: \"\"\n  ports:\n  - name: a\n    port: 80\n    protocol: \"\"\n    \
         targetPort: 0\n  - name: b\n    port: 81\n    targetPort: \"\"\n  - name: c\n    port: 82\n",
    );
    let p = parse(FILE, &text);
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    let svcplane_config::parse::Object::Service(def) = &p.objects[0] else {
        panic!("expected a Service");
    };
    assert_eq!(def.type_, ServiceType::ClusterIP);
    assert_eq!(def.session_affinity, SessionAffinity::None);
    let ports: Vec<(u16, Protocol, String)> = def
        .ports
        .iter()
        .map(|p| (p.port, p.protocol, p.target_port.to_string()))
        .collect();
    assert_eq!(
        ports,
        [
            (80, Protocol::Tcp, "80".to_owned()),
            (81, Protocol::Tcp, "81".to_owned()),
            (82, Protocol::Tcp, "82".to_owned()),
        ]
    );
}

#[test]
fn a_bad_edit_keeps_the_last_good_version_and_its_neighbours_update() {
    let mut dir = common::Dir::new();
    let good = |port: u16| {
        format!(
            "{}---\n{GOOD_AFTER}",
            service(
                "web",
                &format!("  clusterIP: 10.96.3.3\n  ports:\n  - port: {port}\n")
            )
        )
    };
    dir.write("app.yaml", &good(80));
    let first = dir.reload();
    assert_eq!(service_names(&first), ["default/good-after", "default/web"]);

    // `web` breaks while its neighbour changes: the neighbour's change is taken, `web`
    // keeps its last good version.
    let broken = format!(
        "{}---\n{}",
        service("web", "  clusterIP: 10.96.3.3\n  ports:\n  - port: 0\n"),
        GOOD_AFTER.replace("port: 80", "port: 81")
    );
    dir.write("app.yaml", &broken);
    let snap = dir.reload();
    let errors = &snap.diagnostics.errors;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0]
            .reason
            .ends_with("; keeping its last good version"),
        "{}",
        errors[0]
    );
    let web = snap.service(&key("default", "web")).expect("web is kept");
    assert_eq!(web.def.ports[0].port, 80);
    let after = snap
        .service(&key("default", "good-after"))
        .expect("neighbour");
    assert_eq!(after.def.ports[0].port, 81);

    // A file that is no longer YAML at all keeps everything it had.
    dir.write("app.yaml", "kind: [unclosed\n");
    let snap = dir.reload();
    assert_eq!(service_names(&snap), ["default/good-after", "default/web"]);
    assert!(snap.diagnostics.errors[0].reason.contains("not valid YAML"));
}
