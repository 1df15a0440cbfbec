//! The inputs svcplane reads: multi-document YAML (comment-only documents count), JSON,
//! `kind: List` and typed lists, real `kubectl get -o yaml` output, unknown kinds,
//! Namespaces and Services of other API groups.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::{
    GOOD_AFTER, GOOD_BEFORE, Want, accepted, check_error, fixture, fixture_path, key, only_error,
    parse, service_names,
};
use svcplane_config::{
    Backend, EndpointSource, Frontend, IpFamily, Loader, ParseOptions, PortView, Protocol,
    ServicePortKey, ServiceType, SessionAffinity, Snapshot, TargetPort, TrafficPolicy,
    TrafficScope,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn backends(eps: &[&svcplane_config::PortEndpoint]) -> Vec<String> {
    eps.iter().map(|e| e.backend.to_string()).collect()
}

fn port<'s>(snap: &'s Snapshot, ns: &str, name: &str, port: u16, proto: Protocol) -> &'s PortView {
    let k = ServicePortKey {
        service: key(ns, name),
        port,
        protocol: proto,
    };
    snap.port(&k)
        .unwrap_or_else(|| panic!("no port {k}; ports: {:?}", snap.ports().keys()))
}

const BAD_PORT: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: bad
  namespace: shop
spec:
  ports:
  - port: 0
";

// === multi-document YAML ===

#[test]
fn document_indexes_count_comment_only_documents() {
    // Raw documents: 0 = comments only, 1 = good-before, 2 = the bad one, 3 = good-after.
    let text = format!(
        "---\n# nothing here but a comment\n---\n{GOOD_BEFORE}---\n# the broken one\n{BAD_PORT}---\n{GOOD_AFTER}"
    );
    let bad_line = 3 + GOOD_BEFORE.lines().count() + 3;
    let p = parse("multi.yaml", &text);
    only_error(
        &p,
        &Want {
            file: "multi.yaml",
            document: 2,
            line: bad_line,
            kind: Some("Service"),
            object: Some("shop/bad"),
            field: Some("spec.ports[0].port"),
            reason: "0 is not a port",
        },
    );
    assert_eq!(
        accepted(&p),
        ["Service default/good-before", "Service default/good-after"]
    );
    let origins: Vec<(usize, usize)> = p
        .objects
        .iter()
        .map(|o| match o {
            svcplane_config::parse::Object::Service(s) => (s.origin.document, s.origin.line),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        origins,
        [(1, 4), (3, bad_line + BAD_PORT.lines().count() + 1)]
    );
}

#[test]
fn an_implicit_first_document_and_empty_documents_count_too() {
    // Raw documents: 0 = good-before (no leading `---`), 1 = empty, 2 = comment, 3 = bad.
    let text = format!("{GOOD_BEFORE}---\n---\n# just a note\n---\n{BAD_PORT}---\n");
    let p = parse("multi.yml", &text);
    let line = GOOD_BEFORE.lines().count() + 5;
    only_error(
        &p,
        &Want {
            file: "multi.yml",
            document: 3,
            line,
            kind: Some("Service"),
            object: Some("shop/bad"),
            field: Some("spec.ports[0].port"),
            reason: "0 is not a port",
        },
    );
    assert_eq!(accepted(&p), ["Service default/good-before"]);
}

#[test]
fn files_with_only_comments_or_separators_are_empty_not_wrong() {
    for text in ["", "# nothing\n", "---\n", "---\n# a\n---\n# b\n", "\n\n"] {
        let p = parse("empty.yaml", text);
        assert!(
            p.errors.is_empty() && p.warnings.is_empty(),
            "{text:?}: {p:#?}"
        );
        assert!(p.objects.is_empty());
    }
}

#[test]
fn windows_line_endings_and_a_byte_order_mark_are_accepted() {
    let crlf = format!("\u{feff}{GOOD_BEFORE}---\n{BAD_PORT}").replace('\n', "\r\n");
    let p = parse("win.yaml", &crlf);
    assert_eq!(accepted(&p), ["Service default/good-before"]);
    assert_eq!(p.errors.len(), 1, "{:#?}", p.errors);
    assert_eq!(p.errors[0].document, Some(1));
    assert_eq!(p.errors[0].line, Some(GOOD_BEFORE.lines().count() + 2));

    let json = "\u{feff}{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"web\"},\
                \"spec\":{\"ports\":[{\"port\":80}]}}";
    let p = parse("win.json", json);
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    assert_eq!(accepted(&p), ["Service default/web"]);
}

#[test]
fn yaml_syntax_errors_name_the_file_and_line() {
    let text = format!("{GOOD_BEFORE}---\nkind: Service\nmetadata: {{name: [broken\n");
    let p = parse("broken.yaml", &text);
    assert!(!p.syntax_ok);
    assert!(p.objects.is_empty());
    assert_eq!(p.errors.len(), 1);
    let e = &p.errors[0];
    assert_eq!(e.file.to_str(), Some("broken.yaml"));
    assert!(e.reason.starts_with("not valid YAML"), "{e}");
    assert!(e.line.is_some(), "{e}");
    assert_eq!(
        (e.document, e.kind.as_deref(), e.object.as_deref()),
        (None, None, None)
    );
}

// === JSON ===

#[test]
fn json_files_hold_one_object() {
    let json = r#"{
  "apiVersion": "v1",
  "kind": "Service",
  "metadata": {"name": "web", "namespace": "shop"},
  "spec": {"clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
}"#;
    for name in ["web.json", "WEB.JSON"] {
        let p = parse(name, json);
        assert!(p.errors.is_empty(), "{name}: {:#?}", p.errors);
        assert_eq!(accepted(&p), ["Service shop/web"]);
    }
    let svcplane_config::parse::Object::Service(def) = &parse("web.json", json).objects[0] else {
        panic!("expected a Service");
    };
    assert_eq!(def.ports[0].target_port, TargetPort::Name("http".into()));
    assert_eq!(def.cluster_ips, [ip("10.96.5.5")]);
}

#[test]
fn json_errors_name_file_document_and_field() {
    let json = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"ports": [{"port": 80, "protocol": "tcp"}]}}"#;
    let p = parse("web.json", json);
    only_error(
        &p,
        &Want {
            file: "web.json",
            document: 0,
            line: 1,
            kind: Some("Service"),
            object: Some("default/web"),
            field: Some("spec.ports[0].protocol"),
            reason: "unsupported protocol \"tcp\"",
        },
    );
}

