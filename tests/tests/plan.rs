//! `mcs-agent plan` end to end: the built binary on directories of manifests,
//! one test per rule of `docs/mcs-semantics.md`, asserting on the parsed JSON (the
//! contract in `docs/plan.md`). No root, no kernel: `plan` only translates.
//!
//! The binary must be built first (`cargo build --bins`; `cargo xtask test`
//! does it).
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use mcs_core::testkit::{self, gke_import, service_slice};
use mcs_tests::manifest::{ImportBuilder, NOT_READY, READY, TERMINATING, import, slice};
use serde::Serialize;
use serde_json::{Value, json};

// ---- harness ----------------------------------------------------------------

/// A temporary manifest directory, removed on drop (also when a test panics).
struct ManifestDir(tempfile::TempDir);

impl ManifestDir {
    fn new(test: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("mcs-plan-test-{test}-")).tempdir();
        Self(dir.unwrap_or_else(|e| panic!("creating a temporary directory for {test}: {e}")))
    }

    fn write(&self, file: &str, documents: &[String]) -> &Self {
        let path = self.0.path().join(file);
        fs::write(&path, documents.join("---\n")).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        self
    }

    fn remove(&self, file: &str) {
        let path = self.0.path().join(file);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn run_agent(args: &[&str]) -> Output {
    let agent = mcs_tests::agent_path();
    Command::new(&agent).args(args).output().unwrap_or_else(|e| panic!("running {} {args:?}: {e}", agent.display()))
}

/// Runs `mcs-agent plan --manifests DIR <extra>`; checks it succeeds and
/// returns the parsed JSON and stderr.
fn plan_with_stderr(dir: &ManifestDir, extra: &[&str]) -> (Value, String) {
    let dir_arg = dir.path().to_str().expect("a UTF-8 temporary path");
    let mut args = vec!["plan", "--manifests", dir_arg];
    args.extend_from_slice(extra);
    let output = run_agent(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "plan {extra:?} failed ({}):\n{stderr}\n{stdout}", output.status);
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("plan output is not JSON ({e}):\n{stdout}"));
    check_contract(&value);
    (value, stderr)
}

fn plan(dir: &ManifestDir, extra: &[&str]) -> Value {
    plan_with_stderr(dir, extra).0
}

/// The keys and types of the documented contract, and its sort orders.
fn check_contract(plan: &Value) {
    let object = plan.as_object().expect("the plan is an object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 4, "top-level keys: {keys:?}");
    for key in ["services", "skipped", "excludedClusters", "warnings"] {
        assert!(object[key].is_array(), "{key} is a list: {plan:#}");
    }
    let services = plan["services"].as_array().expect("services");
    let mut sort_keys = Vec::new();
    for service in services {
        for key in ["namespace", "name", "ip", "protocol", "portName"] {
            assert!(service[key].is_string(), "services[].{key} is a string: {service:#}");
        }
        assert!(service["port"].is_u64(), "{service:#}");
        let affinity = &service["sessionAffinity"];
        assert!(
            affinity.is_null() || (affinity["clientIP"] == json!(true) && affinity["timeoutSeconds"].is_u64()),
            "{service:#}"
        );
        for list in ["backends", "draining"] {
            let endpoints = service[list].as_array().expect("a list of endpoints");
            let order: Vec<_> = endpoints
                .iter()
                .map(|b| {
                    assert!(b["ip"].is_string() && b["port"].is_u64() && b["cluster"].is_string(), "{b:#}");
                    let state = b["state"].as_str().expect("state");
                    assert!(["ready", "terminating"].contains(&state), "{b:#}");
                    (b["cluster"].as_str().map(str::to_owned), ip_of(&b["ip"]), b["port"].as_u64())
                })
                .collect();
            assert!(order.is_sorted(), "{list} sorted by (cluster, ip, port): {service:#}");
        }
        sort_keys.push((
            service["namespace"].as_str().map(str::to_owned),
            service["name"].as_str().map(str::to_owned),
            ip_of(&service["ip"]),
            service["port"].as_u64(),
            service["protocol"].as_str().map(str::to_owned),
        ));
    }
    assert!(sort_keys.is_sorted(), "services sorted by (namespace, name, ip, port, protocol): {plan:#}");
    for skipped in plan["skipped"].as_array().expect("skipped") {
        let reason = skipped["reason"].as_str().expect("reason");
        assert!(["headless", "no-ips", "invalid"].contains(&reason), "{skipped:#}");
        assert!(skipped["message"].is_string() && skipped["namespace"].is_string(), "{skipped:#}");
    }
    for excluded in plan["excludedClusters"].as_array().expect("excludedClusters") {
        assert_eq!(excluded["reason"], "exporter-cap", "{excluded:#}");
        assert!(excluded["cluster"].is_string(), "{excluded:#}");
    }
}

fn ip_of(value: &Value) -> std::net::Ipv4Addr {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{value} is not an IPv4 address"))
}

/// The service entry (namespace, name, port, protocol).
fn service<'a>(plan: &'a Value, (namespace, name): (&str, &str), (port, protocol): (u16, &str)) -> &'a Value {
    plan["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["namespace"] == namespace && s["name"] == name && s["port"] == port && s["protocol"] == protocol)
        .unwrap_or_else(|| panic!("no service {namespace}/{name} {port}/{protocol} in {plan:#}"))
}

