//! The load-time settings (`MCS_CFG`, set by the agent with
//! `EbpfLoader::override_global`). `.rodata` is frozen at load, so the
//! verifier sees the values as constants and prunes what they switch off.
use mcs_common::DatapathConfig;

#[unsafe(no_mangle)]
static MCS_CFG: DatapathConfig = DatapathConfig::DEFAULT;

/// The settings the loader patched in.
#[inline(always)]
pub fn cfg() -> &'static DatapathConfig {
    // SAFETY: a volatile read of a pointer to a static: the compiler cannot
    // see through it, so it loads the fields the loader patched instead of
    // folding the defaults; the pointer itself is that of the static.
    unsafe { &*core::ptr::read_volatile(&&raw const MCS_CFG) }
}

/// The idle timeout of a flow in `state`, in ns.
#[inline(always)]
pub fn timeout_ns(state: u8) -> u64 {
    cfg().timeout_ns(state)
}

/// The address hairpinned flows are source-NATed to (NBO); 0 when off.
#[inline(always)]
pub fn hairpin_addr() -> u32 {
    // SAFETY: a volatile read of a field of a static (one load on the
    // non-service path, which reads nothing else of the settings).
    unsafe { core::ptr::read_volatile(&raw const MCS_CFG.hairpin_addr) }
}

/// `GUARD_F_*` (`DatapathConfig::guard_flags`).
#[inline(always)]
pub fn guard_flags() -> u32 {
    // SAFETY: a volatile read of a field of a static, as `hairpin_addr`.
    unsafe { core::ptr::read_volatile(&raw const MCS_CFG.guard_flags) }
}
