//! Typed builders of the objects the agent reads, and of the desired state
//! the translation makes, for the unit tests here, the integration tests in
//! `tests/` and the benchmarks. Every builder starts from a valid object and
//! each call changes one thing; none takes more than three arguments.
//!
//! The objects are the agent's own types, so a test that writes them to a
//! file (with serde) or hands them to the translation sees exactly what the
//! agent reads. Deliberately malformed input (a port that is a string, a
//! field of the wrong type) cannot be built here: tests write it by hand.
//! The builders serialize as the object they hold, so a test can write one
//! to a file without building it first.
use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints};
pub use k8s_openapi::api::discovery::v1::EndpointConditions;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::k8s::{
    self, ClientIpConfig, ClusterStatus, GkeServiceImport, ServiceImport, ServiceImportSpec, ServiceImportStatus,
    ServicePort, SessionAffinityConfig,
};
use crate::translate::{DesiredBackend, DesiredServicePort, EndpointState, Protocol, ServicePortKey};

/// `tcp`, `udp` and `ports` for a builder whose `port(name, protocol, number)`
/// takes the number as `$number` (the objects' own integer types differ).
macro_rules! protocol_ports {
    ($number:ty) => {
        /// Adds a port with `protocol: TCP`.
        #[must_use]
        pub fn tcp(self, name: &str, port: u16) -> Self {
            self.port(name, "TCP", <$number>::from(port))
        }

        /// Adds a port with `protocol: UDP`.
        #[must_use]
        pub fn udp(self, name: &str, port: u16) -> Self {
            self.port(name, "UDP", <$number>::from(port))
        }

        /// Adds ports: (name, protocol, port).
        #[must_use]
        pub fn ports(self, ports: &[(&str, &str, u16)]) -> Self {
            ports.iter().fold(self, |s, (name, protocol, port)| s.port(*name, *protocol, <$number>::from(*port)))
        }
    };
}

/// The edits of a `ServiceImportSpec` shared by the MCS and the GKE import
/// builders, for a builder whose `section()` is the spec it edits.
macro_rules! spec_edits {
    () => {
        /// Sets the type (`ClusterSetIP` or `Headless`).
        #[must_use]
        pub fn type_(mut self, type_: &str) -> Self {
            self.section().type_ = type_.into();
            self
        }

        /// Adds an ip.
        #[must_use]
        pub fn ip(mut self, ip: impl Display) -> Self {
            self.section().ips.push(ip.to_string());
            self
        }

        /// Adds a port; `None` leaves the name or the protocol unset.
        #[must_use]
        pub fn port<'a>(
            mut self,
            name: impl Into<Option<&'a str>>,
            protocol: impl Into<Option<&'a str>>,
            port: i64,
        ) -> Self {
            let port = service_port(name.into(), protocol.into(), port);
            self.section().ports.push(port);
            self
        }

        protocol_ports!(i64);
    };
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta { namespace: Some(namespace.into()), name: Some(name.into()), ..ObjectMeta::default() }
}

fn service_port(name: Option<&str>, protocol: Option<&str>, port: i64) -> ServicePort {
    ServicePort { name: name.map(Into::into), protocol: protocol.map(Into::into), app_protocol: None, port }
}

fn client_ip(timeout: Option<i64>) -> Option<SessionAffinityConfig> {
    timeout.map(|t| SessionAffinityConfig { client_ip: Some(ClientIpConfig { timeout_seconds: Some(t) }) })
}

/// A `ServiceImport` (`multicluster.x-k8s.io/v1beta1`) being built.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct ImportBuilder(ServiceImport);

/// An import `namespace/name` of type `ClusterSetIP`, with no ips and no ports yet.
#[must_use]
pub fn import(namespace: &str, name: &str) -> ImportBuilder {
    ImportBuilder(ServiceImport {
        api_version: k8s::SERVICE_IMPORT_API_VERSIONS[1].into(),
        kind: k8s::SERVICE_IMPORT_KIND.into(),
        metadata: meta(namespace, name),
        spec: ServiceImportSpec { type_: k8s::TYPE_CLUSTER_SET_IP.into(), ..ServiceImportSpec::default() },
        status: None,
    })
}

impl ImportBuilder {
    spec_edits!();

    fn section(&mut self) -> &mut ServiceImportSpec {
        &mut self.0.spec
    }

    /// Sets `apiVersion` (v1beta1 unless told).
    #[must_use]
    pub fn api_version(mut self, api_version: &str) -> Self {
        self.0.api_version = api_version.into();
        self
    }

    /// Adds entries to `spec.ips`.
    #[must_use]
    pub fn ips(self, ips: &[&str]) -> Self {
        ips.iter().fold(self, Self::ip)
    }