#[test]
fn json_syntax_errors_name_the_line() {
    let p = parse(
        "web.json",
        "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Service\"\n  \"x\": 1\n}\n",
    );
    assert!(!p.syntax_ok);
    assert_eq!(p.errors.len(), 1);
    let e = &p.errors[0];
    assert!(e.reason.starts_with("not valid JSON"), "{e}");
    assert_eq!(e.line, Some(4));
    assert_eq!(e.document, None);
}

#[test]
fn yaml_files_may_hold_json() {
    let p = parse(
        "web.yaml",
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}"#,
    );
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    assert_eq!(accepted(&p), ["Service default/web"]);
}

// === lists ===

const LIST_YAML: &str = "\
# kubectl get svc -o yaml
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: one
  spec:
    ports:
    - port: 80
- apiVersion: v1
  kind: Service
  metadata:
    name: two
    namespace: shop
  spec:
    ports:
    - port: 80
    - name: b
      port: 81
- just a string
- apiVersion: v1
  kind: List
  items:
  - apiVersion: v1
    kind: Service
    metadata:
      name: three
    spec:
      ports:
      - port: 99999
  - apiVersion: v1
    kind: Service
    metadata:
      name: four
    spec:
      ports:
      - port: 80
";

#[test]
fn yaml_lists_give_items_their_own_field_paths() {
    let text = format!("{GOOD_BEFORE}---\n{LIST_YAML}");
    let p = parse("list.yaml", &text);
    let line = GOOD_BEFORE.lines().count() + 3;
    assert_eq!(p.errors.len(), 3, "{:#?}", p.errors);
    let want = |object, field, reason| Want {
        file: "list.yaml",
        document: 1,
        line,
        kind: Some("Service"),
        object,
        field: Some(field),
        reason,
    };
    check_error(
        &p.errors[0],
        &want(
            Some("shop/two"),
            "items[1].spec.ports[0].name",
            "required when the Service has more than one port",
        ),
    );
    check_error(
        &p.errors[1],
        &Want {
            kind: None,
            ..want(None, "items[2]", "document is not a mapping")
        },
    );
    check_error(
        &p.errors[2],
        &want(
            Some("default/three"),
            "items[3].items[0].spec.ports[0].port",
            "99999 is not a port",
        ),
    );
    assert_eq!(
        accepted(&p),
        [
            "Service default/good-before",
            "Service default/one",
            "Service default/four"
        ]
    );
}

#[test]
fn json_lists_give_items_their_own_field_paths() {
    let json = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "one"},
     "spec": {"ports": [{"port": 80}]}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "two"},
     "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
  ],
  "metadata": {"resourceVersion": ""}
}"#;
    let p = parse("list.json", json);
    only_error(
        &p,
        &Want {
            file: "list.json",
            document: 0,
            line: 1,
            kind: Some("Service"),
            object: Some("default/two"),
            field: Some("items[1].spec.ports[0].nodePort"),
            reason: "80 is outside the node port range 30000-32767",
        },
    );
    assert_eq!(accepted(&p), ["Service default/one"]);
}

