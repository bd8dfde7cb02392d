//! The map types of `mcs-common`, as compiled for the host, must have exactly
//! the layout the eBPF object's BTF describes: same size, same field names,
//! same offsets. `bpftool btf dump` reads the BTF; nothing here trusts
//! `mcs-common` to describe itself.
use std::{collections::BTreeMap, mem::offset_of, process::Command};

use mcs_common::{
    AffinityKey, AffinityValue, Backend, ClusterName, CtKey, CtValue, DatapathConfig, FragKey, FragValue, RateKey,
    RateValue, ServiceKey, ServiceStats, ServiceValue, SockRevKey, SockRevValue, event::Event,
};

/// A struct's size in bytes and its fields as (name, bit offset).
type Layout = (usize, Vec<(String, usize)>);

/// Struct name → layout, from `bpftool btf dump ... format raw`.
fn btf_structs() -> BTreeMap<String, Layout> {
    let object = std::env::temp_dir().join(format!("mcs-test-btf-{}.o", std::process::id()));
    std::fs::write(&object, mcs_agent::ebpf::OBJECT).expect("write the embedded object");
    let out = Command::new("bpftool").args(["btf", "dump", "file"]).arg(&object).args(["format", "raw"]).output();
    let _ = std::fs::remove_file(&object);
    let out = out.expect("run bpftool (installed by `cargo xtask setup`)");
    assert!(out.status.success(), "bpftool failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let mut structs = BTreeMap::new();
    let mut current: Option<(String, Layout)> = None;
    for line in text.lines() {
        if let Some(rest) = line.split_once("] STRUCT '").map(|(_, r)| r) {
            if let Some((name, layout)) = current.take() {
                structs.insert(name, layout);
            }
            let (name, rest) = rest.split_once('\'').expect("quoted struct name");
            let size = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("size="))
                .and_then(|s| s.parse().ok())
                .expect("struct size");
            current = Some((name.to_owned(), (size, Vec::new())));
        } else if line.starts_with('\t') {
            if let Some((_, (_, fields))) = current.as_mut() {
                let field = line.trim().split('\'').nth(1).expect("quoted field").to_owned();
                let bits = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("bits_offset="))
                    .and_then(|s| s.parse().ok())
                    .expect("bits_offset");
                fields.push((field, bits));
            }
        } else if let Some((name, layout)) = current.take() {
            structs.insert(name, layout);
        }
    }
    if let Some((name, layout)) = current.take() {
        structs.insert(name, layout);
    }
    structs
}

macro_rules! layout {
    ($ty:ty, [$($field:ident),+ $(,)?]) => {
        (
            stringify!($ty),
            size_of::<$ty>(),
            vec![$((stringify!($field).to_owned(), offset_of!($ty, $field) * 8)),+],
        )
    };
}

#[test]
fn shared_map_types_match_the_object_btf() {
    let btf = btf_structs();
    let expected = [
        layout!(ServiceKey, [addr, port, proto, pad]),
        layout!(ServiceValue, [service_id, table_size, table_start, affinity_timeout, flags, pad, pad2]),
        layout!(Backend, [addr, port, proto, flags, cluster_id, service_id]),
        layout!(CtKey, [saddr, daddr, sport, dport, proto, dir, pad]),
        layout!(
            CtValue,
            [
                nat_saddr,
                nat_daddr,
                nat_sport,
                nat_dport,
                backend_id,
                service_id,
                own_flags,
                peer_flags,
                client_ifindex,
                created_ns,
                last_seen_ns
            ]
        ),
        layout!(FragKey, [saddr, daddr, id, proto, pad]),
        layout!(FragValue, [sport, dport]),
        layout!(AffinityKey, [client, service_id, kind]),
        layout!(SockRevKey, [cookie, addr, port, pad]),
        layout!(SockRevValue, [addr, port, pad]),
        layout!(RateKey, [ifindex, kind]),
        layout!(RateValue, [credit_ns, last_ns]),
        layout!(AffinityValue, [backend_id, pad, last_seen_ns]),
        layout!(ClusterName, [name]),
        layout!(ServiceStats, [packets, bytes, new_flows, rejected, socket_translated, socket_refused]),
        layout!(
            Event,
            [
                kind,
                reason,
                proto,
                direction,
                ifindex,
                saddr,
                daddr,
                sport,
                dport,
                backend_addr,
                backend_port,
                pad,
                service_id,
                backend_id,
                pad2,
                time_ns
            ]
        ),
        layout!(
            DatapathConfig,
            [
                tcp_syn_ns,
                tcp_established_ns,
                tcp_closing_ns,
                udp_ns,
                hairpin_addr,
                maglev_table_size,
                conntrack_max,
                affinity_max,
                conntrack_max_non_tcp,
                nat_port_min,
                nat_port_max,
                layout_version,
                socket_flags,
                host_netns_cookie,
                guard_flags,
                reject_rate,
                reject_burst,
                pickup_rate,
                pickup_burst,
                pad
            ]
        ),
    ];
    for (name, size, fields) in expected {
        let (btf_size, btf_fields) = btf.get(name).unwrap_or_else(|| panic!("{name} is not in the object's BTF"));
        assert_eq!(*btf_size, size, "{name}: BTF size vs host size");
        assert_eq!(btf_fields, &fields, "{name}: BTF fields (name, bit offset) vs host");
    }
}
