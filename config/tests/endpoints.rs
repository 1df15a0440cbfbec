//! Endpoint resolution (EndpointSlices, else v1 Endpoints, else Pods matching the selector)
//! and endpoint selection (`PortView::routable_endpoints`).

mod common;

use std::sync::Arc;

use common::{key, load};
use svcplane_config::{
    Conditions, EndpointSource, IpFamily, PortView, Protocol, Service, ServicePortKey, Snapshot,
    TrafficScope,
};

fn service_of<'s>(snap: &'s Snapshot, ns: &str, name: &str) -> &'s Arc<Service> {
    snap.service(&key(ns, name)).unwrap_or_else(|| {
        panic!(
            "no Service {ns}/{name}; errors: {:#?}",
            snap.diagnostics.errors
        )
    })
}

fn port_of<'s>(
    snap: &'s Snapshot,
    ns: &str,
    name: &str,
    port: u16,
    protocol: Protocol,
) -> &'s PortView {
    let k = ServicePortKey {
        service: key(ns, name),
        port,
        protocol,
    };
    snap.port(&k).unwrap_or_else(|| panic!("no port {k}"))
}

/// Every backend of a port with its conditions, as `addr ready/serving/terminating`.
fn all_backends(view: &PortView) -> Vec<String> {
    view.endpoints
        .iter()
        .map(|e| format!("{} {}", e.backend, flags(e.conditions)))
        .collect()
}

/// Pod endpoints come in Pod name order; tests compare them sorted by address.
fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn flags(c: Conditions) -> String {
    let f = |b: bool, s: &'static str| if b { s } else { "-" };
    format!(
        "{}{}{}",
        f(c.ready, "R"),
        f(c.serving, "S"),
        f(c.terminating, "T")
    )
}

fn routable(
    view: &PortView,
    node: Option<&str>,
    scope: TrafficScope,
    family: IpFamily,
) -> Vec<String> {
    view.routable_endpoints(node, scope, family)
        .iter()
        .map(|e| e.backend.to_string())
        .collect()
}

fn assert_clean(snap: &Snapshot) {
    assert!(
        snap.diagnostics.errors.is_empty() && snap.diagnostics.warnings.is_empty(),
        "{:#?}",
        snap.diagnostics
    );
}

const WEB: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.80
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
";

const WEB_SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: [10.0.1.1]
";

const WEB_ENDPOINTS: &str = "\
apiVersion: v1
kind: Endpoints
metadata:
  name: web
  namespace: shop
subsets:
- addresses:
  - ip: 10.0.2.1
  ports:
  - name: http
    port: 8081
";

/// A Pod in `shop` with `labels` (flow mapping body), address and readiness.
fn pod(
    name: &str,
    labels: &str,
    ip: &str,
    ready: bool,
    extra_meta: &str,
    extra_spec: &str,
) -> String {
    let status = if ready { "True" } else { "False" };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{{labels}}}\n{extra_meta}\
         spec:\n  nodeName: node-a\n{extra_spec}  containers:\n  - name: main\n    image: app\n    ports:\n    \
         - name: http\n      containerPort: 8082\n      protocol: TCP\n    - name: dns\n      containerPort: 5353\n      \
         protocol: UDP\n    - name: dns\n      containerPort: 5354\n      protocol: TCP\n\
         status:\n  phase: Running\n  podIP: {ip}\n  conditions:\n  - type: Ready\n    status: \"{status}\"\n"
    )
}

// === which source wins ===

