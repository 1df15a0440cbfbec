//! Pure parsing: one file's text -> validated objects, errors and warnings. No IO here.
//!
//! Each YAML document (or JSON value) is dispatched on `apiVersion` + `kind`, deserialized
//! into the `k8s-openapi` type (so real objects with status, managedFields and unknown
//! fields load) and then converted into the model with every rule checked. A bad object
//! produces errors and no object; its neighbours load.
//!
//! Two ways lead to the typed object, with the same result for every input: plain YAML
//! goes straight from parser events into the type (`typed`, the fast path); everything
//! else, and every file with an error, is read into a `serde_json::Value` per document first
//! ([`parse_file_via_values`]), which is what names the field of a type error.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::error::{ConfigError, Warning};
use crate::model::{
    Conditions, Endpoint, EndpointPort, IpFamily, Origin, PortRange, Protocol, ServiceDef,
    ServiceKey, ServicePort, ServiceType, SessionAffinity, TargetPort, TargetRef, TrafficPolicy,
};
use crate::names;
use crate::typed::Typed;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Namespace of objects whose manifest states none (what `kubectl apply` would use).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Settings that change what is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    pub node_port_range: PortRange,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            node_port_range: PortRange::DEFAULT_NODE_PORTS,
        }
    }
}

/// An EndpointSlice: endpoints of one address family for one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceDef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// Value of the `kubernetes.io/service-name` label.
    pub service: Option<Arc<str>>,
    pub endpoints: Vec<Endpoint>,
    pub origin: Origin,
}

/// A v1 Endpoints object (named after its Service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointsDef {
    pub key: ServiceKey,
    pub endpoints: Vec<Endpoint>,
    pub origin: Origin,
}

/// A container port of a Pod (targets of named `targetPort`s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<Arc<str>>,
    pub port: u16,
    pub protocol: Protocol,
}

/// The parts of a Pod the endpoints controller looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs` (or `status.podIP`); empty until the Pod has an address, and again
    /// once it has finished (phase Succeeded or Failed: its address may belong to another
    /// Pod by now).
    pub ips: Vec<IpAddr>,
    pub conditions: Conditions,
    pub node_name: Option<Arc<str>>,
    pub hostname: Option<Arc<str>>,
    pub subdomain: Option<Arc<str>>,
    pub ports: Vec<ContainerPort>,
    pub origin: Origin,
}

/// One accepted object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Service(Arc<ServiceDef>),
    Slice(Arc<SliceDef>),
    Endpoints(Arc<EndpointsDef>),
    Pod(Arc<PodDef>),
}

impl Object {
    /// (kind, namespace, name): the identity used to keep an object's last good version.
    pub fn identity(&self) -> (&'static str, &str, &str) {
        match self {
            Object::Service(s) => ("Service", &s.key.namespace, &s.key.name),
            Object::Slice(s) => ("EndpointSlice", &s.namespace, &s.name),
            Object::Endpoints(e) => ("Endpoints", &e.key.namespace, &e.key.name),
            Object::Pod(p) => ("Pod", &p.namespace, &p.name),
        }
    }
}

/// What one file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedFile {
    pub objects: Vec<Object>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<Warning>,
    /// Identities of objects that were present but rejected (their last good version may
    /// be kept by the loader).
    pub rejected: Vec<(&'static str, String, String)>,
    /// False when the file could not be read as YAML/JSON at all.
    pub syntax_ok: bool,
}

/// Parses one manifest file. `file` only labels diagnostics.
///
/// YAML made of plain untagged collections and scalars goes straight from parser events
/// into the `k8s-openapi` types; anything else (and every file with an error) takes
/// [`parse_file_via_values`], which gives the same result for every input.
pub fn parse_file(file: &Arc<Path>, text: &str, opts: &ParseOptions) -> ParsedFile {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !is_json(file)
        && let Some(docs) = crate::typed::documents(text)
        && let Some(out) = from_typed(file, text, docs, opts)
    {
        return out;
    }
    parse_file_via_values(file, text, opts)
}

