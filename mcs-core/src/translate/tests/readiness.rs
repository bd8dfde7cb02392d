//! Readiness, the KEP-1669 terminating fallback, draining, and locality.
use super::*;

use EndpointState::{Ready, Terminating};

fn east() -> SliceBuilder {
    slice("demo", "web", "east").port("http", None, 8080)
}

fn west() -> SliceBuilder {
    slice("demo", "web", "west").port("http", None, 9080)
}

fn http(
    backends: &[(&str, &str, u16, EndpointState)],
    draining: &[(&str, &str, u16)],
) -> Vec<(ServicePortKey, DesiredServicePort)> {
    vec![(
        port_key(VIP, 80, Protocol::Tcp),
        desired_port("demo", "web").port_name("http").backends_in(backends).draining(draining).build(),
    )]
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn readiness_and_terminating_fallback() {
    run(vec![
        Case {
            name: "ready true or unset are backends; terminating ones drain; not ready ones are neither",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                east()
                    .ready("198.18.0.1")
                    .endpoint("198.18.0.2", None)
                    .endpoint("198.18.0.3", Some(EndpointConditions::default()))
                    .not_ready("198.18.0.4")
                    .terminating("198.18.0.5")
                    // Terminating and no longer serving: still drains.
                    .with_conditions("198.18.0.6", conditions(Some(false), Some(false), Some(true)))
                    .build(),
            ],
            want: http(
                &[
                    ("east", "198.18.0.1", 8080, Ready),
                    ("east", "198.18.0.2", 8080, Ready),
                    ("east", "198.18.0.3", 8080, Ready),
                ],
                &[("east", "198.18.0.5", 8080), ("east", "198.18.0.6", 8080)],
            ),
            ..Case::default()
        },
        Case {
            name: "no ready endpoint: serving and terminating ones take new connections",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                east()
                    .not_ready("198.18.0.1")
                    .terminating("198.18.0.2")
                    .with_conditions("198.18.0.3", conditions(Some(false), Some(false), Some(true)))
                    .build(),
                west().terminating("198.18.0.4").build(),
            ],
            want: http(
                &[("east", "198.18.0.2", 8080, Terminating), ("west", "198.18.0.4", 9080, Terminating)],
                &[("east", "198.18.0.3", 8080)],
            ),
            ..Case::default()
        },
        Case {
            name: "one ready endpoint in any selected cluster stops the fallback everywhere",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![east().terminating("198.18.0.1").build(), west().ready("198.18.0.2").build()],
            want: http(&[("west", "198.18.0.2", 9080, Ready)], &[("east", "198.18.0.1", 8080)]),
            ..Case::default()
        },
        Case {
            name: "nothing ready or serving: no backends (new connections fail fast), terminating ones still drain",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                east()
                    .not_ready("198.18.0.1")
                    .with_conditions("198.18.0.2", conditions(Some(false), Some(false), Some(true)))
                    .build(),
            ],
            want: http(&[], &[("east", "198.18.0.2", 8080)]),
            ..Case::default()
        },
        Case {
            name: "no endpoints at all",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![east().build()],
            want: http(&[], &[]),
            ..Case::default()
        },
        Case {
            name: "serving unset on a terminating endpoint follows ready (false): it drains but is no fallback",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![east().with_conditions("198.18.0.1", conditions(Some(false), None, Some(true))).build()],
            want: http(&[], &[("east", "198.18.0.1", 8080)]),
            ..Case::default()
        },
        Case {
            name: "ready and terminating at once counts as ready",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![east().with_conditions("198.18.0.1", conditions(Some(true), Some(true), Some(true))).build()],
            want: http(&[("east", "198.18.0.1", 8080, Ready)], &[]),
            ..Case::default()
        },
        Case {
            name: "an endpoint ready in one slice and terminating in another is a ready backend, not draining",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                east().ready("198.18.0.1").build(),
                slice("demo", "web", "east")
                    .named("web-east-2")
                    .port("http", None, 8080)
                    .terminating("198.18.0.1")
                    .build(),
            ],
            want: http(&[("east", "198.18.0.1", 8080, Ready)], &[]),
            ..Case::default()
        },
        Case {
            name: "unusable endpoint addresses are left out with a warning, the import stays",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![{
                let mut s = east().ready("198.18.0.300").ready("fd00::1").ready("198.18.0.1").object();
                s.endpoints.get_or_insert_default().push(k8s_openapi::api::discovery::v1::Endpoint::default());
                std::sync::Arc::new(s.into())
            }],
            want: http(&[("east", "198.18.0.1", 8080, Ready)], &[]),
            warnings: vec![
                "EndpointSlice demo/web-east endpoints[0].addresses[0]: \"198.18.0.300\" is not an IPv4 address",
                "EndpointSlice demo/web-east endpoints[1].addresses[0]: \"fd00::1\" is not an IPv4 address",
                "EndpointSlice demo/web-east endpoints[3].addresses: empty",
            ],
            ..Case::default()
        },
    ]);
}