/// `"cluster ip:port state"` of each backend (or draining endpoint) of a service.
fn endpoints(service: &Value, list: &str) -> Vec<String> {
    service[list]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|b| {
            format!(
                "{} {}:{} {}",
                b["cluster"].as_str().expect("cluster"),
                b["ip"].as_str().expect("ip"),
                b["port"],
                b["state"].as_str().expect("state")
            )
        })
        .collect()
}

fn backends(service: &Value) -> Vec<String> {
    endpoints(service, "backends")
}

/// (namespace, name, reason) of each skipped import, and the messages.
fn skipped(plan: &Value) -> Vec<(String, String, String, String)> {
    plan["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().expect("a string").to_owned();
            (field("namespace"), field("name"), field("reason"), field("message"))
        })
        .collect()
}

fn excluded(plan: &Value) -> Vec<String> {
    plan["excludedClusters"]
        .as_array()
        .expect("excludedClusters")
        .iter()
        .map(|e| {
            format!(
                "{}/{} {}",
                e["namespace"].as_str().expect("ns"),
                e["name"].as_str().expect("name"),
                e["cluster"].as_str().expect("cluster")
            )
        })
        .collect()
}

fn warnings(plan: &Value) -> Vec<String> {
    plan["warnings"].as_array().expect("warnings").iter().map(|w| w.as_str().expect("a string").to_owned()).collect()
}

// ---- manifests: the shared test kit's objects, written as YAML ----------------

/// `object` as one YAML document.
fn yaml(object: &impl Serialize) -> String {
    serde_norway::to_string(object).expect("a built object serializes")
}

/// demo/web: ClusterSetIP 198.19.0.1, http 80/TCP.
fn web() -> ImportBuilder {
    import("demo", "web").ip("198.19.0.1").tcp("http", 80)
}

/// A slice of demo/web from `cluster` with one ready endpoint on http/8080.
fn web_slice(cluster: &str, address: &str) -> String {
    yaml(&slice("demo", "web", cluster).tcp("http", 8080).with_conditions(address, READY))
}

// ---- one test per rule -------------------------------------------------------