fn is_json(file: &Path) -> bool {
    file.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// The fast path's documents through the same checks as [`parse_value`]; `None` when an
/// object is rejected, so the general path reports it (naming the field a type error is
/// in, and keeping the order of errors).
fn from_typed(
    file: &Arc<Path>,
    text: &str,
    docs: Vec<crate::typed::Doc>,
    opts: &ParseOptions,
) -> Option<ParsedFile> {
    let mut out = ParsedFile {
        syntax_ok: true,
        ..ParsedFile::default()
    };
    let index = DocIndex::new(text);
    for doc in docs {
        let origin = Origin {
            file: file.clone(),
            document: index.document_of(doc.line),
            line: doc.line,
        };
        let (kind, meta) = match &doc.object {
            Typed::Service(s) => ("Service", &s.metadata),
            Typed::Slice(s) => ("EndpointSlice", &s.metadata),
            Typed::Endpoints(e) => ("Endpoints", &e.metadata),
            Typed::Pod(p) => ("Pod", &p.metadata),
            Typed::Namespace => continue,
            Typed::Other {
                api_version,
                kind,
                name,
                namespace,
            } => {
                let object = object_name(name.as_deref(), namespace.as_deref());
                out.warnings
                    .push(skipped_kind(&origin, kind, api_version, object.as_deref()));
                continue;
            }
        };
        let mut ctx = Ctx {
            origin: &origin,
            kind: kind.to_owned(),
            object: object_name(meta.name.as_deref(), meta.namespace.as_deref()),
            prefix: "",
            errors: Vec::new(),
        };
        let accepted = define(&mut ctx, doc.object, opts, &mut out.warnings);
        match accepted {
            Some(obj) if ctx.errors.is_empty() => out.objects.push(obj),
            None if ctx.errors.is_empty() => {}
            _ => return None,
        }
    }
    Some(out)
}

/// `namespace/name` of an object, as errors name it.
fn object_name(name: Option<&str>, namespace: Option<&str>) -> Option<String> {
    name.map(|n| format!("{}/{n}", namespace.unwrap_or(DEFAULT_NAMESPACE)))
}

fn skipped_kind(origin: &Origin, kind: &str, api_version: &str, object: Option<&str>) -> Warning {
    Warning {
        file: origin.file.clone(),
        document: Some(origin.document),
        line: Some(origin.line),
        message: format!(
            "skipping {kind} {} ({api_version}): not a kind svcplane uses",
            object.unwrap_or("(unnamed)")
        ),
    }
}

/// [`parse_file`] with every document read into a `serde_json::Value` first: the general
/// path, and the reference the fast path is tested against.
pub fn parse_file_via_values(file: &Arc<Path>, text: &str, opts: &ParseOptions) -> ParsedFile {
    let mut out = ParsedFile {
        syntax_ok: true,
        ..ParsedFile::default()
    };
    // Editors on Windows save UTF-8 with a byte order mark; JSON parsers reject it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let is_json = is_json(file);
    let documents: Vec<(usize, usize, Value)> = if is_json {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => vec![(0, 1, v)],
            Err(e) => {
                out.syntax_ok = false;
                out.errors.push(ConfigError::file(
                    file,
                    Some(e.line()),
                    format!("not valid JSON: {e}"),
                ));
                return out;
            }
        }
    } else {
        match crate::yaml::documents(text) {
            Ok(docs) => {
                let index = DocIndex::new(text);
                docs.into_iter()
                    .map(|(line, value)| (index.document_of(line), line, value))
                    .collect()
            }
            Err(e) => {
                out.syntax_ok = false;
                out.errors.push(ConfigError::file(
                    file,
                    Some(e.line()),
                    format!("not valid YAML: {e}"),
                ));
                return out;
            }
        }
    };
    for (document, line, value) in documents {
        let origin = Origin {
            file: file.clone(),
            document,
            line,
        };
        parse_value(&origin, "", value, opts, &mut out);
    }
    out
}

/// Maps a line to the raw document it is in, counting documents that hold only comments.
struct DocIndex {
    separators: Vec<usize>,
    implicit_first: bool,
}