    /// Sets `appProtocol` on the port named `port_name`.
    ///
    /// # Panics
    /// When the import has no such port.
    #[must_use]
    pub fn app_protocol(mut self, port_name: &str, app_protocol: &str) -> Self {
        let port = self.0.spec.ports.iter_mut().find(|p| p.name.as_deref() == Some(port_name));
        port.unwrap_or_else(|| panic!("no port {port_name:?} to set appProtocol on")).app_protocol =
            Some(app_protocol.into());
        self
    }

    /// Adds an entry to `spec.ipFamilies`.
    #[must_use]
    pub fn family(mut self, family: &str) -> Self {
        self.0.spec.ip_families.push(family.into());
        self
    }

    /// Sets `spec.sessionAffinity`, and the `ClientIP` timeout when given.
    #[must_use]
    pub fn affinity(mut self, affinity: &str, timeout: Option<i64>) -> Self {
        self.0.spec.session_affinity = Some(affinity.into());
        self.0.spec.session_affinity_config = client_ip(timeout);
        self
    }

    /// `sessionAffinity: ClientIP` with this `timeoutSeconds`.
    #[must_use]
    pub fn client_ip_affinity(self, timeout_seconds: impl Into<i64>) -> Self {
        self.affinity(k8s::SESSION_AFFINITY_CLIENT_IP, Some(timeout_seconds.into()))
    }

    /// Adds an annotation.
    #[must_use]
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0.metadata.annotations.get_or_insert_default().insert(key.into(), value.into());
        self
    }

    /// Sets `status.clusters`, oldest export first.
    #[must_use]
    pub fn status_clusters(mut self, clusters: &[&str]) -> Self {
        let clusters = clusters.iter().map(|c| ClusterStatus { cluster: (*c).into() }).collect();
        self.0.status = Some(ServiceImportStatus { clusters });
        self
    }

    /// The import.
    #[must_use]
    pub fn build(self) -> ServiceImport {
        self.0
    }
}

/// An `EndpointSlice` (`discovery.k8s.io/v1`) being built.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct SliceBuilder(EndpointSlice);

/// An IPv4 slice of the import `namespace/service` exported by `cluster`,
/// with both MCS labels and the name `<service>-<cluster>`.
#[must_use]
pub fn slice(namespace: &str, service: &str, cluster: &str) -> SliceBuilder {
    SliceBuilder(EndpointSlice {
        address_type: k8s::ADDRESS_TYPE_IPV4.into(),
        metadata: meta(namespace, &format!("{service}-{cluster}")),
        ..EndpointSlice::default()
    })
    .label(k8s::LABEL_SERVICE_NAME, service)
    .label(k8s::LABEL_SOURCE_CLUSTER, cluster)
}

/// An IPv4 slice `namespace/name` of an ordinary Service `service` (labelled
/// `kubernetes.io/service-name`, as GKE's derived services are), not an MCS slice.
#[must_use]
pub fn service_slice(namespace: &str, name: &str, service: &str) -> SliceBuilder {
    SliceBuilder(EndpointSlice {
        address_type: k8s::ADDRESS_TYPE_IPV4.into(),
        metadata: meta(namespace, name),
        ..EndpointSlice::default()
    })
    .label(k8s::LABEL_KUBERNETES_SERVICE_NAME, service)
}

/// Ready, serving, not terminating: a pod that takes new connections.
pub const READY: EndpointConditions = conditions(Some(true), Some(true), Some(false));
/// Not ready, not serving, not terminating: a pod failing its readiness probe.
pub const NOT_READY: EndpointConditions = conditions(Some(false), Some(false), Some(false));
/// Serving but terminating, not ready: a pod in its graceful shutdown.
pub const TERMINATING: EndpointConditions = conditions(Some(false), Some(true), Some(true));