#[test]
fn keying_tcp_and_udp_on_one_port_are_two_entries() {
    let dir = ManifestDir::new("keying");
    dir.write(
        "all.yaml",
        &[
            // appProtocol has no dataplane effect (L4 only).
            yaml(
                &import("demo", "dns")
                    .ips(&["198.19.0.2"])
                    .ports(&[("dns-tcp", "TCP", 42), ("dns-udp", "UDP", 42)])
                    .app_protocol("dns-tcp", "dns"),
            ),
            yaml(
                &slice("demo", "dns", "east")
                    .ports(&[("dns-tcp", "TCP", 4200), ("dns-udp", "UDP", 4201)])
                    .with_conditions("198.18.1.1", READY),
            ),
        ],
    );
    let plan = plan(&dir, &[]);
    assert_eq!(plan["services"].as_array().map(Vec::len), Some(2), "{plan:#}");
    let tcp = service(&plan, ("demo", "dns"), (42, "TCP"));
    let udp = service(&plan, ("demo", "dns"), (42, "UDP"));
    assert_eq!(tcp["ip"], "198.19.0.2");
    assert_eq!(tcp["portName"], "dns-tcp");
    assert_eq!(backends(tcp), ["east 198.18.1.1:4200 ready"]);
    assert_eq!(backends(udp), ["east 198.18.1.1:4201 ready"]);
    assert_eq!(tcp["sessionAffinity"], Value::Null);
    assert_eq!((skipped(&plan), excluded(&plan), warnings(&plan)), (vec![], vec![], vec![]));
}

#[test]
fn ports_are_matched_by_name_then_protocol_in_every_cluster() {
    let dir = ManifestDir::new("ports");
    let ports = |http, https| [("https", "TCP", https), ("http", "TCP", http)];
    dir.write(
        "import.yaml",
        &[yaml(&import("demo", "web").ips(&["198.19.0.1"]).ports(&[("http", "TCP", 80), ("https", "TCP", 443)]))],
    )
    .write(
        "slices.yaml",
        &[
            yaml(&slice("demo", "web", "east").ports(&ports(8080, 8443)).with_conditions("198.18.1.1", READY)),
            yaml(&slice("demo", "web", "west").ports(&ports(9080, 9443)).with_conditions("198.18.2.1", READY)),
            yaml(&slice("demo", "web", "north").ports(&ports(80, 443)).with_conditions("198.18.3.1", READY)),
            // Same name, other protocol: no match.
            yaml(&slice("demo", "web", "south").ports(&[("http", "UDP", 7080)]).with_conditions("198.18.4.1", READY)),
        ],
    );
    let plan = plan(&dir, &[]);
    assert_eq!(
        backends(service(&plan, ("demo", "web"), (80, "TCP"))),
        ["east 198.18.1.1:8080 ready", "north 198.18.3.1:80 ready", "west 198.18.2.1:9080 ready"]
    );
    assert_eq!(
        backends(service(&plan, ("demo", "web"), (443, "TCP"))),
        ["east 198.18.1.1:8443 ready", "north 198.18.3.1:443 ready", "west 198.18.2.1:9443 ready"]
    );
}

#[test]
fn exporting_cluster_cap_ranks_excludes_and_promotes() {
    let dir = ManifestDir::new("cap");
    dir.write("import.yaml", &[yaml(&web().status_clusters(&["c6", "c2"]))]);
    for i in 1..=6 {
        dir.write(&format!("slice-c{i}.yaml"), &[web_slice(&format!("c{i}"), &format!("198.18.{i}.1"))]);
    }
    let clusters = |plan: &Value| -> Vec<String> {
        backends(service(plan, ("demo", "web"), (80, "TCP")))
            .iter()
            .map(|b| b.split(' ').next().expect("cluster").to_owned())
            .collect()
    };

    // Six clusters, default cap 5: c6 and c2 (listed) first, then c1, c3, c4.
    let first = plan(&dir, &[]);
    assert_eq!(clusters(&first), ["c1", "c2", "c3", "c4", "c6"]);
    assert_eq!(excluded(&first), ["demo/web c5"]);

    // Readiness does not change membership: c1 going unready keeps c5 out.
    dir.write(
        "slice-c1.yaml",
        &[yaml(&slice("demo", "web", "c1").ports(&[("http", "TCP", 8080)]).with_conditions("198.18.1.1", NOT_READY))],
    );
    let unready = plan(&dir, &[]);
    assert_eq!(clusters(&unready), ["c2", "c3", "c4", "c6"]);
    assert_eq!(excluded(&unready), ["demo/web c5"]);

    // A change in the unselected cluster changes nothing.
    dir.write(
        "slice-c5.yaml",
        &[yaml(&slice("demo", "web", "c5").ports(&[("http", "TCP", 9999)]).with_conditions("198.18.5.9", READY))],
    );
    assert_eq!(plan(&dir, &[]), unready);

    // A selected cluster disappears: c5 is promoted.
    dir.remove("slice-c3.yaml");
    let promoted = plan(&dir, &[]);
    assert_eq!(clusters(&promoted), ["c2", "c4", "c5", "c6"]);
    assert_eq!(excluded(&promoted), Vec::<String>::new());

    // The flag sets the cap; 0 means none.
    let two = plan(&dir, &["--max-exporting-clusters", "2"]);
    assert_eq!(excluded(&two), ["demo/web c1", "demo/web c4", "demo/web c5"]);
    assert_eq!(clusters(&two), ["c2", "c6"]);
    let none = plan(&dir, &["--max-exporting-clusters", "0"]);
    assert_eq!(excluded(&none), Vec::<String>::new());
}

