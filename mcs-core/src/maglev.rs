//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), built in
//! userspace, one lookup table per service port.
//!
//! Every backend gets a permutation of the table's slots from two hashes of
//! its identity (`cluster/ip:port`): `offset = h1 % M` and
//! `skip = h2 % (M - 1) + 1`; its j-th preference is `(offset + j * skip) % M`.
//! Backends then take turns, in a fixed order, claiming their next preferred
//! slot that is still free, until every slot is taken. With `M` prime every
//! permutation visits every slot, each backend ends with `⌊M/N⌋` or `⌈M/N⌉`
//! slots, and removing a backend moves few slots that were not its own.
//!
//! The hashes are `SipHash-2-4` (the `siphasher` crate) with fixed keys, so the
//! table depends on nothing but the backends' identities and `M`: every node,
//! and every agent version, builds the same table. A reference vector of the
//! `SipHash` paper and a pinned table layout guard that.
use std::hash::Hasher as _;

use siphasher::sip::SipHasher24;

/// SipHash-2-4 keys for the two hashes of a backend's identity. Arbitrary,
/// fixed forever: changing them reshuffles every table on upgrade.
const OFFSET_KEY: (u64, u64) = (0x6d63_732d_6562_7066, 0x6d61_676c_6576_3031);
const SKIP_KEY: (u64, u64) = (0x736b_6970_2d6d_6373, 0x6d61_676c_6576_3032);

/// SipHash-2-4 of `data` with key `(k0, k1)`.
#[must_use]
pub fn siphash24(k0: u64, k1: u64, data: &[u8]) -> u64 {
    SipHasher24::new_with_keys(k0, k1).hash(data)
}

/// A digest of a Maglev table's slots (backend ids), to tell whether a
/// live table holds what would be built or was written. SipHash-1-3 of the
/// slots' bytes in one pass (the table as it lies in memory, so only
/// digests made on one machine are compared, which is all the agent does):
/// the audit and the adoption of pinned maps digest every table, 200
/// million slots at the largest set measured, and word-by-word SipHash-2-4
/// took most of their time.
#[must_use]
pub fn digest_table(table: &[u32]) -> u64 {
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0x7461_626c_6573, 0x6469_6765_7374);
    hasher.write(zerocopy::IntoBytes::as_bytes(table));
    hasher.finish()
}

/// Whether `n` is prime (trial division; table sizes are small).
#[must_use]
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The table sizes a service port may get: for each step of the E6
/// preferred-number series (1, 1.5, 2.2, 3.3, 4.7, 6.8 per decade, about
/// ×1.47 a step) times 100 slots, the smallest prime at or above it, then the
/// largest size accepted. Fixed: every node sizes a port the same way.
pub const TABLE_SIZES: [u32; 20] = [
    101, 151, 223, 331, 479, 683, 1009, 1511, 2203, 3301, 4703, 6803, 10_007, 15_013, 22_003, 33_013, 47_017, 68_023,
    100_003, 131_071,
];

/// Slots per usable backend a table has at least (the paper's and
/// Cilium's M > 100·N), unless the largest size caps it.
pub const SLOTS_PER_BACKEND: u32 = 100;

/// The table size of a service port with `backends` usable backends: the
/// smallest size of [`TABLE_SIZES`] with at least [`SLOTS_PER_BACKEND`]
/// slots per backend, at most `max` (`--maglev-table-size`, a prime).
#[must_use]
pub fn table_size_for(backends: usize, max: u32) -> u32 {
    let wanted = u64::try_from(backends).unwrap_or(u64::MAX).saturating_mul(u64::from(SLOTS_PER_BACKEND));
    TABLE_SIZES.iter().copied().find(|size| u64::from(*size) >= wanted).map_or(max, |size| size.min(max))
}