fn local_config(locality: Locality) -> Config {
    Config { cluster_id: "east".into(), locality, ..Config::default() }
}

fn annotated(value: &str) -> ServiceImport {
    web().port("http", None, 80).annotation(k8s::LOCALITY_ANNOTATION, value).build()
}

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn locality() {
    let both_ready = || vec![east().ready("198.18.0.1").build(), west().ready("198.18.0.2").build()];
    let all = || http(&[("east", "198.18.0.1", 8080, Ready), ("west", "198.18.0.2", 9080, Ready)], &[]);
    let only_east = || http(&[("east", "198.18.0.1", 8080, Ready)], &[]);
    let only_west = || http(&[("west", "198.18.0.2", 9080, Ready)], &[]);
    // The ready endpoints the preference passes over keep their established
    // connections: they drain, still ready.
    let passed_over = |mut want: Vec<(ServicePortKey, DesiredServicePort)>, cluster: &str, ip: &str, port: u16| {
        want[0].1.draining.push(DesiredBackend {
            cluster: cluster.into(),
            ip: ip.parse().expect("test backend IP"),
            port,
            state: Ready,
        });
        want
    };
    let east_over_west = || passed_over(only_east(), "west", "198.18.0.2", 9080);
    let west_over_east = || passed_over(only_west(), "east", "198.18.0.1", 8080);
    run(vec![
        Case {
            name: "none: every selected cluster",
            imports: vec![annotated("none")],
            slices: both_ready(),
            want: all(),
            ..Case::default()
        },
        Case {
            name: "local: this cluster's ready endpoints",
            imports: vec![annotated("local")],
            slices: both_ready(),
            want: east_over_west(),
            ..Case::default()
        },
        Case {
            name: "local fails over to the others when no local endpoint is ready",
            imports: vec![annotated("local")],
            slices: vec![east().not_ready("198.18.0.1").build(), west().ready("198.18.0.2").build()],
            want: only_west(),
            ..Case::default()
        },
        Case {
            name: "local: a terminating local endpoint does not stop the failover, and drains",
            imports: vec![annotated("local")],
            slices: vec![east().terminating("198.18.0.1").build(), west().ready("198.18.0.2").build()],
            want: http(&[("west", "198.18.0.2", 9080, Ready)], &[("east", "198.18.0.1", 8080)]),
            ..Case::default()
        },
        Case {
            name: "local: with no ready endpoint anywhere, the terminating fallback spans every cluster",
            imports: vec![annotated("local")],
            slices: vec![east().terminating("198.18.0.1").build(), west().terminating("198.18.0.2").build()],
            want: http(&[("east", "198.18.0.1", 8080, Terminating), ("west", "198.18.0.2", 9080, Terminating)], &[]),
            ..Case::default()
        },
        Case {
            name: "remote: the other clusters' ready endpoints",
            imports: vec![annotated("remote")],
            slices: both_ready(),
            want: west_over_east(),
            ..Case::default()
        },
        Case {
            name: "remote falls back to the local endpoints when no remote one is ready",
            imports: vec![annotated("remote")],
            slices: vec![east().ready("198.18.0.1").build(), west().not_ready("198.18.0.2").build()],
            want: only_east(),
            ..Case::default()
        },
        Case {
            name: "the agent default applies without the annotation",
            imports: vec![web().port("http", None, 80).build()],
            slices: both_ready(),
            config: Some(local_config(Locality::Local)),
            want: east_over_west(),
            ..Case::default()
        },
        Case {
            name: "the annotation overrides the agent default",
            imports: vec![annotated("none")],
            slices: both_ready(),
            config: Some(local_config(Locality::Remote)),
            want: all(),
            ..Case::default()
        },
        Case {
            name: "an unknown value is a warning and the default applies",
            imports: vec![annotated("Local")],
            slices: both_ready(),
            config: Some(local_config(Locality::Remote)),
            want: west_over_east(),
            warnings: vec![
                "ServiceImport demo/web metadata.annotations[mcs-ebpf.dev/locality]: unknown value \"Local\" (none, \
                 local and remote are known); using the default \"remote\"",
            ],
            ..Case::default()
        },
        Case {
            name: "local without a cluster id has no local endpoints: every cluster",
            imports: vec![annotated("local")],
            slices: both_ready(),
            config: Some(Config { cluster_id: String::new(), ..Config::default() }),
            want: all(),
            ..Case::default()
        },
        Case {
            name: "locality applies after the cap: an excluded local cluster is not preferred",
            imports: vec![annotated("local").renamed("web")],
            slices: both_ready(),
            config: Some(Config { cluster_id: "west".into(), max_exporting_clusters: 1, ..Config::default() }),
            want: only_east(),
            excluded: vec![("demo", "web", "west")],
            ..Case::default()
        },
    ]);
}