#[test]
fn list_items_must_be_a_list() {
    let p = parse("list.yaml", "apiVersion: v1\nkind: List\nitems: {a: 1}\n");
    only_error(
        &p,
        &Want {
            file: "list.yaml",
            document: 0,
            line: 1,
            kind: Some("List"),
            object: None,
            field: Some("items"),
            reason: "must be a list of objects",
        },
    );
    let empty = parse("list.yaml", "apiVersion: v1\nkind: List\nitems: []\n");
    assert!(empty.errors.is_empty() && empty.objects.is_empty());
}

#[test]
fn typed_lists_load_with_or_without_item_kinds() {
    // `kubectl get --raw /api/v1/namespaces/shop/services`: items carry no kind/apiVersion.
    let raw = "\
apiVersion: v1
kind: ServiceList
metadata:
  resourceVersion: \"48801\"
items:
- metadata:
    name: web
    namespace: shop
  spec:
    clusterIP: 10.96.120.15
    ports:
    - name: http
      port: 80
- apiVersion: v1
  kind: Service
  metadata:
    name: api
    namespace: shop
  spec:
    ports:
    - name: http
      port: 80
      protocol: HTTP
";
    let p = parse("services.yaml", raw);
    only_error(
        &p,
        &Want {
            file: "services.yaml",
            document: 0,
            line: 1,
            kind: Some("Service"),
            object: Some("shop/api"),
            field: Some("items[1].spec.ports[0].protocol"),
            reason: "unsupported protocol \"HTTP\"",
        },
    );
    assert_eq!(accepted(&p), ["Service shop/web"]);

    let slices = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata:
    name: web-abc
    namespace: shop
    labels:
      kubernetes.io/service-name: web
  addressType: IPv4
  endpoints:
  - addresses: [10.244.1.7]
  ports:
  - name: http
    port: 8080
";
    let p = parse("slices.yaml", slices);
    assert!(p.errors.is_empty() && p.warnings.is_empty(), "{p:#?}");
    assert_eq!(accepted(&p), ["EndpointSlice shop/web-abc"]);
}

// === kinds svcplane does not use ===

#[test]
fn unknown_kinds_give_exactly_one_warning_naming_file_and_document() {
    let text = format!(
        "{GOOD_BEFORE}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  \
         namespace: shop\nspec:\n  replicas: 3\n---\n{GOOD_AFTER}"
    );
    let p = parse("app.yaml", &text);
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
    let w = &p.warnings[0];
    let line = GOOD_BEFORE.lines().count() + 2;
    assert_eq!(w.file.to_str(), Some("app.yaml"));
    assert_eq!(w.document, Some(1));
    assert_eq!(w.line, Some(line));
    assert!(w.message.contains("Deployment shop/web (apps/v1)"), "{w}");
    assert_eq!(
        w.to_string(),
        format!("app.yaml:{line}: document 1: {}", w.message)
    );
    assert_eq!(
        accepted(&p),
        ["Service default/good-before", "Service default/good-after"]
    );
}

#[test]
fn unknown_kinds_inside_lists_warn_once_each() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  \
                metadata:\n    name: settings\n  data:\n    a: b\n- apiVersion: v1\n  kind: Secret\n  \
                metadata:\n    name: token\n";
    let p = parse("list.yaml", text);
    assert!(p.errors.is_empty());
    assert_eq!(p.warnings.len(), 2, "{:#?}", p.warnings);
    assert!(p.warnings[0].message.contains("ConfigMap default/settings"));
    assert!(p.warnings[1].message.contains("Secret default/token"));
    assert!(p.warnings.iter().all(|w| w.document == Some(0)));
}

#[test]
fn namespaces_are_accepted_silently() {
    let text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    team: web\n---\n{GOOD_AFTER}"
    );
    let p = parse("ns.yaml", &text);
    assert!(p.errors.is_empty() && p.warnings.is_empty(), "{p:#?}");
    assert_eq!(accepted(&p), ["Service default/good-after"]);
}