#[test]
fn slices_win_over_endpoints_which_win_over_pods() {
    let pod = pod("web-1", "app: web", "10.0.3.1", true, "", "");
    let (_dir, snap) = load(&[
        ("svc.yaml", WEB),
        ("slice.yaml", WEB_SLICE),
        ("endpoints.yaml", WEB_ENDPOINTS),
        ("pod.yaml", &pod),
    ]);
    assert_clean(&snap);
    let svc = service_of(&snap, "shop", "web");
    assert_eq!(svc.endpoint_source, EndpointSource::EndpointSlices);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(all_backends(view), ["10.0.1.1:8080 RS-"]);

    let (_dir, snap) = load(&[
        ("svc.yaml", WEB),
        ("endpoints.yaml", WEB_ENDPOINTS),
        ("pod.yaml", &pod),
    ]);
    assert_eq!(
        service_of(&snap, "shop", "web").endpoint_source,
        EndpointSource::Endpoints
    );
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(all_backends(view), ["10.0.2.1:8081 RS-"]);

    let (_dir, snap) = load(&[("svc.yaml", WEB), ("pod.yaml", &pod)]);
    assert_eq!(
        service_of(&snap, "shop", "web").endpoint_source,
        EndpointSource::Pods
    );
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(all_backends(view), ["10.0.3.1:8082 RS-"]);
}

#[test]
fn the_source_switches_as_objects_come_and_go() {
    let mut dir = common::Dir::new();
    dir.write("svc.yaml", WEB);
    dir.write("endpoints.yaml", WEB_ENDPOINTS);
    let snap = dir.reload();
    assert_eq!(
        service_of(&snap, "shop", "web").endpoint_source,
        EndpointSource::Endpoints
    );
    dir.write("slice.yaml", WEB_SLICE);
    let snap = dir.reload();
    assert_eq!(
        service_of(&snap, "shop", "web").endpoint_source,
        EndpointSource::EndpointSlices
    );
    dir.remove("slice.yaml");
    dir.remove("endpoints.yaml");
    let snap = dir.reload();
    let svc = service_of(&snap, "shop", "web");
    assert_eq!(
        svc.endpoint_source,
        EndpointSource::None,
        "a selector but no Pod"
    );
    assert!(svc.endpoints.is_empty());
}

