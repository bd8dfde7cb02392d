//! Checking an import (MCS or GKE) and reducing it to what the dataplane needs.
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Config, DEFAULT_AFFINITY_TIMEOUT, Locality, MAX_AFFINITY_TIMEOUT, Protocol, ServicePortKey, SkipReason};
use crate::k8s::{self, GkeServiceImport, Object, ServiceImport, ServiceImportSpec};

/// An import of either API, borrowed from the inputs.
#[derive(Clone, Copy, Debug)]
pub(super) enum ImportRef<'a> {
    /// `multicluster.x-k8s.io` (v1alpha1 or v1beta1).
    Mcs(&'a ServiceImport),
    /// `net.gke.io/v1`.
    Gke(&'a GkeServiceImport),
}

impl<'a> ImportRef<'a> {
    fn object_ref(self) -> &'a dyn Object {
        match self {
            Self::Mcs(i) => i,
            Self::Gke(i) => i,
        }
    }

    pub(super) fn namespace(self) -> &'a str {
        self.object_ref().namespace()
    }

    pub(super) fn name(self) -> &'a str {
        self.object_ref().name()
    }

    /// The order imports are translated in: (namespace, name), MCS before GKE.
    pub(super) fn sort_key(self) -> (&'a str, &'a str, u8) {
        let rank = match self {
            Self::Mcs(_) => 0,
            Self::Gke(_) => 1,
        };
        (self.namespace(), self.name(), rank)
    }

    /// `ServiceImport`, or `net.gke.io/v1 ServiceImport`.
    pub(super) fn kind(self) -> &'static str {
        match self {
            Self::Mcs(_) => k8s::SERVICE_IMPORT_KIND,
            Self::Gke(_) => "net.gke.io/v1 ServiceImport",
        }
    }

    /// What a skip message of this import starts with: nothing for the MCS
    /// API (the default), the API version for GKE's.
    pub(super) fn message_prefix(self) -> &'static str {
        match self {
            Self::Mcs(_) => "",
            Self::Gke(_) => "net.gke.io/v1: ",
        }
    }

    /// `"ServiceImport demo/web"`, or `"net.gke.io/v1 ServiceImport demo/web"`.
    pub(super) fn object(self) -> String {
        format!("{} {}/{}", self.kind(), self.namespace(), self.name())
    }
}

/// Where a valid import's endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// MCS slices, from the clusters the cap selects.
    Mcs {
        /// `status.clusters`, oldest export first.
        status_clusters: Vec<String>,
    },
    /// The derived service of a GKE import.
    Gke {
        /// The name in the `net.gke.io/derived-service` annotation.
        derived_service: String,
    },
}

/// An import that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ValidImport {
    pub(super) namespace: String,
    pub(super) name: String,
    /// `"ServiceImport demo/web"` (see [`ImportRef::object`]).
    pub(super) object: String,
    /// The section holding `ips` and `ports`: `spec`, or `status` for GKE
    /// imports that put them there.
    pub(super) section: &'static str,
    /// The IPv4 `ClusterSetIP`.
    pub(super) vip: Ipv4Addr,
    pub(super) ports: Vec<ValidPort>,
    pub(super) session_affinity_timeout: Option<u32>,
    pub(super) locality: Locality,
    pub(super) source: Source,
}

impl ValidImport {
    pub(super) fn key(&self, port: &ValidPort) -> ServicePortKey {
        ServicePortKey { ip: self.vip, port: port.port, protocol: port.protocol }
    }
}

/// A port of a valid import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ValidPort {
    /// Its index in `spec.ports`.
    pub(super) index: usize,
    /// Its name, empty when unnamed.
    pub(super) name: String,
    pub(super) protocol: Protocol,
    pub(super) port: u16,
}

/// What a GKE import without `spec` and `status` is read as.
static EMPTY_SPEC: ServiceImportSpec = ServiceImportSpec {
    type_: String::new(),
    ips: Vec::new(),
    ip_families: Vec::new(),
    ports: Vec::new(),
    session_affinity: None,
    session_affinity_config: None,
};