impl DocIndex {
    fn new(text: &str) -> Self {
        let mut separators = Vec::new();
        let mut content_before_first = false;
        for (i, line) in text.lines().enumerate() {
            let is_sep = line.strip_prefix("---").is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')
            });
            if is_sep {
                separators.push(i + 1);
            } else if separators.is_empty() {
                let t = line.trim_start();
                if !t.is_empty() && !t.starts_with('#') && !t.starts_with('%') {
                    content_before_first = true;
                }
            }
        }
        Self {
            separators,
            implicit_first: content_before_first,
        }
    }

    fn document_of(&self, line: usize) -> usize {
        let seps_at_or_before = self.separators.partition_point(|&s| s <= line);
        match (self.implicit_first, seps_at_or_before) {
            (true, n) => n,
            (false, 0) => 0,
            (false, n) => n - 1,
        }
    }
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn parse_value(
    origin: &Origin,
    prefix: &str,
    value: Value,
    opts: &ParseOptions,
    out: &mut ParsedFile,
) {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let object = object_name(name.as_deref(), namespace.as_deref());
    let Some(map) = value.as_object() else {
        out.errors.push(ConfigError {
            field: (!prefix.is_empty()).then(|| prefix.trim_end_matches('.').to_owned()),
            ..Ctx::bare(
                origin,
                "document is not a mapping (expected a Kubernetes object)",
            )
        });
        return;
    };
    let kind = map.get("kind").and_then(Value::as_str).map(str::to_owned);
    let api_version = str_field(&value, "apiVersion").map(str::to_owned);
    let mut ctx = Ctx {
        origin,
        kind: kind.clone().unwrap_or_default(),
        object: object.clone(),
        prefix,
        errors: Vec::new(),
    };
    let (Some(kind), Some(api_version)) = (kind, api_version) else {
        let missing = if ctx.kind.is_empty() {
            "kind"
        } else {
            "apiVersion"
        };
        ctx.err(missing, "required field is missing");
        out.errors.append(&mut ctx.errors);
        return;
    };
    let typed = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => convert(&mut ctx, value).map(Typed::Service),
        ("discovery.k8s.io/v1", "EndpointSlice") => convert(&mut ctx, value).map(Typed::Slice),
        ("v1", "Endpoints") => convert(&mut ctx, value).map(Typed::Endpoints),
        ("v1", "Pod") => convert(&mut ctx, value).map(Typed::Pod),
        ("v1", "Namespace") => return,
        (api, k) if is_list_kind(api, k) => {
            let Value::Object(mut map) = value else {
                return;
            };
            // Items of a typed list (`ServiceList`, as the API server returns it) carry no
            // kind or apiVersion of their own: they have the list's.
            let item_kind = k.strip_suffix("List").filter(|s| !s.is_empty());
            match map.remove("items") {
                Some(Value::Array(items)) => {
                    for (i, mut item) in items.into_iter().enumerate() {
                        if let (Some(item_kind), Value::Object(fields)) = (item_kind, &mut item) {
                            fields
                                .entry("kind")
                                .or_insert_with(|| Value::from(item_kind));
                            fields
                                .entry("apiVersion")
                                .or_insert_with(|| Value::from(api));
                        }
                        let prefix = format!("{prefix}items[{i}].");
                        parse_value(origin, &prefix, item, opts, out);
                    }
                }
                None | Some(Value::Null) => {}
                Some(_) => ctx.err("items", "must be a list of objects"),
            }
            out.errors.append(&mut ctx.errors);
            return;
        }
        _ => {
            out.warnings
                .push(skipped_kind(origin, &kind, &api_version, object.as_deref()));
            return;
        }
    };
    let accepted = typed.and_then(|t| define(&mut ctx, t, opts, &mut out.warnings));
    match accepted {
        Some(obj) if ctx.errors.is_empty() => out.objects.push(obj),
        // Skipped on purpose with a warning (an FQDN EndpointSlice): not a rejection, so no
        // earlier version of it is kept.
        None if ctx.errors.is_empty() => {}
        _ => {
            if let (Some(name), k) = (name, kind.as_str()) {
                let ns = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
                let kind: &'static str = match k {
                    "Service" => "Service",
                    "EndpointSlice" => "EndpointSlice",
                    "Endpoints" => "Endpoints",
                    _ => "Pod",
                };
                out.rejected.push((kind, ns, name));
            }
            out.errors.append(&mut ctx.errors);
        }
    }
}

/// `kind: List` (what `kubectl get ... -o yaml` prints) or a typed list (`ServiceList`):
/// read item by item.
pub(crate) fn is_list_kind(api_version: &str, kind: &str) -> bool {
    (api_version == "v1" && kind == "List") || (kind.len() > 4 && kind.ends_with("List"))
}

/// Deserializes into the k8s-openapi type; a type error is recorded with its path.
fn convert<T: serde::de::DeserializeOwned>(ctx: &mut Ctx<'_>, value: Value) -> Option<T> {
    // Fast path: borrow the value (keys are not copied, no path is tracked). Only an
    // object that does not fit its type pays for serde_path_to_error, to name the field.
    if let Ok(typed) = T::deserialize(&value) {
        return Some(typed);
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(typed) => Some(typed),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            ctx.err(field, e.into_inner().to_string());
            None
        }
    }
}

