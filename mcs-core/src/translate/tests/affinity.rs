//! Session affinity: `ClientIP` timeouts, their defaults and their bounds.
use super::*;

#[test]
fn session_affinity() {
    let east = || slice("demo", "web", "east").port("http", None, 8080).ready("198.18.0.1").build();
    let programmed = |timeout: Option<u32>| {
        let e = desired_port("demo", "web").port_name("http").ready(&[("east", "198.18.0.1", 8080)]).build();
        let e = match timeout {
            Some(t) => with_affinity(e, t),
            None => e,
        };
        vec![(port_key(VIP, 80, Protocol::Tcp), e)]
    };
    let case = |name, import: ServiceImport, timeout, warnings| Case {
        name,
        imports: vec![import],
        slices: vec![east()],
        want: programmed(timeout),
        warnings,
        ..Case::default()
    };
    run(vec![
        case(
            "ClientIP without a timeout uses 10800",
            web().port("http", None, 80).affinity("ClientIP", None).build(),
            Some(10_800),
            vec![],
        ),
        case(
            "ClientIP with a timeout",
            web().port("http", None, 80).affinity("ClientIP", Some(60)).build(),
            Some(60),
            vec![],
        ),
        case(
            "the largest timeout",
            web().port("http", None, 80).affinity("ClientIP", Some(86_400)).build(),
            Some(86_400),
            vec![],
        ),
        case(
            "timeout 0 falls back to 10800",
            web().port("http", None, 80).affinity("ClientIP", Some(0)).build(),
            Some(10_800),
            vec![
                "ServiceImport demo/web spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is outside 1..=86400; using 10800",
            ],
        ),
        case(
            "timeout above 86400 falls back to 10800",
            web().port("http", None, 80).affinity("ClientIP", Some(86_401)).build(),
            Some(10_800),
            vec!["timeoutSeconds: 86401 is outside"],
        ),
        case("None", web().port("http", None, 80).affinity("None", Some(60)).build(), None, vec![]),
        case("unset", web().port("http", None, 80).build(), None, vec![]),
        case(
            "an unknown value turns affinity off",
            web().port("http", None, 80).affinity("Sticky", None).build(),
            None,
            vec![r#"ServiceImport demo/web spec.sessionAffinity: unknown value "Sticky""#],
        ),
    ]);
}
