//! svcplane-config: the only crate that knows Kubernetes object types.
//!
//! It owns the path from manifests to one immutable, versioned [`Snapshot`]:
//! - [`parse`]: pure `&str -> objects + errors` for YAML (multi-document) and JSON files,
//!   `kind: List` included, through the `k8s-openapi` types; every validation rule lives here
//!   and every error names file, document, object, field and reason;
//! - [`snapshot`]: endpoint resolution (EndpointSlices, else v1 Endpoints, else Pods matching
//!   the selector), cross-object checks (duplicates, frontend and nodePort conflicts),
//!   indexes by Service and by frontend, and [`PortView::routable_endpoints`], the single
//!   implementation of endpoint selection both data planes use;
//! - [`diff`]: (Service, port)-granular changes between two snapshots;
//! - [`loader`]: a directory tree (or one file) with a per-file parse cache, so a change
//!   costs one file's parse plus the rebuild;
//! - [`watch`]: a file watcher that publishes snapshots over `tokio::sync::watch`;
//! - [`yaml`]: multi-document YAML -> `serde_json::Value`, straight from parser events;
//!   plain manifests skip the `Value` and go from events straight into the `k8s-openapi`
//!   types (`typed`), with the `Value` path as the fallback and the reference.
//!
//! It must not: touch sockets, know about DNS wire formats or BPF maps, or install a
//! tracing subscriber.

#![forbid(unsafe_code)]

pub mod alloc;
pub mod diff;
pub mod error;
pub mod loader;
pub mod model;
pub mod names;
pub mod parse;
mod resolver;
pub mod snapshot;
mod typed;
pub mod watch;
pub mod yaml;

pub use alloc::{AllocOptions, Cidr, StateError};
pub use diff::{Change, SnapshotDiff, diff};
pub use error::{ConfigError, LoadError, Warning};
pub use loader::{Loader, ReloadStats};
pub use model::{
    Backend, Conditions, Endpoint, EndpointPort, EndpointSource, Frontend, IpFamily, Origin,
    PortRange, Protocol, ServiceDef, ServiceKey, ServicePort, ServiceType, SessionAffinity,
    TargetPort, TargetRef, TrafficPolicy,
};
pub use parse::{ParseOptions, ParsedFile, parse_file, parse_file_via_values};
pub use snapshot::{
    Diagnostics, PortEndpoint, PortView, Service, ServicePortKey, Snapshot, SnapshotDelta,
    TrafficScope,
};
pub use watch::{ManifestWatcher, WatchStats};