#[test]
fn readiness_terminating_fallback_and_draining() {
    let dir = ManifestDir::new("readiness");
    dir.write("web.yaml", &[yaml(&web())]).write(
        "slices.yaml",
        &[
            yaml(
                &slice("demo", "web", "east")
                    .ports(&[("http", "TCP", 8080)])
                    .with_conditions("198.18.1.1", READY)
                    .with_conditions("198.18.1.2", TERMINATING)
                    .with_conditions("198.18.1.3", NOT_READY),
            ),
            yaml(
                &slice("demo", "web", "west")
                    .ports(&[("http", "TCP", 9080)])
                    .with_conditions("198.18.2.1", TERMINATING),
            ),
        ],
    );
    let plan1 = plan(&dir, &[]);
    let web = service(&plan1, ("demo", "web"), (80, "TCP"));
    assert_eq!(backends(web), ["east 198.18.1.1:8080 ready"]);
    assert_eq!(endpoints(web, "draining"), ["east 198.18.1.2:8080 terminating", "west 198.18.2.1:9080 terminating"]);

    // The last ready endpoint goes: the serving, terminating ones take new
    // connections.
    dir.write(
        "slices.yaml",
        &[
            yaml(
                &slice("demo", "web", "east")
                    .ports(&[("http", "TCP", 8080)])
                    .with_conditions("198.18.1.2", TERMINATING)
                    .with_conditions("198.18.1.3", NOT_READY),
            ),
            yaml(
                &slice("demo", "web", "west")
                    .ports(&[("http", "TCP", 9080)])
                    .with_conditions("198.18.2.1", TERMINATING),
            ),
        ],
    );
    let plan2 = plan(&dir, &[]);
    let web = service(&plan2, ("demo", "web"), (80, "TCP"));
    assert_eq!(backends(web), ["east 198.18.1.2:8080 terminating", "west 198.18.2.1:9080 terminating"]);
    assert_eq!(endpoints(web, "draining"), Vec::<String>::new());

    // Nothing usable: the entry stays, with no backends (fail fast).
    dir.write(
        "slices.yaml",
        &[yaml(&slice("demo", "web", "east").ports(&[("http", "TCP", 8080)]).with_conditions("198.18.1.3", NOT_READY))],
    );
    let plan3 = plan(&dir, &[]);
    assert_eq!(backends(service(&plan3, ("demo", "web"), (80, "TCP"))), Vec::<String>::new());
}

#[test]
fn locality_flag_and_annotation() {
    let dir = ManifestDir::new("locality");
    dir.write("web.yaml", &[yaml(&web())])
        .write("slices.yaml", &[web_slice("east", "198.18.1.1"), web_slice("west", "198.18.2.1")]);
    let get = |extra: &[&str]| backends(service(&plan(&dir, extra), ("demo", "web"), (80, "TCP")));
    let all = ["east 198.18.1.1:8080 ready", "west 198.18.2.1:8080 ready"];
    // The local cluster's endpoints are backends like any other's.
    assert_eq!(get(&["--cluster-id", "east"]), all);
    assert_eq!(get(&["--cluster-id", "east", "--locality", "local"]), ["east 198.18.1.1:8080 ready"]);
    assert_eq!(get(&["--cluster-id", "east", "--locality", "remote"]), ["west 198.18.2.1:8080 ready"]);

    dir.write("web.yaml", &[yaml(&web().annotation("mcs-ebpf.dev/locality", "local"))]);
    assert_eq!(get(&["--cluster-id", "west"]), ["west 198.18.2.1:8080 ready"]);
    assert_eq!(get(&["--cluster-id", "west", "--locality", "remote"]), ["west 198.18.2.1:8080 ready"]);
}