/// A typed object into the model, every rule checked (both paths end here). `None`: it
/// was rejected (errors in `ctx`) or skipped on purpose with a warning.
fn define(
    ctx: &mut Ctx<'_>,
    object: Typed,
    opts: &ParseOptions,
    warnings: &mut Vec<Warning>,
) -> Option<Object> {
    match object {
        Typed::Service(s) => service_def(ctx, *s, opts).map(|d| Object::Service(Arc::new(d))),
        Typed::Slice(s) => slice_def(ctx, *s, warnings).map(|d| Object::Slice(Arc::new(d))),
        Typed::Endpoints(e) => endpoints_def(ctx, *e).map(|d| Object::Endpoints(Arc::new(d))),
        Typed::Pod(p) => pod_def(ctx, *p).map(|d| Object::Pod(Arc::new(d))),
        Typed::Namespace | Typed::Other { .. } => None,
    }
}

/// Collects errors for one object.
struct Ctx<'a> {
    origin: &'a Origin,
    kind: String,
    object: Option<String>,
    /// `items[3].` inside a List.
    prefix: &'a str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn bare(origin: &Origin, reason: &str) -> ConfigError {
        ConfigError {
            file: origin.file.clone(),
            document: Some(origin.document),
            line: Some(origin.line),
            kind: None,
            object: None,
            field: None,
            reason: reason.to_owned(),
            other: None,
        }
    }

    fn err(&mut self, field: impl fmt::Display, reason: impl Into<String>) {
        let field = field.to_string();
        let field = match (self.prefix.is_empty(), field.is_empty()) {
            (true, true) => None,
            (true, false) => Some(field),
            (false, true) => Some(self.prefix.trim_end_matches('.').to_owned()),
            (false, false) => Some(format!("{}{field}", self.prefix)),
        };
        self.errors.push(ConfigError {
            kind: (!self.kind.is_empty()).then(|| self.kind.clone()),
            object: self.object.clone(),
            field,
            reason: reason.into(),
            ..Ctx::bare(self.origin, "")
        });
    }

    /// Runs a name check, recording its failure under `field`.
    fn check(&mut self, field: &str, res: Result<(), String>) -> bool {
        match res {
            Ok(()) => true,
            Err(why) => {
                self.err(field, why);
                false
            }
        }
    }

    fn ip(&mut self, field: impl fmt::Display, s: &str) -> Option<IpAddr> {
        match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.err(field, format!("{s:?} is not a valid IP address"));
                None
            }
        }
    }

    fn port(&mut self, field: impl fmt::Display, p: i32) -> Option<u16> {
        match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.err(field, format!("{p} is not a port: must be 1-65535"));
                None
            }
        }
    }

    fn protocol(&mut self, field: impl fmt::Display, p: Option<&str>) -> Option<Protocol> {
        match or_default(p, "TCP").parse::<Protocol>() {
            Ok(p) => Some(p),
            Err(why) => {
                self.err(field, why);
                None
            }
        }
    }

    /// Name and namespace of an object; `name_rule` is the rule for its kind.
    fn meta(
        &mut self,
        meta: &ObjectMeta,
        name_rule: fn(&str) -> Result<(), String>,
    ) -> Option<(Arc<str>, Arc<str>)> {
        let ns = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let ns_ok = self.check("metadata.namespace", names::dns1123_label(ns));
        let Some(name) = meta.name.as_deref() else {
            self.err("metadata.name", "required field is missing");
            return None;
        };
        let name_ok = self.check("metadata.name", name_rule(name));
        (ns_ok && name_ok).then(|| (Arc::from(ns), Arc::from(name)))
    }
}

fn opt_arc(s: Option<String>) -> Option<Arc<str>> {
    s.filter(|s| !s.is_empty()).map(Arc::from)
}

/// The value of an enum-like string field, where absent and `""` both mean the API
/// server's default (Go's zero value is the empty string).
fn or_default<'s>(v: Option<&'s str>, default: &'s str) -> &'s str {
    v.filter(|s| !s.is_empty()).unwrap_or(default)
}

// === Service ===