#[test]
fn slices_of_a_service_are_joined_and_only_its_own_count() {
    let v6 = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv6
ports:
- name: http
  port: 8080
endpoints:
- addresses: ['fd00::1']
";
    let elsewhere = WEB_SLICE.replace("namespace: shop", "namespace: other");
    let unlabelled = WEB_SLICE
        .replace("name: web-abc", "name: web-nolabel")
        .replace("kubernetes.io/service-name: web", "app: web")
        .replace("10.0.1.1", "10.0.1.99");
    let (_dir, snap) = load(&[
        ("svc.yaml", WEB),
        ("a.yaml", WEB_SLICE),
        ("b.yaml", v6),
        ("c.yaml", &elsewhere),
        ("d.yaml", &unlabelled),
    ]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(
        all_backends(view),
        ["10.0.1.1:8080 RS-", "[fd00::1]:8080 RS-"]
    );
}

#[test]
fn a_service_without_selector_or_endpoints_has_none() {
    let svc =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: manual\nspec:\n  ports:\n  - port: 80\n";
    let (_dir, snap) = load(&[("svc.yaml", svc)]);
    let s = service_of(&snap, "default", "manual");
    assert_eq!(s.endpoint_source, EndpointSource::None);
    assert!(s.def.selector.is_none());
}

// === Pods ===

#[test]
fn pods_match_when_every_selector_label_matches() {
    let svc = WEB.replace("    app: web\n", "    app: web\n    tier: backend\n");
    let pods = [
        pod("both", "app: web, tier: backend", "10.0.3.1", true, "", ""),
        pod(
            "extra",
            "app: web, tier: backend, version: v2",
            "10.0.3.2",
            true,
            "",
            "",
        ),
        pod("one-label", "app: web", "10.0.3.3", true, "", ""),
        pod(
            "wrong-value",
            "app: web, tier: frontend",
            "10.0.3.4",
            true,
            "",
            "",
        ),
        pod("both", "app: web, tier: backend", "10.0.3.5", true, "", "")
            .replace("namespace: shop", "namespace: other"),
    ];
    let pods = pods.join("---\n");
    let (_dir, snap) = load(&[("svc.yaml", &svc), ("pods.yaml", &pods)]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(
        all_backends(view),
        ["10.0.3.1:8082 RS-", "10.0.3.2:8082 RS-"]
    );
    let svc = service_of(&snap, "shop", "web");
    let target = svc.endpoints[0]
        .target_ref
        .as_ref()
        .expect("Pod endpoints name their Pod");
    assert_eq!(
        (
            target.kind.as_deref(),
            target.namespace.as_deref(),
            target.name.as_deref()
        ),
        (Some("Pod"), Some("shop"), Some("both"))
    );
    assert_eq!(svc.endpoints[0].node_name.as_deref(), Some("node-a"));
}

#[test]
fn pods_need_an_address_and_must_not_have_finished() {
    let no_ip = pod("pending", "app: web", "''", false, "", "");
    let done = pod("done", "app: web", "10.0.3.9", false, "", "")
        .replace("phase: Running", "phase: Succeeded");
    let running = pod("running", "app: web", "10.0.3.1", true, "", "");
    let pods = [no_ip, done, running].join("---\n");
    let (_dir, snap) = load(&[("svc.yaml", WEB), ("pods.yaml", &pods)]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(all_backends(view), ["10.0.3.1:8082 RS-"]);
}

#[test]
fn pod_conditions_come_from_ready_and_deletion_timestamp() {
    let pods = [
        pod("ready", "app: web", "10.0.3.1", true, "", ""),
        pod("not-ready", "app: web", "10.0.3.2", false, "", ""),
        pod(
            "leaving",
            "app: web",
            "10.0.3.3",
            true,
            "  deletionTimestamp: \"2024-05-02T09:41:12Z\"\n",
            "",
        ),
        pod(
            "leaving-unready",
            "app: web",
            "10.0.3.4",
            false,
            "  deletionTimestamp: \"2024-05-02T09:41:12Z\"\n",
            "",
        ),
        // No conditions at all (just scheduled): not ready.
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fresh\n  namespace: shop\n  labels: {app: web}\n\
         spec:\n  containers:\n  - name: main\n    image: app\n    ports:\n    - name: http\n      \
         containerPort: 8082\nstatus:\n  podIP: 10.0.3.5\n"
            .to_owned(),
    ];
    let (_dir, snap) = load(&[("svc.yaml", WEB), ("pods.yaml", &pods.join("---\n"))]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(
        sorted(all_backends(view)),
        [
            "10.0.3.1:8082 RS-",
            "10.0.3.2:8082 ---",
            "10.0.3.3:8082 -ST",
            "10.0.3.4:8082 --T",
            "10.0.3.5:8082 ---",
        ]
    );
    assert_eq!(
        routable(view, None, TrafficScope::Internal, IpFamily::V4),
        ["10.0.3.1:8082"]
    );
}

#[test]
fn publish_not_ready_addresses_makes_pod_endpoints_ready() {
    let svc = WEB.replace("spec:\n", "spec:\n  publishNotReadyAddresses: true\n");
    let pods = [
        pod("not-ready", "app: web", "10.0.3.2", false, "", ""),
        pod(
            "leaving",
            "app: web",
            "10.0.3.3",
            true,
            "  deletionTimestamp: \"2024-05-02T09:41:12Z\"\n",
            "",
        ),
    ];
    let (_dir, snap) = load(&[("svc.yaml", &svc), ("pods.yaml", &pods.join("---\n"))]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(
        sorted(all_backends(view)),
        ["10.0.3.2:8082 R--", "10.0.3.3:8082 RST"]
    );
}

#[test]
fn named_target_ports_resolve_per_pod_and_protocol() {
    let svc = "\
apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: shop
spec:
  clusterIP: 10.96.0.53
  selector:
    app: dns
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: dns
  - name: dns-tcp
    port: 53
    protocol: TCP
    targetPort: dns
  - name: metrics
    port: 9153
    targetPort: metrics
  - name: fixed
    port: 9000
    targetPort: 9001
";
    let with_metrics = pod("full", "app: dns", "10.0.4.1", true, "", "").replace(
        "    - name: dns\n      containerPort: 5353",
        "    - name: metrics\n      containerPort: 9253\n    - name: dns\n      containerPort: 5353",
    );
    let without_metrics = pod("lean", "app: dns", "10.0.4.2", true, "", "");
    let pods = [with_metrics, without_metrics].join("---\n");
    let (_dir, snap) = load(&[("svc.yaml", svc), ("pods.yaml", &pods)]);
    assert_clean(&snap);
    let udp = port_of(&snap, "shop", "dns", 53, Protocol::Udp);
    assert_eq!(
        all_backends(udp),
        ["10.0.4.1:5353 RS-", "10.0.4.2:5353 RS-"]
    );
    let tcp = port_of(&snap, "shop", "dns", 53, Protocol::Tcp);
    assert_eq!(
        all_backends(tcp),
        ["10.0.4.1:5354 RS-", "10.0.4.2:5354 RS-"]
    );
    let metrics = port_of(&snap, "shop", "dns", 9153, Protocol::Tcp);
    assert_eq!(
        all_backends(metrics),
        ["10.0.4.1:9253 RS-"],
        "a Pod without the named port has no backend for that port"
    );
    let fixed = port_of(&snap, "shop", "dns", 9000, Protocol::Tcp);
    assert_eq!(
        all_backends(fixed),
        ["10.0.4.1:9001 RS-", "10.0.4.2:9001 RS-"]
    );
    assert_eq!(service_of(&snap, "shop", "dns").endpoints.len(), 2);
}

#[test]
fn dual_stack_pods_give_one_endpoint_per_address() {
    let p = pod("web-1", "app: web", "10.0.3.1", true, "", "").replace(
        "  podIP: 10.0.3.1\n",
        "  podIP: 10.0.3.1\n  podIPs:\n  - ip: 10.0.3.1\n  - ip: 'fd00::3:1'\n",
    );
    let (_dir, snap) = load(&[("svc.yaml", WEB), ("pod.yaml", &p)]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(
        routable(view, None, TrafficScope::Internal, IpFamily::V6),
        ["[fd00::3:1]:8082"]
    );
    assert_eq!(
        routable(view, None, TrafficScope::Internal, IpFamily::V4),
        ["10.0.3.1:8082"]
    );
}

#[test]
fn pod_hostnames_are_published_when_the_subdomain_is_the_service() {
    let svc = "\
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: shop
spec:
  clusterIP: None
  selector:
    app: db
  ports:
  - name: pg
    port: 5432
";
    let pods = [
        pod(
            "db-0",
            "app: db",
            "10.0.5.1",
            true,
            "",
            "  hostname: db-0\n  subdomain: db\n",
        ),
        pod(
            "db-1",
            "app: db",
            "10.0.5.2",
            true,
            "",
            "  hostname: db-1\n  subdomain: other\n",
        ),
        pod(
            "db-2",
            "app: db",
            "10.0.5.3",
            true,
            "",
            "  hostname: db-2\n",
        ),
    ];
    let (_dir, snap) = load(&[("svc.yaml", svc), ("pods.yaml", &pods.join("---\n"))]);
    assert_clean(&snap);
    let db = service_of(&snap, "shop", "db");
    assert_eq!(db.endpoint_source, EndpointSource::Pods);
    let hostnames: Vec<Option<&str>> = db.endpoints.iter().map(|e| e.hostname.as_deref()).collect();
    assert_eq!(hostnames, [Some("db-0"), None, None]);
    assert!(snap.ports().is_empty(), "headless Services route nothing");
}

// === EndpointSlice conditions and ports ===

const CONDITIONS_SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: [10.0.1.1]
- addresses: [10.0.1.2]
  conditions: {}
- addresses: [10.0.1.3]
  conditions: {ready: false}
- addresses: [10.0.1.4]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.1.5]
  conditions: {ready: true, serving: false}
- addresses: [10.0.1.6]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.0.1.7]
  conditions: {serving: true, terminating: true}
";

#[test]
fn slice_conditions_default_like_kubernetes() {
    let (_dir, snap) = load(&[("svc.yaml", WEB), ("slice.yaml", CONDITIONS_SLICE)]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(
        all_backends(view),
        [
            "10.0.1.1:8080 RS-",
            "10.0.1.2:8080 RS-",
            "10.0.1.3:8080 ---",
            "10.0.1.4:8080 -ST",
            "10.0.1.5:8080 R--",
            "10.0.1.6:8080 --T",
            "10.0.1.7:8080 RST",
        ],
        "nil ready = ready; nil serving = ready; nil terminating = false"
    );
}

#[test]
fn slice_ports_match_service_ports_by_name_and_protocol() {
    let svc = "\
apiVersion: v1
kind: Service
metadata:
  name: app
spec:
  clusterIP: 10.96.0.90
  ports:
  - name: http
    port: 80
    targetPort: web
  - name: grpc
    port: 9090
    targetPort: 9091
  - name: dns
    port: 53
    protocol: UDP
";
    let slice = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: app-1
  labels:
    kubernetes.io/service-name: app
addressType: IPv4
ports:
- name: http
  port: 8080
- name: grpc
  port: 7000
- name: dns
  port: 5353
  protocol: TCP
- name: web
  port: 9999
endpoints:
- addresses: [10.0.6.1]
";
    let (_dir, snap) = load(&[("svc.yaml", svc), ("slice.yaml", slice)]);
    assert_clean(&snap);
    let http = port_of(&snap, "default", "app", 80, Protocol::Tcp);
    assert_eq!(
        all_backends(http),
        ["10.0.6.1:8080 RS-"],
        "the slice port named like the Service port carries the resolved number"
    );
    let grpc = port_of(&snap, "default", "app", 9090, Protocol::Tcp);
    assert_eq!(
        all_backends(grpc),
        ["10.0.6.1:7000 RS-"],
        "the slice says where, not targetPort"
    );
    let dns = port_of(&snap, "default", "app", 53, Protocol::Udp);
    assert!(
        dns.endpoints.is_empty(),
        "a TCP slice port never serves a UDP Service port"
    );
}

#[test]
fn an_unnamed_service_port_matches_an_unnamed_slice_port() {
    let svc =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: one\nspec:\n  ports:\n  - port: 80\n";
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: one-x\n  \
                 labels:\n    kubernetes.io/service-name: one\naddressType: IPv4\nports:\n- name: ''\n  \
                 port: 8080\nendpoints:\n- addresses: [10.0.7.1]\n";
    let (_dir, snap) = load(&[("svc.yaml", svc), ("slice.yaml", slice)]);
    assert_clean(&snap);
    let view = port_of(&snap, "default", "one", 80, Protocol::Tcp);
    assert_eq!(all_backends(view), ["10.0.7.1:8080 RS-"]);
}

#[test]
fn the_same_backend_in_two_slices_is_listed_once() {
    let copy = WEB_SLICE.replace("name: web-abc", "name: web-def");
    let (_dir, snap) = load(&[("svc.yaml", WEB), ("a.yaml", WEB_SLICE), ("b.yaml", &copy)]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(all_backends(view), ["10.0.1.1:8080 RS-"]);
}

#[test]
fn endpoints_not_ready_addresses_are_not_ready() {
    let eps = "\
apiVersion: v1
kind: Endpoints
metadata:
  name: web
  namespace: shop
subsets:
- addresses:
  - ip: 10.0.2.1
    nodeName: node-a
    hostname: web-a
  notReadyAddresses:
  - ip: 10.0.2.2
  ports:
  - name: http
    port: 8081
";
    let (_dir, snap) = load(&[("svc.yaml", WEB), ("endpoints.yaml", eps)]);
    assert_clean(&snap);
    let view = port_of(&snap, "shop", "web", 80, Protocol::Tcp);
    assert_eq!(
        all_backends(view),
        ["10.0.2.1:8081 RS-", "10.0.2.2:8081 ---"]
    );
    let svc = service_of(&snap, "shop", "web");
    assert_eq!(svc.endpoints[0].hostname.as_deref(), Some("web-a"));
    assert_eq!(svc.endpoints[0].node_name.as_deref(), Some("node-a"));
}

// === routable_endpoints ===

/// A Service with the given traffic policies and one slice of endpoints, each
/// `(address, node, conditions)`.
fn routed(
    internal: &str,
    external: &str,
    endpoints: &[(&str, Option<&str>, &str)],
) -> (common::Dir, Arc<Snapshot>) {
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: NodePort\n  \
         clusterIPs: [10.96.0.80, 'fd00::80']\n  internalTrafficPolicy: {internal}\n  \
         externalTrafficPolicy: {external}\n  ports:\n  - port: 80\n    nodePort: 30080\n"
    );
    let mut v4 = String::new();
    let mut v6 = String::new();
    for (addr, node, conditions) in endpoints {
        let node = node
            .map(|n| format!("  nodeName: {n}\n"))
            .unwrap_or_default();
        let entry = format!("- addresses: ['{addr}']\n  conditions: {conditions}\n{node}");
        if addr.contains(':') {
            v6.push_str(&entry);
        } else {
            v4.push_str(&entry);
        }
    }
    let slice = |name: &str, family: &str, eps: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  \
             labels:\n    kubernetes.io/service-name: web\naddressType: {family}\nports:\n- port: 8080\n\
             endpoints:\n{eps}"
        )
    };
    let slices = format!(
        "{}---\n{}",
        slice("web-v4", "IPv4", if v4.is_empty() { "[]\n" } else { &v4 }),
        slice("web-v6", "IPv6", if v6.is_empty() { "[]\n" } else { &v6 })
    )
    .replace("endpoints:\n[]\n", "endpoints: []\n");
    let (dir, snap) = load(&[("svc.yaml", &svc), ("slices.yaml", &slices)]);
    assert_clean(&snap);
    (dir, snap)
}

const READY: &str = "{ready: true}";
const NOT_READY: &str = "{ready: false}";
const TERMINATING_SERVING: &str = "{ready: false, serving: true, terminating: true}";
const TERMINATING_DONE: &str = "{ready: false, serving: false, terminating: true}";
const SERVING_NOT_TERMINATING: &str = "{ready: false, serving: true, terminating: false}";

fn web_port(snap: &Snapshot) -> &PortView {
    port_of(snap, "default", "web", 80, Protocol::Tcp)
}

#[test]
fn only_ready_endpoints_route_when_any_is_ready() {
    let (_dir, snap) = routed(
        "Cluster",
        "Cluster",
        &[
            ("10.0.0.1", Some("node-a"), READY),
            ("10.0.0.2", Some("node-a"), NOT_READY),
            ("10.0.0.3", Some("node-b"), TERMINATING_SERVING),
            ("10.0.0.4", Some("node-b"), READY),
        ],
    );
    let view = web_port(&snap);
    for scope in [TrafficScope::Internal, TrafficScope::External] {
        assert_eq!(
            routable(view, Some("node-a"), scope, IpFamily::V4),
            ["10.0.0.1:8080", "10.0.0.4:8080"]
        );
    }
}

#[test]
fn serving_terminating_endpoints_route_when_none_is_ready() {
    let (_dir, snap) = routed(
        "Cluster",
        "Cluster",
        &[
            ("10.0.0.1", None, NOT_READY),
            ("10.0.0.2", None, TERMINATING_SERVING),
            ("10.0.0.3", None, TERMINATING_DONE),
            ("10.0.0.4", None, SERVING_NOT_TERMINATING),
            ("10.0.0.5", None, TERMINATING_SERVING),
        ],
    );
    assert_eq!(
        routable(web_port(&snap), None, TrafficScope::Internal, IpFamily::V4),
        ["10.0.0.2:8080", "10.0.0.5:8080"]
    );
}

#[test]
fn nothing_routes_when_nothing_is_ready_or_serving() {
    let (_dir, snap) = routed(
        "Cluster",
        "Cluster",
        &[
            ("10.0.0.1", None, NOT_READY),
            ("10.0.0.3", None, TERMINATING_DONE),
        ],
    );
    assert!(routable(web_port(&snap), None, TrafficScope::Internal, IpFamily::V4).is_empty());
}

#[test]
fn internal_local_keeps_the_nodes_endpoints_for_cluster_ip_traffic_only() {
    let eps = [
        ("10.0.0.1", Some("node-a"), READY),
        ("10.0.0.2", Some("node-b"), READY),
        ("10.0.0.3", None, READY),
        ("10.0.0.4", Some("node-a"), READY),
    ];
    let (_dir, snap) = routed("Local", "Cluster", &eps);
    let view = web_port(&snap);
    assert_eq!(
        routable(view, Some("node-a"), TrafficScope::Internal, IpFamily::V4),
        ["10.0.0.1:8080", "10.0.0.4:8080"]
    );
    assert_eq!(
        routable(view, Some("node-c"), TrafficScope::Internal, IpFamily::V4),
        Vec::<String>::new(),
        "no local endpoint: Local drops the traffic"
    );
    assert!(
        routable(view, None, TrafficScope::Internal, IpFamily::V4).is_empty(),
        "without a node name nothing is local"
    );
    assert_eq!(
        routable(view, None, TrafficScope::External, IpFamily::V4).len(),
        4,
        "external traffic follows its own (Cluster) policy"
    );
}

#[test]
fn external_local_keeps_the_nodes_endpoints_for_external_traffic_only() {
    let eps = [
        ("10.0.0.1", Some("node-a"), READY),
        ("10.0.0.2", Some("node-b"), READY),
    ];
    let (_dir, snap) = routed("Cluster", "Local", &eps);
    let view = web_port(&snap);
    assert_eq!(
        routable(view, Some("node-b"), TrafficScope::External, IpFamily::V4),
        ["10.0.0.2:8080"]
    );
    assert!(routable(view, None, TrafficScope::External, IpFamily::V4).is_empty());
    assert_eq!(
        routable(view, Some("node-b"), TrafficScope::Internal, IpFamily::V4),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
}

#[test]
fn local_policies_fall_back_to_local_terminating_endpoints() {
    let eps = [
        ("10.0.0.1", Some("node-a"), TERMINATING_SERVING),
        ("10.0.0.2", Some("node-b"), READY),
        ("10.0.0.3", Some("node-a"), NOT_READY),
    ];
    let (_dir, snap) = routed("Local", "Local", &eps);
    let view = web_port(&snap);
    for scope in [TrafficScope::Internal, TrafficScope::External] {
        assert_eq!(
            routable(view, Some("node-a"), scope, IpFamily::V4),
            ["10.0.0.1:8080"],
            "a ready endpoint on another node does not count for Local"
        );
    }
}

#[test]
fn endpoints_are_filtered_by_family() {
    let eps = [
        ("10.0.0.1", Some("node-a"), READY),
        ("fd00::1", Some("node-a"), READY),
        ("fd00::2", Some("node-b"), TERMINATING_SERVING),
        ("10.0.0.2", Some("node-b"), NOT_READY),
    ];
    let (_dir, snap) = routed("Cluster", "Cluster", &eps);
    let view = web_port(&snap);
    assert_eq!(
        routable(view, None, TrafficScope::Internal, IpFamily::V4),
        ["10.0.0.1:8080"]
    );
    assert_eq!(
        routable(view, None, TrafficScope::Internal, IpFamily::V6),
        ["[fd00::1]:8080"]
    );
    let frontends: Vec<String> = view.frontends().map(|(f, _)| f.to_string()).collect();
    assert_eq!(frontends, ["10.96.0.80:80/TCP", "[fd00::80]:80/TCP"]);
    assert_eq!(view.node_port, Some(30080));
}

#[test]
fn families_fall_back_independently() {
    let eps = [
        ("10.0.0.1", None, READY),
        ("fd00::1", None, NOT_READY),
        ("fd00::2", None, TERMINATING_SERVING),
    ];
    let (_dir, snap) = routed("Cluster", "Cluster", &eps);
    let view = web_port(&snap);
    assert_eq!(
        routable(view, None, TrafficScope::Internal, IpFamily::V6),
        ["[fd00::2]:8080"],
        "a ready IPv4 endpoint does not stop the IPv6 fallback"
    );
}