/// Endpoint conditions; `None` leaves one unset.
#[must_use]
pub const fn conditions(ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> EndpointConditions {
    EndpointConditions { ready, serving, terminating }
}

impl SliceBuilder {
    /// Sets the object's name (for a cluster with several slices).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.0.metadata.name = Some(name.into());
        self
    }

    /// The object's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.0.metadata.name.as_deref().unwrap_or_default()
    }

    /// Sets a label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.metadata.labels.get_or_insert_default().insert(key.into(), value.into());
        self
    }

    /// Removes a label.
    #[must_use]
    pub fn without_label(mut self, key: &str) -> Self {
        self.0.metadata.labels.get_or_insert_default().remove(key);
        self
    }

    /// Sets `addressType`.
    #[must_use]
    pub fn address_type(mut self, address_type: &str) -> Self {
        self.0.address_type = address_type.into();
        self
    }

    /// Adds a port (the exporting cluster's target port); `None` leaves the
    /// name, the protocol or the port unset.
    #[must_use]
    pub fn port<'a>(
        mut self,
        name: impl Into<Option<&'a str>>,
        protocol: impl Into<Option<&'a str>>,
        port: impl Into<Option<i32>>,
    ) -> Self {
        self.0.ports.get_or_insert_default().push(EndpointPort {
            name: name.into().map(Into::into),
            protocol: protocol.into().map(Into::into),
            port: port.into(),
            app_protocol: None,
        });
        self
    }

    protocol_ports!(i32);

    /// Adds an endpoint with one address and these conditions.
    #[must_use]
    pub fn endpoint(mut self, address: impl Display, conditions: Option<EndpointConditions>) -> Self {
        self.0.endpoints.get_or_insert_default().push(Endpoint {
            addresses: vec![address.to_string()],
            conditions,
            ..Endpoint::default()
        });
        self
    }

    /// Adds an endpoint with explicit conditions.
    #[must_use]
    pub fn with_conditions(self, address: impl Display, conditions: EndpointConditions) -> Self {
        self.endpoint(address, Some(conditions))
    }

    /// Adds an endpoint with `ready: true`.
    #[must_use]
    pub fn ready(self, address: impl Display) -> Self {
        self.endpoint(address, Some(conditions(Some(true), None, None)))
    }

    /// Adds endpoints that are [`READY`].
    #[must_use]
    pub fn ready_all<A: Display>(self, addresses: impl IntoIterator<Item = A>) -> Self {
        addresses.into_iter().fold(self, |s, a| s.with_conditions(a, READY))
    }

    /// Adds endpoints, each with its conditions.
    #[must_use]
    pub fn endpoints(self, endpoints: &[(Ipv4Addr, EndpointConditions)]) -> Self {
        endpoints.iter().fold(self, |s, (a, c)| s.with_conditions(a, c.clone()))
    }

    /// Adds an endpoint with `ready: false`.
    #[must_use]
    pub fn not_ready(self, address: impl Display) -> Self {
        self.endpoint(address, Some(conditions(Some(false), None, None)))
    }

    /// Adds a serving, terminating endpoint, as Kubernetes marks a pod in its
    /// graceful shutdown.
    #[must_use]
    pub fn terminating(self, address: impl Display) -> Self {
        self.endpoint(address, Some(conditions(Some(false), Some(true), Some(true))))
    }

    /// The slice as the agent keeps it ([`k8s::Slice`]), shared as the
    /// translation's inputs hold it.
    #[must_use]
    pub fn build(self) -> std::sync::Arc<k8s::Slice> {
        std::sync::Arc::new(self.0.into())
    }

    /// The slice as the API serves it.
    #[must_use]
    pub fn object(self) -> EndpointSlice {
        self.0
    }
}

/// A GKE `ServiceImport` (`net.gke.io/v1`) being built: `ips` and `ports`
/// under `status`, as in GKE's documentation.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct GkeImportBuilder(GkeServiceImport);

/// A GKE import `namespace/name` whose derived service is `derived`.
#[must_use]
pub fn gke_import(namespace: &str, name: &str, derived: &str) -> GkeImportBuilder {
    let annotations = BTreeMap::from([(k8s::GKE_DERIVED_SERVICE_ANNOTATION.to_owned(), derived.to_owned())]);
    GkeImportBuilder(GkeServiceImport {
        api_version: k8s::GKE_SERVICE_IMPORT_API_VERSION.into(),
        kind: k8s::SERVICE_IMPORT_KIND.into(),
        metadata: ObjectMeta { annotations: Some(annotations), ..meta(namespace, name) },
        spec: None,
        status: Some(ServiceImportSpec { type_: k8s::TYPE_CLUSTER_SET_IP.into(), ..ServiceImportSpec::default() }),
    })
}

impl GkeImportBuilder {
    spec_edits!();

    fn section(&mut self) -> &mut ServiceImportSpec {
        self.0.status.get_or_insert_default()
    }

    /// `sessionAffinity: ClientIP` with this timeout.
    #[must_use]
    pub fn affinity(mut self, timeout: i64) -> Self {
        let section = self.section();
        section.session_affinity = Some(k8s::SESSION_AFFINITY_CLIENT_IP.into());
        section.session_affinity_config = client_ip(Some(timeout));
        self
    }

    /// Moves `ips`, `ports` and the rest from `status` to `spec`.
    #[must_use]
    pub fn in_spec(mut self) -> Self {
        self.0.spec = self.0.status.take();
        self
    }

    /// Sets (`Some`) or removes (`None`) an annotation.
    #[must_use]
    pub fn annotation(mut self, key: &str, value: Option<&str>) -> Self {
        let annotations = self.0.metadata.annotations.get_or_insert_default();
        match value {
            Some(v) => annotations.insert(key.into(), v.into()),
            None => annotations.remove(key),
        };
        self
    }

    /// The import.
    #[must_use]
    pub fn build(self) -> GkeServiceImport {
        self.0
    }
}