fn service_def(ctx: &mut Ctx<'_>, svc: core::Service, opts: &ParseOptions) -> Option<ServiceDef> {
    let (namespace, name) = ctx.meta(&svc.metadata, names::dns1035_label)?;
    let Some(spec) = svc.spec else {
        ctx.err("spec", "required field is missing");
        return None;
    };
    let type_ = match or_default(spec.type_.as_deref(), "ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => ServiceType::ExternalName,
        other => {
            ctx.err(
                "spec.type",
                format!(
                    "unsupported type {other:?}: must be ClusterIP, NodePort, LoadBalancer or ExternalName"
                ),
            );
            return None;
        }
    };
    let (cluster_ips, headless) = cluster_ips(ctx, &spec, type_);
    let ip_families = ip_families(ctx, &spec, &cluster_ips);
    let external_name = match (type_, spec.external_name) {
        (ServiceType::ExternalName, Some(n)) => {
            ctx.check("spec.externalName", names::external_name(&n));
            Some(Arc::from(n.to_ascii_lowercase()))
        }
        (ServiceType::ExternalName, None) => {
            ctx.err("spec.externalName", "required for type ExternalName");
            None
        }
        _ => None,
    };
    let ports = service_ports(ctx, spec.ports.unwrap_or_default(), type_, headless, opts);
    let external_ips = spec
        .external_ips
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, ip)| ctx.ip(format_args!("spec.externalIPs[{i}]"), ip))
        .collect();
    let load_balancer_ips = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, ing)| {
            let ip = ing.ip.as_deref()?;
            ctx.ip(format_args!("status.loadBalancer.ingress[{i}].ip"), ip)
        })
        .collect();
    let session_affinity = session_affinity(
        ctx,
        spec.session_affinity.as_deref(),
        spec.session_affinity_config.as_ref(),
    );
    let external_traffic_policy = traffic_policy(
        ctx,
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    );
    let internal_traffic_policy = traffic_policy(
        ctx,
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    );
    let selector = spec.selector.filter(|s| !s.is_empty());
    if !ctx.errors.is_empty() {
        return None;
    }
    Some(ServiceDef {
        key: ServiceKey { namespace, name },
        type_,
        cluster_ips,
        ip_families,
        headless,
        external_name,
        external_ips,
        load_balancer_ips,
        ports,
        selector,
        session_affinity,
        external_traffic_policy,
        internal_traffic_policy,
        publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
        origin: ctx.origin.clone(),
    })
}