#[test]
fn services_of_other_api_groups_are_skipped_with_a_warning() {
    let knative = "\
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: shop
spec:
  template:
    spec:
      containers:
      - image: ghcr.io/knative/helloworld-go:latest
        ports:
        - containerPort: 8080
";
    let text = format!("{GOOD_BEFORE}---\n{knative}---\n{GOOD_AFTER}");
    let p = parse("knative.yaml", &text);
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    assert!(p.rejected.is_empty());
    assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
    let w = &p.warnings[0];
    assert_eq!(w.document, Some(1));
    assert!(
        w.message
            .contains("Service shop/hello (serving.knative.dev/v1)"),
        "{w}"
    );
    assert_eq!(
        accepted(&p),
        ["Service default/good-before", "Service default/good-after"]
    );
}

// === real kubectl output ===

fn load_fixture(name: &str) -> std::sync::Arc<Snapshot> {
    let mut loader = Loader::new(fixture_path(name), ParseOptions::default());
    loader
        .reload()
        .unwrap_or_else(|e| panic!("cannot load {name}: {e}"));
    loader.snapshot().clone()
}

#[test]
fn a_kubectl_get_all_dump_loads_without_errors() {
    let snap = load_fixture("kubectl-get-all.yaml");
    let d = &snap.diagnostics;
    assert!(d.errors.is_empty(), "{:#?}", d.errors);
    assert!(d.warnings.is_empty(), "{:#?}", d.warnings);
    assert_eq!(d.files, 1);
    assert_eq!(
        service_names(&snap),
        [
            "default/kubernetes",
            "kube-system/kube-dns",
            "kube-system/metrics-server",
            "shop/db",
            "shop/frontend",
            "shop/payments-api",
            "shop/web",
        ]
    );
    let ports: Vec<String> = snap.ports().keys().map(ToString::to_string).collect();
    assert_eq!(
        ports,
        [
            "default/kubernetes:443/TCP",
            "kube-system/kube-dns:53/TCP",
            "kube-system/kube-dns:53/UDP",
            "kube-system/kube-dns:9153/TCP",
            "kube-system/metrics-server:443/TCP",
            "shop/frontend:80/TCP",
            "shop/frontend:443/TCP",
            "shop/web:80/TCP",
        ],
        "headless and ExternalName Services have no routable ports"
    );
    for svc in snap.services().values() {
        let want = match &*svc.def.key.name {
            "payments-api" => EndpointSource::None,
            _ => EndpointSource::EndpointSlices,
        };
        assert_eq!(svc.endpoint_source, want, "{}", svc.def.key);
    }
}