/// Builds the Maglev table of `size` slots for backends named by
/// `identities` (in a fixed order; the caller passes them sorted). Each slot
/// holds an index into `identities`. Empty when there is no backend.
///
/// # Panics
/// When `size` is not a prime of at least 3 (the CLI checks it), or there
/// are more backends than slots.
#[must_use]
pub fn build(identities: &[impl AsRef<str>], size: u32) -> Vec<u32> {
    assert!(size >= 3 && is_prime(size), "Maglev table size {size} must be a prime of at least 3");
    if identities.is_empty() {
        return Vec::new();
    }
    assert!(identities.len() <= size as usize, "{} backends do not fit {size} slots", identities.len());
    let m = u64::from(size);
    // Each backend's permutation visits (offset + j * skip) mod size for j =
    // 0, 1, ...: kept as the slot it is at (below size) and its skip, and
    // advanced by one addition and at most one subtraction instead of a
    // division per step.
    let mut perms: Vec<(u32, u32)> = identities
        .iter()
        .map(|id| {
            let id = id.as_ref().as_bytes();
            let offset = siphash24(OFFSET_KEY.0, OFFSET_KEY.1, id) % m;
            let skip = siphash24(SKIP_KEY.0, SKIP_KEY.1, id) % (m - 1) + 1;
            let narrow = |v: u64| u32::try_from(v).expect("below a u32 table size");
            (narrow(offset), narrow(skip))
        })
        .collect();
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (i, (at, skip)) in perms.iter_mut().enumerate() {
            // Claim backend i's next preferred free slot. Its permutation
            // visits every slot, so a free one is found while any is left.
            let slot = loop {
                let candidate = *at as usize;
                // at + skip < 2 * size <= 2^33: u64, then back below size.
                let advanced = u64::from(*at) + u64::from(*skip);
                *at = u32::try_from(if advanced >= m { advanced - m } else { advanced }).unwrap_or(0);
                if table[candidate] == u32::MAX {
                    break candidate;
                }
            };
            table[slot] = u32::try_from(i).expect("fewer backends than slots, a u32");
            filled += 1;
            if filled == table.len() {
                break 'fill;
            }
        }
    }
    table
}