/// `spec.clusterIP` + `spec.clusterIPs` -> (addresses, headless).
fn cluster_ips(
    ctx: &mut Ctx<'_>,
    spec: &core::ServiceSpec,
    type_: ServiceType,
) -> (Vec<IpAddr>, bool) {
    if type_ == ServiceType::ExternalName {
        return (Vec::new(), false);
    }
    let primary = spec.cluster_ip.as_deref().filter(|s| !s.is_empty());
    let list = spec.cluster_ips.as_deref().unwrap_or_default();
    if let (Some(p), Some(first)) = (primary, list.first())
        && p != first
    {
        ctx.err(
            "spec.clusterIPs[0]",
            format!("{first:?} must equal spec.clusterIP {p:?}"),
        );
    }
    let headless = primary == Some("None") || list.first().map(String::as_str) == Some("None");
    if headless {
        if type_ != ServiceType::ClusterIP {
            ctx.err(
                "spec.clusterIP",
                format!("may not be None for type {type_:?}"),
            );
        }
        return (Vec::new(), true);
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    if list.is_empty() {
        if let Some(p) = primary {
            ips.extend(ctx.ip("spec.clusterIP", p));
        }
    } else {
        for (i, s) in list.iter().enumerate() {
            ips.extend(ctx.ip(format_args!("spec.clusterIPs[{i}]"), s));
        }
    }
    if ips.len() > 2 || (ips.len() == 2 && ips[0].is_ipv4() == ips[1].is_ipv4()) {
        ctx.err(
            "spec.clusterIPs",
            "at most two addresses, one of each IP family",
        );
    }
    (ips, false)
}

/// The families a Service wants addresses of: `spec.ipFamilies` (one unless
/// `spec.ipFamilyPolicy` asks for dual-stack), completed by the families of explicit
/// `clusterIPs`; IPv4 when nothing says.
fn ip_families(ctx: &mut Ctx<'_>, spec: &core::ServiceSpec, ips: &[IpAddr]) -> Vec<IpFamily> {
    let mut fams: Vec<IpFamily> = Vec::new();
    for (i, f) in spec.ip_families.iter().flatten().enumerate() {
        match f.as_str() {
            "IPv4" => fams.push(IpFamily::V4),
            "IPv6" => fams.push(IpFamily::V6),
            other => ctx.err(
                format_args!("spec.ipFamilies[{i}]"),
                format!("unsupported value {other:?}: must be IPv4 or IPv6"),
            ),
        }
    }
    let dual = match spec.ip_family_policy.as_deref().unwrap_or("SingleStack") {
        "" | "SingleStack" => false,
        "PreferDualStack" | "RequireDualStack" => true,
        other => {
            ctx.err(
                "spec.ipFamilyPolicy",
                format!(
                    "unsupported value {other:?}: must be SingleStack, PreferDualStack or RequireDualStack"
                ),
            );
            false
        }
    };
    // Explicit addresses decide the first family.
    for ip in ips.iter().rev() {
        let f = IpFamily::of(*ip);
        fams.retain(|x| *x != f);
        fams.insert(0, f);
    }
    if fams.is_empty() {
        fams.push(IpFamily::V4);
    }
    if dual && fams.len() == 1 {
        let other = if fams[0] == IpFamily::V4 {
            IpFamily::V6
        } else {
            IpFamily::V4
        };
        fams.push(other);
    }
    let keep = if dual { 2 } else { ips.len().max(1) };
    fams.dedup();
    fams.truncate(keep);
    fams
}

fn service_ports(
    ctx: &mut Ctx<'_>,
    ports: Vec<core::ServicePort>,
    type_: ServiceType,
    headless: bool,
    opts: &ParseOptions,
) -> Vec<ServicePort> {
    if ports.is_empty() && type_ != ServiceType::ExternalName && !headless {
        ctx.err("spec.ports", "at least one port is required");
    }
    let many = ports.len() > 1;
    let mut names: HashSet<String> = HashSet::new();
    let mut seen: HashSet<(u16, Protocol)> = HashSet::new();
    let mut node_ports: HashSet<(u16, Protocol)> = HashSet::new();
    let mut out = Vec::with_capacity(ports.len());
    for (i, p) in ports.into_iter().enumerate() {
        let f = |field: &str| format!("spec.ports[{i}].{field}");
        let name = p.name.filter(|n| !n.is_empty());
        match &name {
            Some(n) => {
                ctx.check(&f("name"), names::dns1123_label(n));
                if !names.insert(n.clone()) {
                    ctx.err(f("name"), format!("duplicate port name {n:?}"));
                }
            }
            None if many => ctx.err(
                f("name"),
                "required when the Service has more than one port",
            ),
            None => {}
        }
        let port = ctx.port(f("port"), p.port);
        let protocol = ctx.protocol(f("protocol"), p.protocol.as_deref());
        let target_port = match p.target_port {
            // Absent, 0 and "" all default to the port, as the API server does.
            None | Some(IntOrString::Int(0)) => port.map(TargetPort::Number),
            Some(IntOrString::String(s)) if s.is_empty() => port.map(TargetPort::Number),
            Some(IntOrString::Int(n)) => ctx.port(f("targetPort"), n).map(TargetPort::Number),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => ctx.port(f("targetPort"), n).map(TargetPort::Number),
                Err(_) => ctx
                    .check(&f("targetPort"), names::iana_svc_name(&s))
                    .then(|| TargetPort::Name(Arc::from(s))),
            },
        };
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(_) if !matches!(type_, ServiceType::NodePort | ServiceType::LoadBalancer) => {
                ctx.err(
                    f("nodePort"),
                    format!("may not be used when type is {type_:?}"),
                );
                None
            }
            Some(n) => ctx.port(f("nodePort"), n).and_then(|n| {
                if opts.node_port_range.contains(n) {
                    Some(n)
                } else {
                    ctx.err(
                        f("nodePort"),
                        format!(
                            "{n} is outside the node port range {}",
                            opts.node_port_range
                        ),
                    );
                    None
                }
            }),
        };
        let (Some(port), Some(protocol), Some(target_port)) = (port, protocol, target_port) else {
            continue;
        };
        if !seen.insert((port, protocol)) {
            ctx.err(f("port"), format!("duplicate port {port}/{protocol}"));
        }
        if let Some(np) = node_port
            && !node_ports.insert((np, protocol))
        {
            ctx.err(f("nodePort"), format!("duplicate nodePort {np}/{protocol}"));
        }
        out.push(ServicePort {
            name: name.map(Arc::from),
            protocol,
            port,
            target_port,
            node_port,
            app_protocol: opt_arc(p.app_protocol),
        });
    }
    out
}