#[test]
fn the_dump_yields_the_expected_services() {
    let snap = load_fixture("kubectl-get-all.yaml");

    let api = port(&snap, "default", "kubernetes", 443, Protocol::Tcp);
    assert_eq!(api.cluster_ips, [ip("10.96.0.1")]);
    assert_eq!(
        backends(&api.routable_endpoints(None, TrafficScope::Internal, IpFamily::V4)),
        ["172.18.0.2:6443"]
    );

    let dns = port(&snap, "kube-system", "kube-dns", 53, Protocol::Udp);
    assert_eq!(dns.name.as_deref(), Some("dns"));
    assert_eq!(
        backends(&dns.routable_endpoints(None, TrafficScope::Internal, IpFamily::V4)),
        ["10.244.0.3:53", "10.244.0.4:53"]
    );
    let frontend = Frontend {
        ip: ip("10.96.0.10"),
        port: 9153,
        protocol: Protocol::Tcp,
    };
    let metrics = snap
        .by_frontend(&frontend)
        .expect("kube-dns metrics frontend");
    assert_eq!(metrics.name.as_deref(), Some("metrics"));
    assert_eq!(metrics.endpoints.len(), 2);
    let coredns = &metrics.endpoints[0];
    assert_eq!(coredns.node_name.as_deref(), Some("control-plane"));

    let web_svc = snap.service(&key("shop", "web")).expect("web");
    assert_eq!(
        web_svc.def.cluster_ips,
        [ip("10.96.120.15"), ip("fd00:10:96::7a3c")]
    );
    assert_eq!(
        web_svc.def.ports[0].target_port,
        TargetPort::Name("http".into())
    );
    assert_eq!(web_svc.endpoints.len(), 6, "two slices, one per family");
    let web = port(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(
        backends(&web.routable_endpoints(None, TrafficScope::Internal, IpFamily::V4)),
        ["10.244.1.7:8080", "10.244.2.9:8080"]
    );
    assert_eq!(
        backends(&web.routable_endpoints(None, TrafficScope::Internal, IpFamily::V6)),
        ["[fd00:10:244:1::7]:8080", "[fd00:10:244:2::9]:8080"]
    );
    let zones: Vec<Option<&str>> = web.endpoints.iter().map(|e| e.zone.as_deref()).collect();
    assert_eq!(zones[0], Some("eu-west-1a"));
    let target = web_svc.endpoints[0].target_ref.as_ref().expect("targetRef");
    assert_eq!(target.name.as_deref(), Some("web-7d9c6b8f5d-2xkqp"));

    let fe_svc = snap.service(&key("shop", "frontend")).expect("frontend");
    assert_eq!(fe_svc.def.type_, ServiceType::LoadBalancer);
    assert_eq!(
        fe_svc.def.load_balancer_ips,
        [ip("203.0.113.10")],
        "hostname-only ingress entries carry no IP"
    );
    assert_eq!(fe_svc.def.external_ips, [ip("198.51.100.20")]);
    assert_eq!(
        fe_svc.def.session_affinity,
        SessionAffinity::ClientIP {
            timeout_seconds: 10800
        }
    );
    let fe = port(&snap, "shop", "frontend", 443, Protocol::Tcp);
    assert_eq!(fe.node_port, Some(31443));
    assert_eq!(fe.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(
        fe.frontends().count(),
        3,
        "clusterIP, externalIP, LB ingress"
    );
    assert_eq!(
        snap.by_node_port(31080, Protocol::Tcp).map(|p| p.key.port),
        Some(80)
    );
    assert_eq!(
        backends(&fe.routable_endpoints(Some("node-a"), TrafficScope::External, IpFamily::V4)),
        ["10.244.1.20:8443"]
    );
    assert_eq!(
        backends(&fe.routable_endpoints(Some("node-a"), TrafficScope::Internal, IpFamily::V4)),
        ["10.244.1.20:8443", "10.244.2.21:8443"]
    );

    let db = snap.service(&key("shop", "db")).expect("db");
    assert!(db.def.headless);
    assert!(db.def.publish_not_ready_addresses);
    let hostnames: Vec<Option<&str>> = db.endpoints.iter().map(|e| e.hostname.as_deref()).collect();
    assert_eq!(hostnames, [Some("db-0"), Some("db-1")]);

    let ext = snap
        .service(&key("shop", "payments-api"))
        .expect("payments-api");
    assert_eq!(ext.def.type_, ServiceType::ExternalName);
    assert_eq!(
        ext.def.external_name.as_deref(),
        Some("payments.example.com")
    );

    // Mid rollout: no endpoint is ready, the terminating one still serves.
    let ms = port(&snap, "kube-system", "metrics-server", 443, Protocol::Tcp);
    assert_eq!(
        backends(&ms.routable_endpoints(None, TrafficScope::Internal, IpFamily::V4)),
        ["10.244.0.8:10250"]
    );
    assert_eq!(snap.endpoint_count(), 1 + 2 + 2 + 6 + 2 + 2);
}

#[test]
fn a_kubectl_get_svc_json_list_loads() {
    let snap = load_fixture("kubectl-get-svc.json");
    assert!(
        snap.diagnostics.errors.is_empty(),
        "{:#?}",
        snap.diagnostics.errors
    );
    assert_eq!(service_names(&snap), ["shop/cart", "shop/syslog"]);
    let cart = port(&snap, "shop", "cart", 9090, Protocol::Tcp);
    assert_eq!(cart.internal_traffic_policy, TrafficPolicy::Local);
    assert!(cart.endpoints.is_empty());
    let svc = snap.service(&key("shop", "cart")).expect("cart");
    assert_eq!(svc.endpoint_source, EndpointSource::None, "no Pod matches");
    assert_eq!(
        svc.def.ports[0].app_protocol.as_deref(),
        Some("kubernetes.io/h2c")
    );
    let udp = snap
        .by_node_port(30514, Protocol::Udp)
        .expect("UDP nodePort");
    let tcp = snap
        .by_node_port(30514, Protocol::Tcp)
        .expect("TCP nodePort");
    assert_eq!(udp.key.service, tcp.key.service);
    assert_eq!(udp.name.as_deref(), Some("syslog-udp"));
}

#[test]
fn the_dump_parses_the_same_as_yaml_and_as_part_of_a_directory() {
    let text = fixture("kubectl-get-all.yaml");
    let p = parse("dump.yaml", &text);
    assert!(p.errors.is_empty() && p.warnings.is_empty(), "{p:#?}");
    let kinds = |k: &str| p.objects.iter().filter(|o| o.identity().0 == k).count();
    assert_eq!(
        (
            kinds("Service"),
            kinds("EndpointSlice"),
            kinds("Endpoints"),
            kinds("Pod")
        ),
        (7, 7, 3, 4)
    );
    let backend = Backend(SocketAddr::new(ip("10.244.1.7"), 8080));
    assert_eq!(backend.to_string(), "10.244.1.7:8080");
}
