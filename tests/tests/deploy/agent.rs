//! The `DaemonSet` and the `ClusterRole`: arguments the agent accepts, capabilities, and RBAC.
#![allow(clippy::wildcard_imports, reason = "the test crate's shared imports and helpers")]
use super::*;

/// Resolves `$(VAR)` references as the kubelet does (`$$` escapes a `$`);
/// a reference to a variable the container does not define is an error
/// (the kubelet would pass it through literally).
pub(super) fn expand(arg: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(') {
            let end = reference.find(')').ok_or_else(|| format!("unterminated $( in {arg:?}"))?;
            let var = &reference[..end];
            out.push_str(env.get(var).ok_or_else(|| format!("{arg:?} refers to undefined variable {var}"))?);
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The container's environment: literal values, `ConfigMap` keys (which must
/// exist), and downward-API fields as samples.
pub(super) fn container_env(container: &Container, pod_namespace: &str, parsed: &Parsed) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            value.clone()
        } else if let Some(from) = &var.value_from {
            if let Some(selector) = &from.config_map_key_ref {
                let (_, config_map) = parsed
                    .config_maps
                    .iter()
                    .find(|(_, cm)| name(&cm.metadata) == selector.name && namespace(&cm.metadata) == pod_namespace)
                    .unwrap_or_else(|| panic!("env {}: no ConfigMap {pod_namespace}/{}", var.name, selector.name));
                let data = config_map.data.as_ref();
                data.and_then(|d| d.get(&selector.key))
                    .unwrap_or_else(|| {
                        panic!("env {}: ConfigMap {} has no key {}", var.name, selector.name, selector.key)
                    })
                    .clone()
            } else if let Some(field) = &from.field_ref {
                format!("sample-{}", field.field_path.replace('.', "-"))
            } else {
                panic!("env {}: a valueFrom this test cannot resolve", var.name)
            }
        } else {
            String::new()
        };
        env.insert(var.name.clone(), value);
    }
    env
}

#[test]
fn expand_resolves_like_the_kubelet() {
    let env = BTreeMap::from([("A".to_owned(), "x".to_owned())]);
    assert_eq!(expand("--a=$(A)", &env).as_deref(), Ok("--a=x"));
    assert_eq!(expand("$$(A) $A", &env).as_deref(), Ok("$(A) $A"));
    assert!(expand("--b=$(B)", &env).is_err(), "an undefined variable is an error");
}