#[test]
fn types_headless_no_ips_and_ip_changes() {
    let dir = ManifestDir::new("types");
    dir.write(
        "imports.yaml",
        &[
            yaml(&web()),
            yaml(&import("demo", "headless").ports(&[("http", "TCP", 80)]).type_("Headless")),
            yaml(&import("demo", "pending").ports(&[("http", "TCP", 80)])),
            yaml(&import("demo", "v6").ips(&["fd00::10"]).ports(&[("http", "TCP", 80)]).family("IPv6")),
        ],
    )
    .write(
        "slices.yaml",
        &[
            web_slice("east", "198.18.1.1"),
            // An IPv6 slice is not used for the IPv4 ClusterSetIP.
            yaml(
                &slice("demo", "web", "east")
                    .named("web-v6")
                    .ports(&[("http", "TCP", 8080)])
                    .with_conditions("fd00::1", READY)
                    .address_type("IPv6"),
            ),
        ],
    );
    let before = plan(&dir, &[]);
    let skips = skipped(&before);
    let reasons: Vec<_> = skips.iter().map(|(ns, n, r, _)| format!("{ns}/{n} {r}")).collect();
    assert_eq!(reasons, ["demo/headless headless", "demo/pending no-ips", "demo/v6 invalid"]);
    assert!(skips[1].3.contains("spec.ips"), "{skips:?}");
    assert!(skips[2].3.contains("IPv6 is not translated"), "{skips:?}");
    assert_eq!(service(&before, ("demo", "web"), (80, "TCP"))["ip"], "198.19.0.1");
    assert_eq!(backends(service(&before, ("demo", "web"), (80, "TCP"))), ["east 198.18.1.1:8080 ready"]);

    // A new ClusterSetIP: the old one is gone, the new one has the backends.
    dir.write("imports.yaml", &[yaml(&import("demo", "web").ip("198.19.0.9").tcp("http", 80))]);
    let after = plan(&dir, &[]);
    let services = after["services"].as_array().expect("services");
    assert_eq!(services.len(), 1, "{after:#}");
    assert_eq!(services[0]["ip"], "198.19.0.9");
    assert_eq!(backends(&services[0]), ["east 198.18.1.1:8080 ready"]);
}

#[test]
fn session_affinity() {
    let dir = ManifestDir::new("affinity");
    dir.write(
        "imports.yaml",
        &[
            yaml(&import("demo", "a").ips(&["198.19.0.1"]).ports(&[("http", "TCP", 80)]).client_ip_affinity(60)),
            yaml(&import("demo", "b").ips(&["198.19.0.2"]).ports(&[("http", "TCP", 80)]).client_ip_affinity(0)),
            yaml(&import("demo", "c").ips(&["198.19.0.3"]).ports(&[("http", "TCP", 80)]).client_ip_affinity(86_401)),
            yaml(&import("demo", "d").ips(&["198.19.0.4"]).ports(&[("http", "TCP", 80)]).affinity("ClientIP", None)),
            yaml(&import("demo", "e").ips(&["198.19.0.5"]).ports(&[("http", "TCP", 80)]).affinity("None", None)),
        ],
    );
    let plan = plan(&dir, &[]);
    let get = |name: &str| service(&plan, ("demo", name), (80, "TCP"))["sessionAffinity"].clone();
    assert_eq!(get("a"), json!({"clientIP": true, "timeoutSeconds": 60}));
    assert_eq!(get("b"), json!({"clientIP": true, "timeoutSeconds": 10800}));
    assert_eq!(get("c"), json!({"clientIP": true, "timeoutSeconds": 10800}));
    assert_eq!(get("d"), json!({"clientIP": true, "timeoutSeconds": 10800}));
    assert_eq!(get("e"), Value::Null);
    let warnings = warnings(&plan);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("ServiceImport demo/b spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0"),
        "{warnings:#?}"
    );
    assert!(
        warnings[1].starts_with("ServiceImport demo/c spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401"),
        "{warnings:#?}"
    );
}

