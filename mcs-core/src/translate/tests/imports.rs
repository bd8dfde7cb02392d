//! Import types, ips and families; invalid imports skipped naming the field; conflicting imports.
use super::*;

#[test]
fn types_and_ips() {
    let east = || slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let programmed = || {
        vec![(
            port_key(VIP, 80, Protocol::Tcp),
            desired_port("demo", "web").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
        )]
    };
    run(vec![
        Case {
            name: "headless imports are skipped",
            imports: vec![web().type_("Headless").port("http", None, 80).build()],
            slices: vec![east()],
            skipped: vec![("demo", "web", SkipReason::Headless, "headless")],
            ..Case::default()
        },
        Case {
            name: "an empty type means ClusterSetIP",
            imports: vec![web().type_("").port("http", None, 80).build()],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
        Case {
            name: "a ClusterSetIP import without ips is skipped",
            imports: vec![import("demo", "web").port("http", None, 80).build()],
            slices: vec![east()],
            skipped: vec![("demo", "web", SkipReason::NoIps, "spec.ips is empty")],
            ..Case::default()
        },
        Case {
            name: "dual-stack programs the IPv4 ClusterSetIP",
            imports: vec![
                import("demo", "web")
                    .ip("fd00::10")
                    .ip(VIP)
                    .family("IPv6")
                    .family("IPv4")
                    .port("http", None, 80)
                    .build(),
            ],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
        Case {
            name: "IPv6-only imports are skipped: the datapath is IPv4 only",
            imports: vec![import("demo", "web").ip("fd00::10").family("IPv6").port("http", None, 80).build()],
            slices: vec![east()],
            skipped: vec![(
                "demo",
                "web",
                SkipReason::Invalid,
                "spec.ips: only IPv6 ClusterSetIPs (fd00::10); IPv6 is not translated (the datapath is IPv4 only)",
            )],
            ..Case::default()
        },
        Case {
            name: "ipFamilies may be left out",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![east()],
            want: programmed(),
            ..Case::default()
        },
    ]);
}

#[test]
fn invalid_imports_are_skipped_naming_the_field() {
    // Each case also has a valid import, which must not be disturbed.
    let ok = || import("demo", "ok").ip(VIP2).port("http", None, 80).build();
    let ok_entry = || {
        (
            port_key(VIP2, 80, Protocol::Tcp),
            desired_port("demo", "ok").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
        )
    };
    let ok_slice = || slice("demo", "ok", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let cases: Vec<(&str, ServiceImport, &str)> = vec![
        (
            "unparsable ip",
            web().port("http", None, 80).build().with_ips(&["300.1.1.1"]),
            r#"spec.ips[0]: "300.1.1.1" is not an IP address"#,
        ),
        ("port 0", web().port("http", None, 0).build(), "spec.ports[0].port: 0 is outside 1..=65535"),
        (
            "port above 65535",
            web().port("http", None, 80).port("big", None, 70000).build(),
            "spec.ports[1].port: 70000 is outside 1..=65535",
        ),
        ("negative port", web().port("http", None, -1).build(), "spec.ports[0].port: -1 is outside 1..=65535"),
        (
            "SCTP",
            web().port("http", None, 80).port(Some("sctp"), Some("SCTP"), 80).build(),
            r#"spec.ports[1].protocol: unsupported protocol "SCTP" (TCP and UDP are translated)"#,
        ),
        (
            "lower-case protocol",
            web().port(Some("http"), Some("tcp"), 80).build(),
            r#"spec.ports[0].protocol: unsupported protocol "tcp""#,
        ),
        (
            "duplicate port name",
            web().port("http", None, 80).udp("http", 81).build(),
            r#"spec.ports[1].name: duplicate port name "http" (also spec.ports[0])"#,
        ),
        (
            "two unnamed ports",
            web().port(None, None, 80).port(Some(""), None, 81).build(),
            r#"spec.ports[1].name: duplicate port name """#,
        ),
        (
            "duplicate port and protocol",
            web().port("a", None, 80).port("b", None, 80).build(),
            "spec.ports[1]: TCP/80 is listed twice (also spec.ports[0])",
        ),
        (
            "three ips",
            web().ip("fd00::1").ip("198.19.0.9").port("http", None, 80).build(),
            "spec.ips: 3 addresses, at most 2",
        ),
        ("two IPv4 ips", web().ip("198.19.0.9").port("http", None, 80).build(), "spec.ips[1]: a second IPv4 address"),
        (
            "family disagrees",
            web().family("IPv6").port("http", None, 80).build(),
            r#"spec.ipFamilies[0]: IPv6 disagrees with spec.ips[0] "198.19.0.1""#,
        ),
        (
            "unknown family",
            web().family("IPv5").port("http", None, 80).build(),
            r#"spec.ipFamilies[0]: unknown family "IPv5""#,
        ),
        (
            "three families",
            web().family("IPv4").family("IPv6").family("IPv4").port("http", None, 80).build(),
            "spec.ipFamilies: 3 families",
        ),
        (
            "unknown type",
            web().type_("LoadBalancer").port("http", None, 80).build(),
            r#"spec.type: unsupported type "LoadBalancer""#,
        ),
        ("invalid ports beat missing ips", import("demo", "web").port("http", None, 0).build(), "spec.ports[0].port"),
    ];
    run(cases
        .into_iter()
        .map(|(name, bad, message)| Case {
            name,
            imports: vec![bad, ok()],
            slices: vec![ok_slice(), slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.2").build()],
            want: vec![ok_entry()],
            skipped: vec![("demo", "web", SkipReason::Invalid, message)],
            ..Case::default()
        })
        .collect());

    let nameless = ServiceImport {
        metadata: ObjectMeta { namespace: Some("demo".into()), ..ObjectMeta::default() },
        ..web().port("http", None, 80).build()
    };
    run(vec![Case {
        name: "missing name",
        imports: vec![nameless, ok()],
        slices: vec![ok_slice()],
        want: vec![ok_entry()],
        skipped: vec![("demo", "", SkipReason::Invalid, "metadata.name: missing")],
        ..Case::default()
    }]);
}

#[test]
fn conflicting_imports() {
    let a_slice = || slice("demo", "a", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let b_slice = || slice("demo", "b", "east").port("http", None, 8080).ready("198.18.0.2").build();
    run(vec![
        Case {
            name: "the later import in (namespace, name) order is skipped, naming the other",
            imports: vec![
                import("demo", "b").ip(VIP).port("x", None, 81).port("http", None, 80).build(),
                import("demo", "a").ip(VIP).port("http", None, 80).build(),
            ],
            slices: vec![a_slice(), b_slice()],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "a").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
            )],
            skipped: vec![(
                "demo",
                "b",
                SkipReason::Invalid,
                "spec.ports[1]: 198.19.0.1:80/TCP is already used by ServiceImport demo/a",
            )],
            ..Case::default()
        },
        Case {
            name: "namespace orders before name",
            imports: vec![
                import("prod", "a").ip(VIP).port("http", None, 80).build(),
                import("demo", "z").ip(VIP).port("http", None, 80).build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "z").port_name("http").ready(&[]).build(),
            )],
            skipped: vec![("prod", "a", SkipReason::Invalid, "already used by ServiceImport demo/z")],
            ..Case::default()
        },
        Case {
            name: "one ip with another port or protocol is no conflict",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", None, 80).build(),
                import("demo", "b").ip(VIP).udp("http", 80).port("alt", None, 81).build(),
            ],
            slices: vec![
                a_slice(),
                slice("demo", "b", "east").udp("http", 8080).port("alt", None, 8081).ready("198.18.0.2").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "a").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build(),
                ),
                (
                    port_key(VIP, 80, Protocol::Udp),
                    desired_port("demo", "b").port_name("http").ready(&[("east", "198.18.0.2", 8080)]).build(),
                ),
                (
                    port_key(VIP, 81, Protocol::Tcp),
                    desired_port("demo", "b").port_name("alt").ready(&[("east", "198.18.0.2", 8081)]).build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "a skipped import claims nothing",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", None, 80).port(Some("s"), Some("SCTP"), 9).build(),
                import("demo", "b").ip(VIP).port("http", None, 80).build(),
            ],
            slices: vec![a_slice(), b_slice()],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "b").port_name("http").ready(&[("east", "198.18.0.2", 8080)]).build(),
            )],
            skipped: vec![("demo", "a", SkipReason::Invalid, "spec.ports[1].protocol")],
            ..Case::default()
        },
        Case {
            name: "two imports with one namespace and name are both skipped",
            imports: vec![
                import("demo", "a").ip(VIP).port("http", None, 80).build(),
                import("demo", "a").ip(VIP2).port("http", None, 80).build(),
            ],
            slices: vec![a_slice()],
            skipped: vec![("demo", "a", SkipReason::Invalid, "2 ServiceImports have this namespace and name")],
            ..Case::default()
        },
    ]);
}