fn session_affinity(
    ctx: &mut Ctx<'_>,
    kind: Option<&str>,
    config: Option<&core::SessionAffinityConfig>,
) -> SessionAffinity {
    match or_default(kind, "None") {
        "None" => SessionAffinity::None,
        "ClientIP" => {
            let timeout = config
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => SessionAffinity::ClientIP {
                    timeout_seconds: SessionAffinity::DEFAULT_TIMEOUT_SECONDS,
                },
                Some(t @ 1..=86400) => SessionAffinity::ClientIP {
                    timeout_seconds: t.unsigned_abs(),
                },
                Some(t) => {
                    ctx.err(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{t} must be between 1 and 86400"),
                    );
                    SessionAffinity::None
                }
            }
        }
        other => {
            ctx.err(
                "spec.sessionAffinity",
                format!("unsupported value {other:?}: must be None or ClientIP"),
            );
            SessionAffinity::None
        }
    }
}

fn traffic_policy(ctx: &mut Ctx<'_>, field: &str, v: Option<&str>) -> TrafficPolicy {
    match or_default(v, "Cluster") {
        "Cluster" => TrafficPolicy::Cluster,
        "Local" => TrafficPolicy::Local,
        other => {
            ctx.err(
                field,
                format!("unsupported value {other:?}: must be Cluster or Local"),
            );
            TrafficPolicy::Cluster
        }
    }
}

// === EndpointSlice ===

fn slice_def(
    ctx: &mut Ctx<'_>,
    slice: discovery::EndpointSlice,
    warnings: &mut Vec<Warning>,
) -> Option<SliceDef> {
    let (namespace, name) = ctx.meta(&slice.metadata, names::dns1123_subdomain)?;
    let family_v4 = match slice.address_type.as_str() {
        "IPv4" => true,
        "IPv6" => false,
        "FQDN" => {
            warnings.push(Warning {
                file: ctx.origin.file.clone(),
                document: Some(ctx.origin.document),
                line: Some(ctx.origin.line),
                message: format!(
                    "skipping EndpointSlice {namespace}/{name}: addressType FQDN is not routable"
                ),
            });
            return None;
        }
        other => {
            ctx.err(
                "addressType",
                format!("unsupported value {other:?}: must be IPv4, IPv6 or FQDN"),
            );
            return None;
        }
    };
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .cloned()
        .map(Arc::from);
    let mut ports = Vec::new();
    for (i, p) in slice.ports.unwrap_or_default().into_iter().enumerate() {
        let f = |field: &str| format!("ports[{i}].{field}");
        let protocol = ctx.protocol(f("protocol"), p.protocol.as_deref());
        let Some(port) = p.port else {
            // A nil port means "all ports": nothing a Service port can be routed to.
            continue;
        };
        let port = ctx.port(f("port"), port);
        if let (Some(port), Some(protocol)) = (port, protocol) {
            ports.push(EndpointPort {
                name: opt_arc(p.name),
                port,
                protocol,
            });
        }
    }
    let ports: Arc<[EndpointPort]> = ports.into();
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.unwrap_or_default().into_iter().enumerate() {
        let f = |field: &str| format!("endpoints[{i}].{field}");
        let mut ips = Vec::new();
        for (j, a) in ep.addresses.iter().enumerate() {
            let Some(ip) = ctx.ip(format_args!("endpoints[{i}].addresses[{j}]"), a) else {
                continue;
            };
            if ip.is_ipv4() != family_v4 {
                ctx.err(
                    format_args!("endpoints[{i}].addresses[{j}]"),
                    format!(
                        "{a} does not match the slice's addressType {}",
                        slice.address_type
                    ),
                );
                continue;
            }
            ips.push(ip);
        }
        // Consumers use the first address (the API allows more, but only one is meaningful).
        let Some(&ip) = ips.first() else {
            if ep.addresses.is_empty() {
                ctx.err(f("addresses"), "at least one address is required");
            }
            continue;
        };
        let hostname = opt_arc(ep.hostname);
        if let Some(h) = &hostname {
            ctx.check(&f("hostname"), names::dns1123_label(h));
        }
        let c = ep.conditions.unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        endpoints.push(Endpoint {
            ip,
            hostname,
            node_name: opt_arc(ep.node_name),
            zone: opt_arc(ep.zone),
            conditions: Conditions {
                ready,
                serving: c.serving.unwrap_or(ready),
                terminating: c.terminating.unwrap_or(false),
            },
            target_ref: ep.target_ref.map(target_ref),
            ports: ports.clone(),
        });
    }
    ctx.errors.is_empty().then(|| SliceDef {
        namespace,
        name,
        service,
        endpoints,
        origin: ctx.origin.clone(),
    })
}