#[test]
fn namespace_sameness() {
    let dir = ManifestDir::new("namespaces");
    dir.write(
        "all.yaml",
        &[
            yaml(&web()),
            yaml(&import("prod", "web").ips(&["198.19.0.2"]).ports(&[("http", "TCP", 80)])),
            web_slice("east", "198.18.1.1"),
            yaml(&slice("prod", "web", "east").ports(&[("http", "TCP", 8080)]).with_conditions("198.18.9.1", READY)),
            yaml(&slice("prod", "web", "west").ports(&[("http", "TCP", 8080)]).with_conditions("198.18.9.2", READY)),
        ],
    );
    let plan = plan(&dir, &[]);
    assert_eq!(backends(service(&plan, ("demo", "web"), (80, "TCP"))), ["east 198.18.1.1:8080 ready"]);
    assert_eq!(
        backends(service(&plan, ("prod", "web"), (80, "TCP"))),
        ["east 198.18.9.1:8080 ready", "west 198.18.9.2:8080 ready"]
    );
}

#[test]
fn deletion_of_an_import_and_of_a_clusters_slices() {
    let dir = ManifestDir::new("deletion");
    dir.write(
        "web.yaml",
        &[yaml(&import("demo", "web").ips(&["198.19.0.1"]).ports(&[("http", "TCP", 80), ("alt", "UDP", 81)]))],
    )
    .write("api.yaml", &[yaml(&import("demo", "api").ips(&["198.19.0.2"]).ports(&[("http", "TCP", 80)]))])
    .write(
        "east.yaml",
        &[yaml(
            &slice("demo", "web", "east")
                .ports(&[("http", "TCP", 8080), ("alt", "UDP", 8081)])
                .with_conditions("198.18.1.1", READY),
        )],
    )
    .write(
        "west.yaml",
        &[yaml(
            &slice("demo", "web", "west")
                .ports(&[("http", "TCP", 8080), ("alt", "UDP", 8081)])
                .with_conditions("198.18.2.1", READY),
        )],
    );
    assert_eq!(plan(&dir, &[])["services"].as_array().map(Vec::len), Some(3));

    // Every slice of east deleted: its backends vanish from every port.
    dir.remove("east.yaml");
    let plan1 = plan(&dir, &[]);
    assert_eq!(backends(service(&plan1, ("demo", "web"), (80, "TCP"))), ["west 198.18.2.1:8080 ready"]);
    assert_eq!(backends(service(&plan1, ("demo", "web"), (81, "UDP"))), ["west 198.18.2.1:8081 ready"]);

    // The import deleted: all its entries go, the other import stays.
    dir.remove("web.yaml");
    let plan2 = plan(&dir, &[]);
    let names: Vec<_> = plan2["services"].as_array().expect("services").iter().map(|s| s["name"].clone()).collect();
    assert_eq!(names, [json!("api")]);
}