/// The section of a GKE import that holds its ips and ports: `status` (GKE's
/// documented example) when it has either, else `spec` when it has either,
/// else whichever exists.
fn gke_section(import: &GkeServiceImport) -> (&'static str, &ServiceImportSpec) {
    let filled = |s: &&ServiceImportSpec| !s.ips.is_empty() || !s.ports.is_empty();
    let status = import.status.as_ref();
    let spec = import.spec.as_ref();
    if let Some(status) = status.filter(filled) {
        ("status", status)
    } else if let Some(spec) = spec.filter(filled) {
        ("spec", spec)
    } else if let Some(status) = status {
        ("status", status)
    } else {
        ("spec", spec.unwrap_or(&EMPTY_SPEC))
    }
}

/// Checks an import and reduces it to what the dataplane needs; on error, the
/// reason and a message that names the field.
pub(super) fn validate(
    import: ImportRef<'_>,
    config: &Config,
    warnings: &mut BTreeSet<String>,
) -> Result<ValidImport, (SkipReason, String)> {
    let invalid = |message: String| (SkipReason::Invalid, message);
    let (section, spec) = match import {
        ImportRef::Mcs(i) => ("spec", &i.spec),
        ImportRef::Gke(i) => gke_section(i),
    };
    if import.name().is_empty() {
        return Err(invalid("metadata.name: missing".to_owned()));
    }
    match spec.type_.as_str() {
        "" | k8s::TYPE_CLUSTER_SET_IP => {}
        k8s::TYPE_HEADLESS => {
            return Err((SkipReason::Headless, "headless imports have no ClusterSetIP to program".to_owned()));
        }
        other => {
            return Err(invalid(format!(
                "{section}.type: unsupported type {other:?} (ClusterSetIP and Headless are known)"
            )));
        }
    }
    let ips = validate_ips(section, &spec.ips, &spec.ip_families).map_err(invalid)?;
    let ports = validate_ports(section, &spec.ports).map_err(invalid)?;
    if ips.is_empty() {
        return Err((SkipReason::NoIps, format!("{section}.ips is empty: no ClusterSetIP has been allocated yet")));
    }
    let Some(vip) = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    }) else {
        return Err(invalid(format!(
            "{section}.ips: only IPv6 ClusterSetIPs ({}); IPv6 is not translated (the datapath is IPv4 only)",
            spec.ips.join(", ")
        )));
    };
    let source = match import {
        ImportRef::Mcs(i) => Source::Mcs {
            status_clusters: i.status.iter().flat_map(|s| &s.clusters).map(|c| c.cluster.clone()).collect(),
        },
        ImportRef::Gke(i) => {
            let derived = i.metadata.annotations.as_ref().and_then(|a| a.get(k8s::GKE_DERIVED_SERVICE_ANNOTATION));
            match derived.map(String::as_str) {
                Some(name) if !name.is_empty() => Source::Gke { derived_service: name.to_owned() },
                _ => {
                    return Err(invalid(format!(
                        "metadata.annotations[{}]: missing or empty; the derived service's endpoints cannot be found",
                        k8s::GKE_DERIVED_SERVICE_ANNOTATION
                    )));
                }
            }
        }
    };
    let object = import.object();
    Ok(ValidImport {
        namespace: import.namespace().to_owned(),
        name: import.name().to_owned(),
        section,
        vip,
        ports,
        session_affinity_timeout: session_affinity(spec, section, &object, warnings),
        locality: locality(import.object_ref().meta(), &object, config.locality, warnings),
        source,
        object,
    })
}