fn target_ref(r: core::ObjectReference) -> TargetRef {
    TargetRef {
        kind: opt_arc(r.kind),
        namespace: opt_arc(r.namespace),
        name: opt_arc(r.name),
    }
}

// === Endpoints ===

fn endpoints_def(ctx: &mut Ctx<'_>, eps: core::Endpoints) -> Option<EndpointsDef> {
    let (namespace, name) = ctx.meta(&eps.metadata, names::dns1123_subdomain)?;
    let mut endpoints = Vec::new();
    for (i, subset) in eps.subsets.unwrap_or_default().into_iter().enumerate() {
        let mut ports = Vec::new();
        for (k, p) in subset.ports.unwrap_or_default().into_iter().enumerate() {
            let f = |field: &str| format!("subsets[{i}].ports[{k}].{field}");
            let port = ctx.port(f("port"), p.port);
            let protocol = ctx.protocol(f("protocol"), p.protocol.as_deref());
            if let (Some(port), Some(protocol)) = (port, protocol) {
                ports.push(EndpointPort {
                    name: opt_arc(p.name),
                    port,
                    protocol,
                });
            }
        }
        let ports: Arc<[EndpointPort]> = ports.into();
        let groups = [
            ("addresses", subset.addresses, Conditions::READY),
            (
                "notReadyAddresses",
                subset.not_ready_addresses,
                Conditions::NOT_READY,
            ),
        ];
        for (field, addrs, conditions) in groups {
            for (j, a) in addrs.unwrap_or_default().into_iter().enumerate() {
                let Some(ip) = ctx.ip(format_args!("subsets[{i}].{field}[{j}].ip"), &a.ip) else {
                    continue;
                };
                let hostname = opt_arc(a.hostname);
                if let Some(h) = &hostname {
                    ctx.check(
                        &format!("subsets[{i}].{field}[{j}].hostname"),
                        names::dns1123_label(h),
                    );
                }
                endpoints.push(Endpoint {
                    ip,
                    hostname,
                    node_name: opt_arc(a.node_name),
                    zone: None,
                    conditions,
                    target_ref: a.target_ref.map(target_ref),
                    ports: ports.clone(),
                });
            }
        }
    }
    ctx.errors.is_empty().then(|| EndpointsDef {
        key: ServiceKey { namespace, name },
        endpoints,
        origin: ctx.origin.clone(),
    })
}

// === Pod ===

fn pod_def(ctx: &mut Ctx<'_>, pod: core::Pod) -> Option<PodDef> {
    let (namespace, name) = ctx.meta(&pod.metadata, names::dns1123_subdomain)?;
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let labels = pod.metadata.labels.unwrap_or_default();
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();
    let mut ips: Vec<IpAddr> = Vec::new();
    let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    match status.pod_ips.as_deref() {
        _ if terminal => {}
        Some(list) if !list.is_empty() => {
            for (i, p) in list.iter().enumerate() {
                ips.extend(ctx.ip(format_args!("status.podIPs[{i}].ip"), &p.ip));
            }
        }
        _ => {
            if let Some(ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
                ips.extend(ctx.ip("status.podIP", ip));
            }
        }
    }
    // The endpoints controller's rule: serving = the Ready condition; ready = serving and
    // not terminating.
    let serving = status
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let mut ports = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let f = |field: &str| format!("spec.containers[{i}].ports[{j}].{field}");
            let port = ctx.port(f("containerPort"), p.container_port);
            let protocol = ctx.protocol(f("protocol"), p.protocol.as_deref());
            if let (Some(port), Some(protocol)) = (port, protocol) {
                ports.push(ContainerPort {
                    name: opt_arc(p.name.clone()),
                    port,
                    protocol,
                });
            }
        }
    }
    ctx.errors.is_empty().then(|| PodDef {
        namespace,
        name,
        labels,
        ips,
        conditions: Conditions {
            ready: serving && !terminating,
            serving,
            terminating,
        },
        node_name: opt_arc(spec.node_name),
        hostname: opt_arc(spec.hostname),
        subdomain: opt_arc(spec.subdomain),
        ports,
        origin: ctx.origin.clone(),
    })
}