#[test]
fn daemonset_arguments_are_accepted_by_the_agent() {
    let parsed = parse_all(&deploy_dir().join("agent"));
    let (doc, daemon_set) = &parsed.daemon_sets[0];
    let at = doc.at();
    let pod_namespace = namespace(&daemon_set.metadata);
    let pod = daemon_set.spec.template.spec.as_ref().expect("pod spec");
    let container = &pod.containers[0];
    let env = container_env(container, pod_namespace, &parsed);
    let args: Vec<String> =
        container.args.iter().flatten().map(|a| expand(a, &env).unwrap_or_else(|e| panic!("{at}: {e}"))).collect();
    assert!(container.command.is_none(), "{at}: the image's entrypoint is the agent");

    // The parser is strict: an unknown flag is refused (so acceptance below means something).
    let mut wrong = args.clone();
    wrong.push("--no-such-flag".into());
    assert!(Cli::try_parse_from(std::iter::once("mcs-agent".to_owned()).chain(wrong)).is_err());

    let cli = Cli::try_parse_from(std::iter::once("mcs-agent".to_owned()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("{at}: mcs-agent refuses {args:?}:\n{e}"));
    let Command::Run(run) = cli.command else { panic!("{at}: the DaemonSet must run `mcs-agent run`") };
    assert_eq!(run.source_kind(), SourceKind::Kubernetes, "{at}");
    let config_map = &parsed.config_maps.iter().find(|(_, cm)| name(&cm.metadata) == "mcs-agent").expect("ConfigMap").1;
    let data = config_map.data.as_ref().expect("ConfigMap data");
    assert_eq!(run.translate.cluster_id, data["cluster-id"], "{at}: cluster id from the ConfigMap");
    assert!(!run.translate.cluster_id.is_empty(), "{at}: a cluster id is set");
    assert_eq!(run.translate.max_exporting_clusters, 5, "{at}: the exporter cap");
    assert!(!run.interfaces.is_empty() && run.interfaces.iter().all(|i| !i.is_empty()), "{at}: {:?}", run.interfaces);
    assert!(!run.interfaces.iter().any(|i| i == "eth0" || i == "*"), "{at}: never the uplink nor every interface");
    assert_eq!(run.pin_path, Path::new("/sys/fs/bpf/mcs"), "{at}");

    // The pin path is on the node's bpffs.
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| run.pin_path.starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("{at}: no volume mounted over {}", run.pin_path.display()));
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mounted volume exists");
    let host_path = volume.host_path.as_ref().unwrap_or_else(|| panic!("{at}: {} is not a hostPath", volume.name));
    assert_eq!((host_path.path.as_str(), mount.mount_path.as_str()), ("/sys/fs/bpf", "/sys/fs/bpf"), "{at}");
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"), "{at}");

    // Socket-level load balancing: on, at the node's cgroup v2 root, mounted read-only (the
    // container's own /sys/fs/cgroup would be its cgroup namespace's root, not the node's).
    let config = run.config().unwrap_or_else(|e| panic!("{at}: the arguments do not combine: {e}"));
    let mcs_agent::run::SocketLb::On { cgroup } = &config.socket_lb else {
        panic!("{at}: socket load balancing must be on: {:?}", config.socket_lb)
    };
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == cgroup.as_path())
        .unwrap_or_else(|| panic!("{at}: no volume mounted at --cgroup-path {}", cgroup.display()));
    assert_eq!(mount.read_only, Some(true), "{at}: the cgroup mount is read-only");
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mounted volume exists");
    let host_path = volume.host_path.as_ref().unwrap_or_else(|| panic!("{at}: {} is not a hostPath", volume.name));
    assert_eq!(host_path.path, "/sys/fs/cgroup", "{at}: the node's cgroup v2 root");

    // The monitor socket's directory is writable although the root filesystem is not.
    let socket = config.monitor_socket.as_ref().expect("a monitor socket by default");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| socket.starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("{at}: no volume mounted over {}", socket.display()));
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("the mounted volume exists");
    assert!(volume.empty_dir.is_some(), "{at}: {} is a pod-local emptyDir", volume.name);

    // Metrics, probes and scrape annotations agree on the port.
    let metrics_port: u16 = run.metrics_addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("metrics port");
    let named: BTreeMap<&str, i32> =
        container.ports.iter().flatten().filter_map(|p| Some((p.name.as_deref()?, p.container_port))).collect();
    for (probe_name, probe) in [("readiness", &container.readiness_probe), ("liveness", &container.liveness_probe)] {
        let http =
            probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{at}: {probe_name} probe"));
        let port = match http.port.clone() {
            IntOrString::Int(port) => port,
            IntOrString::String(port_name) => named[port_name.as_str()],
        };
        assert_eq!(port, i32::from(metrics_port), "{at}: {probe_name} probe port");
        let expected_path = if probe_name == "readiness" { "/readyz" } else { "/healthz" };
        assert_eq!(http.path.as_deref(), Some(expected_path), "{at}: {probe_name} probe path");
    }
    let annotations = daemon_set.spec.template.metadata.as_ref().and_then(|m| m.annotations.as_ref());
    let annotations = annotations.expect("pod annotations");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn daemonset_runs_on_every_node_with_only_the_capabilities_it_needs() {
    let parsed = parse_all(&deploy_dir().join("agent"));
    let (doc, daemon_set) = &parsed.daemon_sets[0];
    let at = doc.at();
    let spec = &daemon_set.spec;
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "{at}: the programs attach to the node's interfaces");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"), "{at}");
    assert!(pod.host_pid.is_none() && pod.host_ipc.is_none(), "{at}: no host PID or IPC namespace");
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none());
    assert!(tolerates_all, "{at}: tolerates every taint");
    assert!(pod.termination_grace_period_seconds.is_some(), "{at}: terminationGracePeriodSeconds");

    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{at}");
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)), "{at}");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)), "{at}: never two agents on one node");

    assert_eq!(pod.containers.len(), 1, "{at}");
    assert!(pod.init_containers.is_none(), "{at}: no (privileged) init container");
    let container = &pod.containers[0];
    let security = container.security_context.as_ref().expect("securityContext");
    assert_ne!(security.privileged, Some(true), "{at}: not privileged");
    assert_eq!(security.allow_privilege_escalation, Some(false), "{at}");
    assert_eq!(security.read_only_root_filesystem, Some(true), "{at}");
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]), "{at}: drop everything first");
    let added: BTreeSet<&str> = capabilities.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]), "{at}: added capabilities");
    assert!(container.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some_and(|l| l.contains_key("memory")));

    // A critical priority class is admitted by a quota of its namespace (GKE
    // refuses such pods elsewhere).
    let priority = pod.priority_class_name.as_deref().unwrap_or_default();
    if priority.starts_with("system-") {
        let admitted = parsed.resource_quotas.iter().any(|(_, quota)| {
            namespace(&quota.metadata) == namespace(&daemon_set.metadata)
                && quota.spec.as_ref().and_then(|s| s.scope_selector.as_ref()).is_some_and(|selector| {
                    selector.match_expressions.iter().flatten().any(|e| {
                        e.scope_name == "PriorityClass"
                            && e.operator == "In"
                            && e.values.iter().flatten().any(|v| v == priority)
                    })
                })
        });
        assert!(admitted, "{at}: no ResourceQuota admits priority class {priority}");
    }

    // The pod's service account is the one the ClusterRoleBinding names.
    let account = pod.service_account_name.as_deref().expect("serviceAccountName");
    let pod_namespace = namespace(&daemon_set.metadata);
    assert!(
        parsed
            .service_accounts
            .iter()
            .any(|(_, sa)| name(&sa.metadata) == account && namespace(&sa.metadata) == pod_namespace),
        "{at}: ServiceAccount {pod_namespace}/{account} is defined"
    );
    assert!(
        parsed.namespaces.iter().any(|(_, ns)| name(&ns.metadata) == pod_namespace),
        "{at}: its Namespace is defined"
    );
    let (_, binding) = &parsed.cluster_role_bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, name(&parsed.cluster_roles[0].1.metadata));
    let subjects: Vec<(&str, &str, Option<&str>)> =
        binding.subjects.iter().flatten().map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref())).collect();
    assert_eq!(subjects, [("ServiceAccount", account, Some(pod_namespace))], "binding subjects");
}

#[test]
fn cluster_role_only_reads_what_the_agent_reads() {
    let parsed = parse_all(&deploy_dir().join("agent"));
    assert_eq!(parsed.cluster_roles.len(), 1, "one ClusterRole");
    let (doc, role) = &parsed.cluster_roles[0];
    let at = doc.at();
    assert!(role.aggregation_rule.is_none(), "{at}: no aggregation");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "{at}: verbs of {rule:?}");
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none(), "{at}: {rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                assert!(granted.insert((group.as_str(), resource.as_str())), "{at}: {group}/{resource} granted twice");
            }
        }
    }
    let expected = BTreeSet::from([
        ("multicluster.x-k8s.io", "serviceimports"),
        ("net.gke.io", "serviceimports"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "endpoints"),
    ]);
    assert_eq!(granted, expected, "{at}: exactly the resources the agent reads");
}