#[test]
fn gke_imports_with_their_derived_endpoints() {
    let dir = ManifestDir::new("gke");
    let gke_import =
        gke_import("demo", "shop", "gke-mcs-shop").ip("198.19.0.30").port("http", "TCP", 80).port("grpc", "TCP", 9090);
    let ports = [("http", Some("TCP"), 8080), ("grpc", Some("TCP"), 50051)];
    let endpoints = yaml(&testkit::endpoints("demo", "gke-mcs-shop").subset(
        &ports,
        &["198.18.5.1", "198.18.5.2"],
        &["198.18.5.3"],
    ));
    dir.write("gke.yaml", &[yaml(&gke_import), endpoints.clone()]);
    let plan1 = plan(&dir, &["--max-exporting-clusters", "1"]);
    assert_eq!(
        backends(service(&plan1, ("demo", "shop"), (80, "TCP"))),
        [" 198.18.5.1:8080 ready", " 198.18.5.2:8080 ready"],
        "cluster is empty for GKE imports"
    );
    assert_eq!(
        backends(service(&plan1, ("demo", "shop"), (9090, "TCP"))),
        [" 198.18.5.1:50051 ready", " 198.18.5.2:50051 ready"]
    );
    assert_eq!(excluded(&plan1), Vec::<String>::new());

    // The derived service's EndpointSlices are used where they exist.
    let derived_slice = service_slice("demo", "gke-mcs-shop-abcde", "gke-mcs-shop")
        .label("endpointslice.kubernetes.io/managed-by", "endpointslicemirroring-controller.k8s.io")
        .tcp("http", 8080)
        .ready("198.18.6.1");
    dir.write("derived-slice.yaml", &[yaml(&derived_slice)]);
    let plan2 = plan(&dir, &[]);
    assert_eq!(backends(service(&plan2, ("demo", "shop"), (80, "TCP"))), [" 198.18.6.1:8080 ready"]);
    assert_eq!(backends(service(&plan2, ("demo", "shop"), (9090, "TCP"))), Vec::<String>::new());

    // Without the annotation the import is skipped, naming it.
    dir.remove("derived-slice.yaml");
    dir.write("gke.yaml", &[yaml(&gke_import.annotation("net.gke.io/derived-service", None)), endpoints]);
    let plan3 = plan(&dir, &[]);
    let skips = skipped(&plan3);
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!((skips[0].0.as_str(), skips[0].1.as_str(), skips[0].2.as_str()), ("demo", "shop", "invalid"));
    assert!(skips[0].3.contains("metadata.annotations[net.gke.io/derived-service]"), "{skips:?}");
}

#[test]
fn invalid_input_is_skipped_naming_the_field_and_disturbs_nothing_else() {
    let dir = ManifestDir::new("invalid");
    let one_port = |name: &str, ips: &[&str], (port_name, protocol, port): (&str, &str, i64)| {
        import("demo", name).ips(ips).port(port_name, protocol, port)
    };
    dir.write(
        "imports.yaml",
        &[
            yaml(&web()),
            yaml(&one_port("bad-ip", &["198.19.0.300"], ("http", "TCP", 80))),
            yaml(&one_port("port-zero", &["198.19.0.3"], ("http", "TCP", 0))),
            yaml(&one_port("port-big", &["198.19.0.4"], ("http", "TCP", 65_536))),
            yaml(&one_port("sctp", &["198.19.0.5"], ("http", "SCTP", 80))),
            yaml(&import("demo", "dup-name").ips(&["198.19.0.6"]).ports(&[("http", "TCP", 80), ("http", "UDP", 81)])),
            yaml(&one_port("three-ips", &["198.19.0.7", "fd00::7", "198.19.0.8"], ("http", "TCP", 80))),
            yaml(&one_port("family", &["198.19.0.9"], ("http", "TCP", 80)).family("IPv6")),
        ],
    )
    .write(
        "slices.yaml",
        &[
            web_slice("east", "198.18.1.1"),
            yaml(
                &slice("demo", "web", "west")
                    .ports(&[("http", "TCP", 8080)])
                    .with_conditions("198.18.2.300", READY)
                    .with_conditions("198.18.2.1", READY),
            ),
        ],
    )
    // A manifest that cannot be read: reported, the rest is planned.
    .write("broken.yaml", &[yaml(&web()).replace("port: 80", "port: eighty").replace("name: web", "name: broken")]);
    let (plan, stderr) = plan_with_stderr(&dir, &[]);
    let skips = skipped(&plan);
    let got: Vec<(&str, &str)> = skips.iter().map(|(_, n, r, _)| (n.as_str(), r.as_str())).collect();
    assert_eq!(
        got,
        [
            ("bad-ip", "invalid"),
            ("dup-name", "invalid"),
            ("family", "invalid"),
            ("port-big", "invalid"),
            ("port-zero", "invalid"),
            ("sctp", "invalid"),
            ("three-ips", "invalid"),
        ]
    );
    let fields = [
        "spec.ips[0]",
        "spec.ports[1].name",
        "spec.ipFamilies[0]",
        "spec.ports[0].port",
        "spec.ports[0].port",
        "spec.ports[0].protocol",
        "spec.ips",
    ];
    for ((_, name, _, message), field) in skips.iter().zip(fields) {
        assert!(message.starts_with(field), "{name}: {message:?} should name {field}");
    }
    // The valid import is untouched, minus the one bad endpoint address.
    assert_eq!(
        backends(service(&plan, ("demo", "web"), (80, "TCP"))),
        ["east 198.18.1.1:8080 ready", "west 198.18.2.1:8080 ready"]
    );
    let warnings = warnings(&plan);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].contains("broken.yaml document 1 (ServiceImport demo/broken): spec.ports[0].port"),
        "{warnings:#?}"
    );
    assert!(warnings[1].contains("EndpointSlice demo/web-west endpoints[0].addresses[0]"), "{warnings:#?}");
    assert!(stderr.contains("broken.yaml document 1 (ServiceImport demo/broken): spec.ports[0].port"), "{stderr}");
}

