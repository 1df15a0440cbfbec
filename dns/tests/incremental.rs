//! The table builder reuses each Service's encoded answers between snapshots; whatever the
//! history, the table it produces must equal one built from scratch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

use std::path::Path;

use svcplane_config::{Loader, ParseOptions, Snapshot};
use svcplane_dns::table::TableBuilder;
use svcplane_dns::{DnsConfig, DnsTable};

fn assert_same(a: &DnsTable, b: &DnsTable) {
    assert_eq!(a.len(), b.len(), "name count");
    let cname = u16::from(hickory_proto::rr::RecordType::CNAME);
    for (k, ea) in a.entries() {
        let k = k.as_slice();
        let eb = b
            .get(k)
            .unwrap_or_else(|| panic!("name {k:?} missing from the cold table"));
        assert_eq!(ea.zone(), eb.zone(), "zone of {k:?}");
        let mut ta: Vec<_> = ea.answers().map(|(t, v)| (t, v.to_message(k, t))).collect();
        let mut tb: Vec<_> = eb.answers().map(|(t, v)| (t, v.to_message(k, t))).collect();
        ta.sort();
        tb.sort();
        assert_eq!(ta, tb, "answers of {k:?}");
        assert_eq!(
            ea.cname().map(|c| c.to_message(k, cname)),
            eb.cname().map(|c| c.to_message(k, cname)),
            "cname of {k:?}"
        );
    }
}

fn headless(name: &str, ips: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\n\
         spec:\n  clusterIP: None\n  ports: [{{name: web, port: 80}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: {name}-1\n  namespace: t\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: web, port: 8080}}]\nendpoints:\n"
    );
    for ip in ips {
        s.push_str(&format!("- addresses: [\"{ip}\"]\n"));
    }
    s
}

fn reload(loader: &mut Loader) -> std::sync::Arc<Snapshot> {
    loader.reload().unwrap();
    loader.snapshot().clone()
}

/// One change to the manifest directory.
type Step = Box<dyn Fn(&Path)>;

#[test]
fn incremental_tables_equal_cold_ones() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for f in std::fs::read_dir(&examples).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg = DnsConfig::new("cluster.local", 5).unwrap();
    let mut loader = Loader::new(dir.path(), ParseOptions::default());
    let mut builder = TableBuilder::new(cfg.clone());

    let steps: Vec<Step> = vec![
        Box::new(|_| {}),
        // Two headless Services sharing an address: one reverse name, two PTRs.
        Box::new(|d| {
            std::fs::write(d.join("a.yaml"), headless("a", &["10.1.0.1", "10.1.0.2"])).unwrap()
        }),
        Box::new(|d| {
            std::fs::write(d.join("b.yaml"), headless("b", &["10.1.0.2", "10.1.0.3"])).unwrap()
        }),
        // An endpoint moves; the shared address goes away.
        Box::new(|d| std::fs::write(d.join("b.yaml"), headless("b", &["10.1.0.4"])).unwrap()),
        // An ExternalName pointing at a Service of the zone, then that Service changes.
        Box::new(|d| {
            std::fs::write(
                d.join("alias.yaml"),
                "apiVersion: v1\nkind: Service\nmetadata: {name: alias, namespace: t}\n\
                 spec: {type: ExternalName, externalName: a.t.svc.cluster.local}\n",
            )
            .unwrap()
        }),
        Box::new(|d| std::fs::write(d.join("a.yaml"), headless("a", &["10.1.0.9"])).unwrap()),
        Box::new(|d| std::fs::remove_file(d.join("web.yaml")).unwrap()),
    ];
    for (i, step) in steps.iter().enumerate() {
        step(dir.path());
        let snap = reload(&mut loader);
        let incremental = builder.build(&snap);
        let cold = DnsTable::build(&snap, &cfg);
        assert_eq!(incremental.version, snap.version, "step {i}");
        assert_same(&incremental, &cold);
    }
}
