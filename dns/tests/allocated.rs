//! Services whose manifests state no ClusterIP are answered with the allocated address,
//! exactly like explicit ones (forward and reverse).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic with context, like the tests that call them"
)]

mod common;

use hickory_proto::rr::RecordType;

#[test]
fn dns_answers_allocated_addresses() {
    let table = common::table_of(&[(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\n\
         spec:\n  ports: [{name: http, port: 80}]\n",
    )]);
    let m = common::ask(&table, "api.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(common::answers_of(&m, RecordType::A), ["10.96.0.2"]);
    let m = common::ask(&table, "2.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        common::answers_of(&m, RecordType::PTR),
        ["api.shop.svc.cluster.local."]
    );
}