/// A core/v1 `Endpoints` object being built, one subset at a time.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct EndpointsBuilder(Endpoints);

/// An `Endpoints` object `namespace/name` without subsets.
#[must_use]
pub fn endpoints(namespace: &str, name: &str) -> EndpointsBuilder {
    EndpointsBuilder(Endpoints { metadata: meta(namespace, name), subsets: None })
}

impl EndpointsBuilder {
    /// Adds a subset with `ports` (name, protocol, port) and its ready and
    /// not-ready addresses.
    #[must_use]
    pub fn subset(mut self, ports: &[(&str, Option<&str>, i32)], ready: &[&str], not_ready: &[&str]) -> Self {
        let addresses = |ips: &[&str]| {
            Some(ips.iter().map(|ip| EndpointAddress { ip: (*ip).into(), ..EndpointAddress::default() }).collect())
        };
        let ports = ports
            .iter()
            .map(|(name, protocol, port)| CorePort {
                name: Some((*name).into()),
                protocol: protocol.map(Into::into),
                port: *port,
                app_protocol: None,
            })
            .collect();
        self.0.subsets.get_or_insert_default().push(EndpointSubset {
            addresses: addresses(ready),
            not_ready_addresses: addresses(not_ready),
            ports: Some(ports),
        });
        self
    }

    /// The object.
    #[must_use]
    pub fn build(self) -> Endpoints {
        self.0
    }
}

/// The key of a service port.
///
/// # Panics
/// When `ip` is not an IPv4 address.
#[must_use]
pub fn port_key(ip: &str, port: u16, protocol: Protocol) -> ServicePortKey {
    ServicePortKey { ip: ip.parse().unwrap_or_else(|e| panic!("test VIP {ip:?}: {e}")), port, protocol }
}

/// A backend in `state`.
///
/// # Panics
/// When `ip` is not an IPv4 address.
#[must_use]
pub fn backend_in(cluster: &str, (ip, port): (&str, u16), state: EndpointState) -> DesiredBackend {
    let ip = ip.parse().unwrap_or_else(|e| panic!("test backend IP {ip:?}: {e}"));
    DesiredBackend { cluster: cluster.into(), ip, port, state }
}

/// A ready backend.
#[must_use]
pub fn backend(cluster: &str, ip: &str, port: u16) -> DesiredBackend {
    backend_in(cluster, (ip, port), EndpointState::Ready)
}

/// The desired state of one service port, being built.
#[derive(Clone, Debug)]
pub struct PortBuilder(DesiredServicePort);

/// A port of the import `namespace/name`: unnamed, no affinity, no backends.
#[must_use]
pub fn desired_port(namespace: &str, name: &str) -> PortBuilder {
    PortBuilder(DesiredServicePort {
        namespace: namespace.into(),
        name: name.into(),
        port_name: String::new(),
        session_affinity_timeout: None,
        backends: Vec::new(),
        draining: Vec::new(),
    })
}

impl PortBuilder {
    /// Sets the port's name.
    #[must_use]
    pub fn port_name(mut self, name: &str) -> Self {
        self.0.port_name = name.into();
        self
    }

    /// `ClientIP` affinity with this timeout; `None` turns it off.
    #[must_use]
    pub fn affinity(mut self, timeout: impl Into<Option<u32>>) -> Self {
        self.0.session_affinity_timeout = timeout.into();
        self
    }

    /// Adds ready backends: (cluster, ip, port).
    #[must_use]
    pub fn ready(self, backends: &[(&str, &str, u16)]) -> Self {
        self.backends(backends.iter().map(|(c, ip, port)| backend(c, ip, *port)))
    }

    /// Adds backends, each in its state: (cluster, ip, port, state).
    #[must_use]
    pub fn backends_in(self, backends: &[(&str, &str, u16, EndpointState)]) -> Self {
        self.backends(backends.iter().map(|(c, ip, port, state)| backend_in(c, (ip, *port), *state)))
    }

    /// Adds backends new connections may use.
    #[must_use]
    pub fn backends(mut self, backends: impl IntoIterator<Item = DesiredBackend>) -> Self {
        self.0.backends.extend(backends);
        self
    }

    /// Adds terminating endpoints that keep only their established
    /// connections: (cluster, ip, port).
    #[must_use]
    pub fn draining(self, draining: &[(&str, &str, u16)]) -> Self {
        self.draining_backends(
            draining.iter().map(|(c, ip, port)| backend_in(c, (ip, *port), EndpointState::Terminating)),
        )
    }

    /// Adds draining endpoints.
    #[must_use]
    pub fn draining_backends(mut self, draining: impl IntoIterator<Item = DesiredBackend>) -> Self {
        self.0.draining.extend(draining);
        self
    }

    /// The port.
    #[must_use]
    pub fn build(self) -> DesiredServicePort {
        self.0
    }
}
