//! Keying and port matching: one entry per (`ClusterSetIP`, port, protocol), target ports by name then protocol.
use super::*;

#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn ports_and_keys() {
    run(vec![
        Case {
            name: "one port, one cluster",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.2").ready("198.18.0.1").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[("east", "198.18.0.1", 8080), ("east", "198.18.0.2", 8080)])
                    .build(),
            )],
            ..Case::default()
        },
        Case {
            name: "http/80 and https/443 from three clusters with different target ports",
            imports: vec![web().port("http", None, 80).port("https", None, 443).build()],
            slices: vec![
                slice("demo", "web", "east")
                    .port("http", None, 8080)
                    .port("https", None, 8443)
                    .ready("198.18.1.1")
                    .build(),
                // Ports listed in the other order.
                slice("demo", "web", "west")
                    .port("https", None, 9443)
                    .port("http", None, 9080)
                    .ready("198.18.2.1")
                    .build(),
                slice("demo", "web", "north")
                    .port("http", None, 80)
                    .port("https", None, 443)
                    .ready("198.18.3.1")
                    .build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web")
                        .port_name("http")
                        .ready(&[
                            ("east", "198.18.1.1", 8080),
                            ("north", "198.18.3.1", 80),
                            ("west", "198.18.2.1", 9080),
                        ])
                        .build(),
                ),
                (
                    port_key(VIP, 443, Protocol::Tcp),
                    desired_port("demo", "web")
                        .port_name("https")
                        .ready(&[
                            ("east", "198.18.1.1", 8443),
                            ("north", "198.18.3.1", 443),
                            ("west", "198.18.2.1", 9443),
                        ])
                        .build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "TCP/42 and UDP/42 are two independent entries",
            imports: vec![web().port("tcp-port", None, 42).udp("udp-port", 42).build()],
            slices: vec![
                slice("demo", "web", "east")
                    .port("tcp-port", None, 4200)
                    .udp("udp-port", 4201)
                    .ready("198.18.0.1")
                    .build(),
                slice("demo", "web", "west").udp("udp-port", 4202).ready("198.18.0.2").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 42, Protocol::Tcp),
                    desired_port("demo", "web").port_name("tcp-port").ready(&[("east", "198.18.0.1", 4200)]).build(),
                ),
                (
                    port_key(VIP, 42, Protocol::Udp),
                    desired_port("demo", "web")
                        .port_name("udp-port")
                        .ready(&[("east", "198.18.0.1", 4201), ("west", "198.18.0.2", 4202)])
                        .build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "explicit TCP equals unset protocol, on both sides",
            imports: vec![web().port(Some("http"), Some("TCP"), 80).build()],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
                slice("demo", "web", "west").port(Some("http"), Some("TCP"), Some(9090)).ready("198.18.0.2").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 9090)])
                    .build(),
            )],
            ..Case::default()
        },
        Case {
            name: "a port of the same name but another protocol does not match",
            imports: vec![web().port("dns", None, 53).build()],
            slices: vec![slice("demo", "web", "east").udp("dns", 5353).ready("198.18.0.1").build()],
            want: vec![(
                port_key(VIP, 53, Protocol::Tcp),
                desired_port("demo", "web").port_name("dns").ready(&[]).build(),
            )],
            ..Case::default()
        },
        Case {
            name: "unset and empty port names match each other",
            imports: vec![
                web().port(None, None, 80).build(),
                import("demo", "api").ip(VIP2).port(Some(""), None, 80).build(),
            ],
            slices: vec![
                slice("demo", "web", "east").port(Some(""), None, Some(8080)).ready("198.18.0.1").build(),
                slice("demo", "api", "east").port(None, None, Some(8081)).ready("198.18.0.2").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web").ready(&[("east", "198.18.0.1", 8080)]).build(),
                ),
                (
                    port_key(VIP2, 80, Protocol::Tcp),
                    desired_port("demo", "api").ready(&[("east", "198.18.0.2", 8081)]).build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "a slice without the named port contributes nothing to that entry",
            imports: vec![web().port("http", None, 80).port("metrics", None, 9100).build()],
            slices: vec![
                slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build(),
                slice("demo", "web", "west")
                    .port("http", None, 8080)
                    .port("metrics", None, 9100)
                    .ready("198.18.0.2")
                    .build(),
                slice("demo", "web", "north").port("other", None, 80).ready("198.18.0.3").build(),
            ],
            want: vec![
                (
                    port_key(VIP, 80, Protocol::Tcp),
                    desired_port("demo", "web")
                        .port_name("http")
                        .ready(&[("east", "198.18.0.1", 8080), ("west", "198.18.0.2", 8080)])
                        .build(),
                ),
                (
                    port_key(VIP, 9100, Protocol::Tcp),
                    desired_port("demo", "web").port_name("metrics").ready(&[("west", "198.18.0.2", 9100)]).build(),
                ),
            ],
            ..Case::default()
        },
        Case {
            name: "slice ports without a number or out of range contribute nothing",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                slice("demo", "web", "east").port(Some("http"), None, None).ready("198.18.0.1").build(),
                slice("demo", "web", "west").port("http", None, 70000).ready("198.18.0.2").build(),
                slice("demo", "web", "north").port("http", None, 0).ready("198.18.0.3").build(),
                slice("demo", "web", "south").port("http", None, 8080).ready("198.18.0.4").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web").port_name("http").ready(&[("south", "198.18.0.4", 8080)]).build(),
            )],
            warnings: vec![
                "EndpointSlice demo/web-north ports[0].port: 0 is outside 1..=65535",
                "EndpointSlice demo/web-west ports[0].port: 70000 is outside 1..=65535",
            ],
            ..Case::default()
        },
        Case {
            name: "backends from several slices of one cluster are merged, deduplicated and sorted",
            imports: vec![web().port("http", None, 80).build()],
            slices: vec![
                slice("demo", "web", "east")
                    .named("web-east-1")
                    .port("http", None, 8080)
                    .ready("198.18.0.9")
                    .ready("198.18.0.1")
                    .build(),
                slice("demo", "web", "east")
                    .named("web-east-2")
                    .port("http", None, 8080)
                    .ready("198.18.0.1")
                    .ready("198.18.0.5")
                    .build(),
                // The same address with another target port is another backend.
                slice("demo", "web", "east").named("web-east-3").port("http", None, 8081).ready("198.18.0.1").build(),
                // The same address in another cluster is another backend.
                slice("demo", "web", "west").port("http", None, 8080).ready("198.18.0.1").build(),
            ],
            want: vec![(
                port_key(VIP, 80, Protocol::Tcp),
                desired_port("demo", "web")
                    .port_name("http")
                    .ready(&[
                        ("east", "198.18.0.1", 8080),
                        ("east", "198.18.0.1", 8081),
                        ("east", "198.18.0.5", 8080),
                        ("east", "198.18.0.9", 8080),
                        ("west", "198.18.0.1", 8080),
                    ])
                    .build(),
            )],
            ..Case::default()
        },
        Case {
            name: "an import without ports programs nothing",
            imports: vec![web().build()],
            slices: vec![slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build()],
            ..Case::default()
        },
    ]);
}