#[test]
fn the_demo_manifests_plan_cleanly() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/demo");
    let output = run_agent(&["plan", "--manifests", demo.to_str().expect("UTF-8 path"), "--cluster-id", "local"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plan: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    check_contract(&plan);
    let services = plan["services"].as_array().expect("services");
    assert!(!services.is_empty(), "{plan:#}");
    assert!(services.iter().all(|s| !s["backends"].as_array().expect("backends").is_empty()), "{plan:#}");
    assert_eq!((skipped(&plan), warnings(&plan)), (vec![], vec![]));
}

#[test]
fn table_output_shape() {
    let dir = ManifestDir::new("table");
    dir.write(
        "all.yaml",
        &[
            yaml(&web().affinity("ClientIP", None)),
            yaml(&import("demo", "empty").ips(&["198.19.0.2"]).ports(&[("dns", "UDP", 53)])),
            yaml(&import("demo", "headless").type_("Headless")),
            web_slice("east", "198.18.1.1"),
            yaml(
                &slice("demo", "web", "west")
                    .ports(&[("http", "TCP", 9080)])
                    .with_conditions("198.18.2.1", TERMINATING),
            ),
        ],
    );
    let output = run_agent(&["plan", "--manifests", dir.path().to_str().expect("UTF-8 path"), "-o", "table"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8(output.stdout).expect("UTF-8 table");
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["SERVICE", "PORT", "ENTRY", "AFFINITY", "BACKEND", "CLUSTER", "STATE"], "{table}");
    assert_eq!(lines[1], ["demo/empty", "dns", "198.19.0.2:53/UDP", "-", "(none)", "-", "fail-fast"], "{table}");
    assert_eq!(
        lines[2],
        ["demo/web", "http", "198.19.0.1:80/TCP", "ClientIP", "10800s", "198.18.1.1:8080", "east", "ready"],
        "{table}"
    );
    assert_eq!(lines[3], ["198.18.2.1:9080", "west", "draining"], "{table}");
    assert_eq!(lines[4], Vec::<&str>::new(), "{table}");
    assert_eq!(lines[5], ["SKIPPED", "REASON", "MESSAGE"], "{table}");
    assert_eq!(lines[6][..2], ["demo/headless", "headless"], "{table}");
    assert_eq!(lines.len(), 7, "{table}");
    // The BACKEND column lines up.
    let raw: Vec<&str> = table.lines().collect();
    let column = raw[0].find("BACKEND").expect("BACKEND header");
    assert_eq!(raw[2].find("198.18.1.1"), Some(column), "{table}");
    assert_eq!(raw[3].find("198.18.2.1"), Some(column), "{table}");
}

#[test]
fn a_missing_manifest_directory_is_an_error() {
    let dir = ManifestDir::new("missing");
    let missing = dir.path().join("nope");
    let output = run_agent(&["plan", "--manifests", missing.to_str().expect("UTF-8 path")]);
    assert!(!output.status.success(), "plan of a missing directory must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&output.stdout));
}
