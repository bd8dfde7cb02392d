//! Table-driven tests of the translation, in the style of kube-proxy's
//! `endpointslicecache_test.go`: every case lists its inputs and everything
//! the translation must say about them, and [`run`] also checks that the
//! output does not depend on the inputs' order.
mod affinity;
mod cap;
mod gke;
mod imports;
mod incremental;
mod ports;
mod properties;
mod readiness;
mod slices;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointConditions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::k8s::{self, GkeServiceImport, ServiceImport, Slice};
use crate::testkit::{
    GkeImportBuilder, ImportBuilder, SliceBuilder, conditions, desired_port, endpoints, gke_import, import, port_key,
    slice,
};

fn with_affinity(entry: DesiredServicePort, timeout: u32) -> DesiredServicePort {
    DesiredServicePort { session_affinity_timeout: Some(timeout), ..entry }
}

// ---- the table runner ----------------------------------------------

/// One case: inputs, and everything the translation must say about them.
#[derive(Default)]
struct Case {
    name: &'static str,
    imports: Vec<ServiceImport>,
    slices: Vec<std::sync::Arc<Slice>>,
    gke_imports: Vec<GkeServiceImport>,
    endpoints: Vec<Endpoints>,
    /// `None`: [`config`].
    config: Option<Config>,
    /// Every entry of the desired state.
    want: Vec<(ServicePortKey, DesiredServicePort)>,
    /// Every skipped import: (namespace, name, reason, part of the message).
    skipped: Vec<(&'static str, &'static str, SkipReason, &'static str)>,
    /// Every excluded cluster: (namespace, name, cluster), all for the cap.
    excluded: Vec<(&'static str, &'static str, &'static str)>,
    /// Part of each warning, in the report's (sorted) order.
    warnings: Vec<&'static str>,
}

impl Case {
    fn inputs(&self) -> Inputs {
        Inputs {
            imports: self.imports.iter().cloned().map(std::sync::Arc::new).collect(),
            slices: self.slices.clone(),
            gke_imports: self.gke_imports.iter().cloned().map(std::sync::Arc::new).collect(),
            endpoints: self.endpoints.clone(),
        }
    }
}

fn translate_lists(
    imports: &[ServiceImport],
    slices: &[std::sync::Arc<Slice>],
    config: &Config,
) -> (DesiredState, Report) {
    let imports = imports.iter().cloned().map(std::sync::Arc::new).collect();
    let inputs = Inputs { imports, slices: slices.to_vec(), ..Inputs::default() };
    translate(&inputs, config)
}

fn config() -> Config {
    Config { cluster_id: "east".into(), ..Config::default() }
}

/// Every order of the inputs that [`run`] tries besides the given one: each
/// list reversed, and each rotated by one.
fn reorderings(inputs: &Inputs) -> Vec<Inputs> {
    let reversed = Inputs {
        imports: inputs.imports.iter().rev().cloned().collect(),
        slices: inputs.slices.iter().rev().cloned().collect(),
        gke_imports: inputs.gke_imports.iter().rev().cloned().collect(),
        endpoints: inputs.endpoints.iter().rev().cloned().collect(),
    };
    let mut rotated = inputs.clone();
    if !rotated.imports.is_empty() {
        rotated.imports.rotate_left(1);
    }
    if !rotated.slices.is_empty() {
        rotated.slices.rotate_left(1);
    }
    if !rotated.gke_imports.is_empty() {
        rotated.gke_imports.rotate_left(1);
    }
    if !rotated.endpoints.is_empty() {
        rotated.endpoints.rotate_left(1);
    }
    vec![reversed, rotated]
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let name = case.name;
        let config = case.config.clone().unwrap_or_else(config);
        let inputs = case.inputs();
        let (state, report) = translate(&inputs, &config);

        let want: BTreeMap<_, _> = case.want.iter().cloned().collect();
        assert_eq!(want.len(), case.want.len(), "case {name:?}: duplicate keys in `want`");
        assert_eq!(state.services, want, "case {name:?}: services");

        let got_skipped: Vec<_> =
            report.skipped.iter().map(|s| (s.namespace.as_str(), s.name.as_str(), s.reason)).collect();
        let want_skipped: Vec<_> = case.skipped.iter().map(|(ns, n, r, _)| (*ns, *n, *r)).collect();
        assert_eq!(got_skipped, want_skipped, "case {name:?}: skipped ({:#?})", report.skipped);
        for (skip, (_, _, _, fragment)) in report.skipped.iter().zip(&case.skipped) {
            assert!(skip.message.contains(fragment), "case {name:?}: {:?} should contain {fragment:?}", skip.message);
        }

        let got_excluded: Vec<_> = report
            .excluded_clusters
            .iter()
            .map(|e| {
                assert_eq!(e.reason, ExclusionReason::ExporterCap, "case {name:?}");
                (e.namespace.as_str(), e.name.as_str(), e.cluster.as_str())
            })
            .collect();
        assert_eq!(got_excluded, case.excluded, "case {name:?}: excluded clusters");

        assert_eq!(report.warnings.len(), case.warnings.len(), "case {name:?}: warnings {:#?}", report.warnings);
        for (warning, fragment) in report.warnings.iter().zip(&case.warnings) {
            assert!(warning.contains(fragment), "case {name:?}: {warning:?} should contain {fragment:?}");
        }

        incremental::agrees(name, &inputs, &config, (&state, &report));

        // The output never depends on the order of the inputs.
        for reordered in reorderings(&inputs) {
            assert_eq!(
                translate(&reordered, &config),
                (state.clone(), report.clone()),
                "case {name:?}: reordered inputs changed the output"
            );
        }
    }
}

// ---- shared by the cases (one module per topic) ---------------------

const VIP: &str = "198.19.0.1";
const VIP2: &str = "198.19.0.2";

fn web() -> ImportBuilder {
    import("demo", "web").ip(VIP)
}

/// Changes to a built import, for the cases that reuse one.
impl ServiceImport {
    fn with_ips(mut self, ips: &[&str]) -> Self {
        self.spec.ips = ips.iter().map(|ip| (*ip).into()).collect();
        self
    }

    fn renamed(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.into());
        self
    }
}
