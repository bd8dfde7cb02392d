//! The deployment manifests under `deploy/`, checked without a cluster.
//!
//! - Every document of every manifest is parsed by its kind into the
//!   `k8s-openapi` type (or the agent's own `ServiceImport` type), with the
//!   failing field's path in the error. Those types ignore unknown fields, so
//!   strictness comes from a round trip: the typed object is serialized again
//!   and every field of the file must still be there, with the same value. A
//!   field that vanished is a typo or a field the API version lacks; the API
//!   server would reject or silently drop it.
//! - ServiceImports and ServiceExports are also validated against the CRDs in
//!   `deploy/crds` (unknown fields are what the API server would prune).
//! - The DaemonSet's arguments, with `$(VAR)` references resolved from its
//!   environment and the `ConfigMap`, are parsed by the agent's own CLI.
//! - The `ClusterRole` grants get, list and watch on exactly what the agent reads.
//! - The CRDs serve v1alpha1 and v1beta1 with one schema, store v1beta1, and
//!   have every field the agent reads.
//! - Every manifest under `deploy/examples` loads through the agent's manifest
//!   reader without an error, and the mcs-basic example translates to the
//!   target ports its exporting clusters' Services name.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Container, Namespace, ResourceQuota, Service, ServiceAccount},
        discovery::v1::EndpointSlice,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use mcs_agent::{
    cli::{Cli, Command, SourceKind},
    k8s::ServiceImport,
    manifests,
    translate::{self, Protocol},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

mod agent;
mod crds;
mod docs;
mod examples;
mod manifests_parse;
mod schema;

use docs::*;
use schema::*;