/// The identity a backend's permutation is derived from: `cluster/ip:port`.
#[must_use]
pub fn identity(cluster: &str, ip: std::net::Ipv4Addr, port: u16) -> String {
    format!("{cluster}/{ip}:{port}")
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use super::*;

    /// Table sizes measured (Cilium's list of primes).
    const SIZES: [u32; 7] = [251, 509, 1021, 2039, 4093, 8191, 16381];
    /// Backend counts measured.
    const BACKEND_COUNTS: [usize; 12] = [2, 3, 5, 7, 10, 16, 25, 32, 50, 64, 100, 200];

    fn backends(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let cluster = format!("c{}", i % 5);
                let ip = Ipv4Addr::new(
                    198,
                    18,
                    u8::try_from(i / 250 + 1).expect("few"),
                    u8::try_from(i % 250).expect("few"),
                );
                identity(&cluster, ip, 8080)
            })
            .collect()
    }

    /// Most-loaded backend's slots over its fair share (M / N).
    fn imbalance(table: &[u32], n: usize) -> f64 {
        let mut counts = vec![0usize; n];
        for b in table {
            counts[*b as usize] += 1;
        }
        let max = *counts.iter().max().expect("backends");
        #[expect(clippy::cast_precision_loss, reason = "table sizes are far below 2^52")]
        let ratio = max as f64 * n as f64 / table.len() as f64;
        ratio
    }

    /// Removes backend `removed` and returns the share of slots that did not
    /// belong to it but moved anyway.
    fn disruption(all: &[String], removed: usize, size: u32) -> f64 {
        let before = build(all, size);
        let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, s)| s.clone()).collect();
        let after = build(&rest, size);
        let mut others = 0usize;
        let mut moved = 0usize;
        for (old, new) in before.iter().zip(&after) {
            if *old as usize == removed {
                continue;
            }
            others += 1;
            if all[*old as usize] != rest[*new as usize] {
                moved += 1;
            }
        }
        #[expect(clippy::cast_precision_loss, reason = "table sizes are far below 2^52")]
        let share = moved as f64 / others as f64;
        share
    }

    #[test]
    fn siphash_matches_the_reference_vector() {
        // The SipHash paper's appendix: key 00..0f, message 00..0e.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
    }

    #[test]
    fn a_digest_tells_tables_apart() {
        let table: Vec<u32> = (0..10_007_u32).map(|i| i % 100).collect();
        assert_eq!(digest_table(&table), digest_table(&table.clone()));
        let mut moved = table.clone();
        moved.swap(0, 5_001);
        assert_ne!(digest_table(&table), digest_table(&moved), "two slots swapped");
        assert_ne!(digest_table(&table), digest_table(&table[..10_006]), "one slot fewer");
        assert_ne!(digest_table(&[]), digest_table(&[0]));
    }

    #[test]
    fn primes() {
        for p in SIZES.iter().chain(&[3, 65_521, 131_071]) {
            assert!(is_prime(*p), "{p}");
        }
        for n in [0, 1, 4, 1000, 16_383, 65_537 * 3] {
            assert!(!is_prime(n), "{n}");
        }
    }

    #[test]
    fn the_table_is_deterministic_and_uses_every_backend() {
        let ids = backends(7);
        let a = build(&ids, 251);
        assert_eq!(a, build(&ids, 251), "same input, same table");
        assert_eq!(a.len(), 251);
        for i in 0..7u32 {
            assert!(a.contains(&i), "backend {i} has no slot");
        }
        assert!(build(&[] as &[&str], 251).is_empty());
        // Pin the output: a change here reshuffles every node's tables on upgrade.
        assert_eq!(&build(&backends(3), 7), &[0, 1, 0, 1, 2, 0, 2], "the table layout changed");
    }

    /// The population of the Maglev paper, written as plainly as it reads:
    /// the j-th preference of a backend is (offset + j * skip) mod size.
    fn paper_build(identities: &[String], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let perms: Vec<(u64, u64)> = identities
            .iter()
            .map(|id| {
                let id = id.as_bytes();
                (siphash24(OFFSET_KEY.0, OFFSET_KEY.1, id) % m, siphash24(SKIP_KEY.0, SKIP_KEY.1, id) % (m - 1) + 1)
            })
            .collect();
        let mut next = vec![0u64; identities.len()];
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0;
        while filled < table.len() {
            for (i, (offset, skip)) in perms.iter().enumerate() {
                if filled == table.len() {
                    break;
                }
                loop {
                    let slot = usize::try_from((offset + next[i] * skip) % m).expect("a slot");
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = u32::try_from(i).expect("a backend index");
                        filled += 1;
                        break;
                    }
                }
            }
        }
        table
    }

    #[test]
    fn the_table_is_the_papers_population() {
        for size in [3, 7, 251, 1021, 10_007, 65_537] {
            for n in [1, 2, 3, 10, 100, 251] {
                if n > size as usize {
                    continue;
                }
                assert_eq!(build(&backends(n), size), paper_build(&backends(n), size), "{n} backends, {size} slots");
            }
        }
    }

    #[test]
    fn balance_most_loaded_backend_within_five_percent_at_the_default_size() {
        let size = mcs_common::limits::MAGLEV_TABLE_SIZE;
        let mut report = BTreeMap::new();
        for n in BACKEND_COUNTS {
            let worst = imbalance(&build(&backends(n), size), n);
            report.insert(n, worst);
            assert!(worst <= 1.05, "M={size} N={n}: most-loaded backend has {worst:.4}x its fair share");
        }
        eprintln!("maglev balance at M={size} (most-loaded / fair share): {report:.4?}");
    }

    #[test]
    fn disruption_removing_one_backend_moves_few_of_the_other_slots() {
        // Maglev's cascade grows with N at a fixed M: measured at M=16381,
        // at most 1% of the other slots move up to 25 backends, about 1.5%
        // at 100-200 (docs/datapath.md). Both bounds are checked.
        let size = mcs_common::limits::MAGLEV_TABLE_SIZE;
        let mut report = BTreeMap::new();
        for n in BACKEND_COUNTS {
            let all = backends(n);
            // Remove the first, a middle and the last backend: the worst counts.
            let worst = [0, n / 2, n - 1].iter().map(|r| disruption(&all, *r, size)).fold(0.0, f64::max);
            report.insert(n, worst * 100.0);
            let bound = if n <= 25 { 0.01 } else { 0.02 };
            assert!(worst <= bound, "M={size} N={n}: {:.3}% of the other slots moved", worst * 100.0);
        }
        eprintln!("maglev disruption at M={size} (% of the other slots moved, worst of 3 removals): {report:.3?}");
    }

    #[test]
    fn the_ladder_is_ascending_primes_and_sizes_every_count_with_100_slots_a_backend() {
        assert!(TABLE_SIZES.windows(2).all(|w| w[0] < w[1]), "{TABLE_SIZES:?}");
        for size in TABLE_SIZES {
            assert!(is_prime(size), "{size}");
        }
        assert_eq!(TABLE_SIZES.last(), Some(&mcs_common::limits::MAGLEV_TABLE_SIZE_MAX));
        for n in 1..=1310 {
            let size = table_size_for(n, mcs_common::limits::MAGLEV_TABLE_SIZE_MAX);
            assert!(size as usize >= 100 * n, "N={n}: {size}");
            let smaller = TABLE_SIZES.iter().rev().find(|s| **s < size);
            assert!(smaller.is_none_or(|s| (*s as usize) < 100 * n), "N={n}: {size} is not the smallest");
        }
        // The largest size caps it.
        assert_eq!(table_size_for(200, 16_381), 16_381);
        assert_eq!(table_size_for(100, 16_381), 10_007);
        assert_eq!(table_size_for(2, 16_381), 223);
        assert_eq!(table_size_for(2, 101), 101);
    }

    #[test]
    fn balance_and_disruption_on_the_ladder() {
        // Each count gets the ladder's size (at least 100 slots a backend):
        // the most-loaded backend has at most 1% over its share (measured
        // up to 0.93%), and a removal moves at most 5% of the other slots
        // (measured up to 3.74%, at N = 10; docs/datapath.md).
        let mut report = BTreeMap::new();
        for n in BACKEND_COUNTS {
            let size = table_size_for(n, mcs_common::limits::MAGLEV_TABLE_SIZE_MAX);
            let all = backends(n);
            let balance = imbalance(&build(&all, size), n);
            let moved = [0, n / 2, n - 1].iter().map(|r| disruption(&all, *r, size)).fold(0.0, f64::max);
            report.insert(n, (size, balance, moved));
        }
        eprintln!("maglev on the ladder (N: M, balance, share of the other slots moved): {report:.4?}");
        for (n, (size, balance, moved)) in report {
            assert!(balance <= 1.01, "N={n} M={size}: most-loaded backend has {balance:.4}x its fair share");
            assert!(moved <= 0.05, "N={n} M={size}: {:.3}% of the other slots moved", moved * 100.0);
        }
    }

    /// Not a check: the figures behind the choice of the default size
    /// (docs/datapath.md). Run with `--ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, printed for the documentation"]
    fn measure_every_size() {
        for size in SIZES {
            let mut balance = 0.0f64;
            let mut moved = 0.0f64;
            let mut worst_n = (0, 0);
            for n in BACKEND_COUNTS.into_iter().filter(|n| *n * 5 <= size as usize) {
                let all = backends(n);
                let b = imbalance(&build(&all, size), n);
                let d = [0, n / 2, n - 1].iter().map(|r| disruption(&all, *r, size)).fold(0.0, f64::max);
                if b > balance {
                    balance = b;
                    worst_n.0 = n;
                }
                if d > moved {
                    moved = d;
                    worst_n.1 = n;
                }
            }
            eprintln!(
                "M={size:>6}: worst balance {balance:.4} (N={}), worst disruption {:.3}% (N={}), {} bytes per table",
                worst_n.0,
                moved * 100.0,
                worst_n.1,
                size * 4
            );
        }
    }
}
