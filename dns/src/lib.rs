//! svcplane-dns: cluster DNS from svcplane snapshots.
//!
//! It owns answering names per the Kubernetes DNS-Based Service Discovery specification
//! 1.1.0 (A/AAAA, headless endpoints, SRV, PTR, ExternalName CNAME, `dns-version` TXT, SOA/NS,
//! NXDOMAIN vs NODATA with SOA) and forwarding everything else to upstream resolvers:
//! - [`gate`]: which Services DNS answers while a snapshot is being programmed (DNS never
//!   sends a client to an address that does not route yet);
//! - [`table`]: `Snapshot -> DnsTable`, every answer encoded once per snapshot;
//! - `index`: the table's flat name index, laid out to keep cache misses per query down;
//! - [`wire`]: request bytes -> response bytes (the fast path reads the wire directly;
//!   hickory-proto decodes anything unusual);
//! - [`server`]: UDP on blocking SO_REUSEPORT threads, TCP through hickory-server;
//! - `upstream`: forwarding with a TTL-bounded cache;
//! - [`metrics`]: CoreDNS's metric names.
//!
//! It must not: know Kubernetes object types (it reads the config crate's model), route
//! traffic, or install a tracing subscriber.
//!
//! Departure from DESIGN.md: UDP does not go through hickory-server's `Server`, which can only
//! encode answers from records per query; prebuilt answers are what makes the query path
//! cheap. TCP does use hickory-server.

#![forbid(unsafe_code)]

pub mod gate;
mod index;
pub mod metrics;
pub mod server;
pub mod table;
mod upstream;
pub mod wire;

pub use gate::DnsSource;
pub use metrics::{DnsCollector, DnsMetrics};
pub use server::{DnsError, DnsOptions, DnsServer};
pub use table::{DnsConfig, DnsTable};