/// Parses `ips` and checks it against `ipFamilies`.
fn validate_ips(section: &str, ips: &[String], families: &[String]) -> Result<Vec<IpAddr>, String> {
    if ips.len() > 2 {
        return Err(format!("{section}.ips: {} addresses, at most 2 (one per family) are allowed", ips.len()));
    }
    if families.len() > 2 {
        return Err(format!("{section}.ipFamilies: {} families, at most 2 are allowed", families.len()));
    }
    let mut parsed: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for (i, text) in ips.iter().enumerate() {
        let ip: IpAddr = text.parse().map_err(|_| format!("{section}.ips[{i}]: {text:?} is not an IP address"))?;
        if let Some(first) = parsed.iter().position(|other| other.is_ipv4() == ip.is_ipv4()) {
            return Err(format!(
                "{section}.ips[{i}]: a second {} address ({section}.ips[{first}] is one); at most one per family is \
                 allowed",
                family_of(ip)
            ));
        }
        parsed.push(ip);
    }
    for (i, family) in families.iter().enumerate() {
        if family != k8s::IP_FAMILY_IPV4 && family != k8s::IP_FAMILY_IPV6 {
            return Err(format!("{section}.ipFamilies[{i}]: unknown family {family:?} (IPv4 and IPv6 are known)"));
        }
        if let Some(ip) = parsed.get(i)
            && family_of(*ip) != family
        {
            return Err(format!("{section}.ipFamilies[{i}]: {family} disagrees with {section}.ips[{i}] {:?}", ips[i]));
        }
    }
    Ok(parsed)
}

fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { k8s::IP_FAMILY_IPV4 } else { k8s::IP_FAMILY_IPV6 }
}

/// Checks `ports`: protocol, range, unique names, unique (port, protocol).
fn validate_ports(section: &str, ports: &[k8s::ServicePort]) -> Result<Vec<ValidPort>, String> {
    let mut valid: Vec<ValidPort> = Vec::with_capacity(ports.len());
    for (index, port) in ports.iter().enumerate() {
        let protocol = Protocol::from_k8s(port.protocol.as_deref()).ok_or_else(|| {
            format!(
                "{section}.ports[{index}].protocol: unsupported protocol {:?} (TCP and UDP are translated)",
                port.protocol.as_deref().unwrap_or_default()
            )
        })?;
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{section}.ports[{index}].port: {} is outside 1..=65535", port.port))?;
        let name = port.name.clone().unwrap_or_default();
        if let Some(other) = valid.iter().find(|v| v.name == name) {
            return Err(format!(
                "{section}.ports[{index}].name: duplicate port name {name:?} (also {section}.ports[{}])",
                other.index
            ));
        }
        if let Some(other) = valid.iter().find(|v| v.port == number && v.protocol == protocol) {
            return Err(format!(
                "{section}.ports[{index}]: {protocol}/{number} is listed twice (also {section}.ports[{}])",
                other.index
            ));
        }
        valid.push(ValidPort { index, name, protocol, port: number });
    }
    Ok(valid)
}

/// The `ClientIP` affinity timeout, or `None` when affinity is off.
fn session_affinity(
    spec: &ServiceImportSpec,
    section: &str,
    object: &str,
    warnings: &mut BTreeSet<String>,
) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        Some(k8s::SESSION_AFFINITY_CLIENT_IP) => {}
        None | Some("" | k8s::SESSION_AFFINITY_NONE) => return None,
        Some(other) => {
            warnings.insert(format!(
                "{object} {section}.sessionAffinity: unknown value {other:?} (None and ClientIP are known); affinity \
                 is off"
            ));
            return None;
        }
    }
    let timeout =
        spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
    let Some(timeout) = timeout else {
        return Some(DEFAULT_AFFINITY_TIMEOUT);
    };
    match u32::try_from(timeout) {
        Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Some(t),
        _ => {
            warnings.insert(format!(
                "{object} {section}.sessionAffinityConfig.clientIP.timeoutSeconds: {timeout} is outside \
                 1..={MAX_AFFINITY_TIMEOUT}; using {DEFAULT_AFFINITY_TIMEOUT}"
            ));
            Some(DEFAULT_AFFINITY_TIMEOUT)
        }
    }
}

/// The locality preference: the annotation when it is set to a known value,
/// else the agent's default.
fn locality(meta: &ObjectMeta, object: &str, default: Locality, warnings: &mut BTreeSet<String>) -> Locality {
    let Some(value) = meta.annotations.as_ref().and_then(|a| a.get(k8s::LOCALITY_ANNOTATION)) else {
        return default;
    };
    Locality::parse(value).unwrap_or_else(|| {
        warnings.insert(format!(
            "{object} metadata.annotations[{}]: unknown value {value:?} (none, local and remote are known); using \
             the default {:?}",
            k8s::LOCALITY_ANNOTATION,
            default.as_str()
        ));
        default
    })
}
