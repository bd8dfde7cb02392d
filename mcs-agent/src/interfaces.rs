//! Which interfaces carry the datapath: `--interfaces` names and glob
//! patterns, kept attached as interfaces come and go.
//!
//! A `NETLINK_ROUTE` socket subscribed to `RTMGRP_LINK` wakes the agent on
//! every link change; the agent then lists the interfaces of its network
//! namespace (`if_nameindex`, which, unlike `/sys/class/net`, always answers
//! for the caller's namespace), attaches to new matching ones (and to ones
//! recreated with a new index), and forgets the ones that are gone: their
//! link pins are removed, since a link whose interface was deleted is defunct.
//! A periodic rescan backs up the events (a full socket buffer drops them).
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CStr,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use globset::{Glob, GlobMatcher};
use tokio::io::unix::AsyncFd;
use tracing::{debug, error, info, warn};

use crate::ebpf::{self, AttachMode, XdpAttach};

/// What an [`Interfaces`] attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The tc programs (`--interfaces`, pod-facing), in this mode.
    Tc(AttachMode),
    /// The XDP gateway (`--xdp-interfaces`, uplinks).
    Xdp,
}

/// One `--interfaces` entry: a name, or a glob with `*`, `?`, `[...]`
/// (ranges `a-z`, negation with a leading `!` or `^`) and `{a,b}`, matched
/// by `globset` against the whole name.
#[derive(Clone, Debug)]
pub struct Pattern {
    glob: GlobMatcher,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

impl Pattern {
    /// Parses one pattern.
    ///
    /// # Errors
    /// When it is empty or not a valid glob (an unclosed `[`, say).
    pub fn new(text: &str) -> Result<Self> {
        if text.is_empty() {
            bail!("an empty interface name or pattern");
        }
        let glob = Glob::new(text).with_context(|| format!("interface pattern {text:?}"))?;
        Ok(Self { glob: glob.compile_matcher() })
    }

    /// Whether this is a plain name (no glob characters).
    #[must_use]
    pub fn is_literal(&self) -> bool {
        !self.as_str().contains(['*', '?', '[', '{'])
    }

    /// Whether `name` matches.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        self.glob.is_match(name)
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.glob.glob().glob()
    }
}

/// Parses every `--interfaces` entry.
///
/// # Errors
/// When one is invalid, or there are none.
pub fn parse_patterns(entries: &[String]) -> Result<Vec<Pattern>> {
    let patterns = parse_patterns_or_none(entries)?;
    if patterns.is_empty() {
        bail!("--interfaces names no interface");
    }
    Ok(patterns)
}

/// Parses every entry of a list that may be empty (`--xdp-interfaces`, and
/// `--interfaces` on a pure gateway node).
///
/// # Errors
/// When one is invalid.
pub fn parse_patterns_or_none(entries: &[String]) -> Result<Vec<Pattern>> {
    entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()).map(Pattern::new).collect()
}

/// The interfaces of the caller's network namespace: (index, name).
///
/// # Errors
/// When the kernel refuses.
pub fn list_interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: plain libc call; a null result is an error.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut entry = head;
    // Bounded by the array's terminating entry (index 0, null name).
    loop {
        // SAFETY: `entry` points into the array if_nameindex returned, which
        // ends with an all-zero entry that we stop at.
        let item = unsafe { &*entry };
        if item.if_index == 0 || item.if_name.is_null() {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { CStr::from_ptr(item.if_name) }.to_string_lossy().into_owned();
        out.push((item.if_index, name));
        // SAFETY: the terminating entry has not been reached, so the next one exists.
        entry = unsafe { entry.add(1) };
    }
    // SAFETY: `head` came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(head) };
    Ok(out)
}

/// A `NETLINK_ROUTE` socket subscribed to link events.
struct LinkEvents {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl LinkEvents {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = u16::try_from(libc::AF_NETLINK).expect("AF_NETLINK fits u16");
        addr.nl_groups = u32::try_from(libc::RTMGRP_LINK).expect("RTMGRP_LINK fits u32");
        let len = u32::try_from(size_of::<libc::sockaddr_nl>()).expect("sockaddr_nl size fits");
        // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd moves into the AsyncFd, which owns it from here
        // on: the descriptor stays open and the same until the AsyncFd drops.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Self { fd, buf: vec![0; 64 * 1024] })
    }

    /// Waits for link messages; returns once at least one `RTM_NEWLINK` or
    /// `RTM_DELLINK` arrived (or messages were lost), having drained the socket.
    async fn next(&mut self) -> io::Result<()> {
        // Bounded per wake-up: the socket is drained, then we return or wait.
        loop {
            let mut guard = self.fd.readable().await?;
            let mut relevant = false;
            for _ in 0..1024 {
                let buf = &mut self.buf;
                let result = guard.try_io(|fd| {
                    // SAFETY: `buf` is a writable buffer of its length.
                    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n.unsigned_abs()) }
                });
                match result {
                    Ok(Ok(n)) => relevant |= has_link_message(&self.buf[..n]),
                    // The kernel dropped messages: we cannot know what changed.
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => relevant = true,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => break,
                }
            }
            if relevant {
                return Ok(());
            }
        }
    }
}

/// Whether a netlink datagram holds an `RTM_NEWLINK` or `RTM_DELLINK` message.
fn has_link_message(mut data: &[u8]) -> bool {
    const HEADER: usize = size_of::<libc::nlmsghdr>();
    // Bounded: every step consumes at least one aligned header.
    while data.len() >= HEADER {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if kind == libc::RTM_NEWLINK || kind == libc::RTM_DELLINK {
            return true;
        }
        if len < HEADER {
            return false;
        }
        let aligned = (len + 3) & !3;
        if aligned >= data.len() {
            return false;
        }
        data = &data[aligned..];
    }
    false
}

/// The attached interfaces and the link-event socket.
pub struct Interfaces {
    patterns: Vec<Pattern>,
    pin_path: Option<PathBuf>,
    target: Target,
    /// Attached interfaces: name → index.
    attached: BTreeMap<String, u32>,
    /// How the XDP gateway runs on each attached interface (XDP only).
    xdp_modes: BTreeMap<String, XdpAttach>,
    /// Failed attachments already logged: (name, index).
    failed: BTreeSet<(String, u32)>,
    /// Plain names reported missing.
    missing: BTreeSet<String>,
    /// Whether a rescan has listed the interfaces (the first one also
    /// removes stale link pins).
    scanned: bool,
    events: Option<LinkEvents>,
}

impl Interfaces {
    /// Subscribes to link events (falling back to periodic rescans alone when
    /// that fails). The first [`Self::rescan`] removes the pins of interfaces
    /// that no longer exist.
    #[must_use]
    pub fn new(patterns: Vec<Pattern>, pin_path: Option<PathBuf>, target: Target) -> Self {
        let events = match LinkEvents::open() {
            Ok(events) => Some(events),
            Err(e) => {
                warn!(error = %e, "cannot subscribe to netlink link events; relying on periodic rescans");
                None
            }
        };
        Self {
            patterns,
            pin_path,
            target,
            attached: BTreeMap::new(),
            xdp_modes: BTreeMap::new(),
            failed: BTreeSet::new(),
            missing: BTreeSet::new(),
            scanned: false,
            events,
        }
    }

    /// Waits for a link event. Never returns when there is no netlink socket.
    pub async fn changed(&mut self) {
        match &mut self.events {
            Some(events) => {
                if let Err(e) = events.next().await {
                    warn!(error = %e, "netlink link events failed; relying on periodic rescans");
                    self.events = None;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// The attached interfaces.
    #[must_use]
    pub fn attached(&self) -> &BTreeMap<String, u32> {
        &self.attached
    }

    /// The XDP mode of each interface the gateway is attached to.
    #[must_use]
    pub fn xdp_modes(&self) -> &BTreeMap<String, XdpAttach> {
        &self.xdp_modes
    }

    /// Whether no pattern is given (nothing to attach).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Attaches to every matching interface not attached yet (or recreated),
    /// and forgets the ones that are gone. The first rescan also removes the
    /// link pins of interfaces deleted while no agent ran.
    pub fn rescan(&mut self, bpf: &mut Ebpf) {
        let present = match list_interfaces() {
            Ok(list) => list,
            Err(e) => {
                error!(error = %e, "cannot list interfaces");
                return;
            }
        };
        let present_names: BTreeMap<&str, u32> = present.iter().map(|(i, n)| (n.as_str(), *i)).collect();
        if !self.scanned {
            self.scanned = true;
            self.remove_stale_pins(&present_names);
        }
        for pattern in self.patterns.iter().filter(|p| p.is_literal()) {
            if present_names.contains_key(pattern.as_str()) {
                self.missing.remove(pattern.as_str());
            } else if self.missing.insert(pattern.as_str().to_owned()) {
                warn!(interface = pattern.as_str(), "interface not found; will attach when it appears");
            }
        }
        let gone: Vec<String> =
            self.attached.keys().filter(|name| !present_names.contains_key(name.as_str())).cloned().collect();
        for name in gone {
            self.attached.remove(&name);
            self.xdp_modes.remove(&name);
            self.remove_pins(&name);
            info!(interface = %name, "interface gone; forgotten");
        }
        self.failed.retain(|(name, index)| present_names.get(name.as_str()) == Some(index));
        for (index, name) in &present {
            if !self.patterns.iter().any(|p| p.matches(name)) || self.attached.get(name) == Some(index) {
                continue;
            }
            let attached = match self.target {
                Target::Tc(mode) => ebpf::attach(bpf, name, self.pin_path.as_deref(), mode),
                Target::Xdp => ebpf::attach_xdp(bpf, name, self.pin_path.as_deref()).map(|mode| {
                    self.xdp_modes.insert(name.clone(), mode);
                }),
            };
            match attached {
                Ok(()) => {
                    self.attached.insert(name.clone(), *index);
                    self.failed.remove(&(name.clone(), *index));
                }
                Err(e) => {
                    self.attached.remove(name);
                    if self.failed.insert((name.clone(), *index)) {
                        error!(interface = %name, error = %format!("{e:#}"), "attach failed; will retry");
                    } else {
                        debug!(interface = %name, error = %format!("{e:#}"), "attach failed again");
                    }
                }
            }
        }
    }

    /// The link pins this kind of attachment makes.
    const fn suffixes(&self) -> &'static [&'static str] {
        match self.target {
            Target::Tc(_) => &["ingress", "egress"],
            Target::Xdp => &["xdp"],
        }
    }

    fn remove_pins(&self, name: &str) {
        let Some(dir) = &self.pin_path else { return };
        for suffix in self.suffixes() {
            let pin = ebpf::link_pin_path(dir, name, suffix);
            match fs::remove_file(&pin) {
                Ok(()) => debug!(pin = %pin.display(), "removed the link pin of a deleted interface"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(pin = %pin.display(), error = %e, "cannot remove link pin"),
            }
        }
    }

    /// Removes link pins of interfaces not `present` (deleted while no agent
    /// ran); their links are defunct.
    fn remove_stale_pins(&self, present: &BTreeMap<&str, u32>) {
        let Some(dir) = &self.pin_path else { return };
        for name in pinned_interfaces(&dir.join("links"), self.suffixes()) {
            if !present.contains_key(name.as_str()) {
                info!(interface = %name, "removing the link pins of an interface that no longer exists");
                self.remove_pins(&name);
            }
        }
    }
}

/// Interfaces that have link pins with one of `suffixes` under `links`.
fn pinned_interfaces(links: &Path, suffixes: &[&str]) -> BTreeSet<String> {
    let Ok(entries) = fs::read_dir(links) else { return BTreeSet::new() };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.rsplit_once('_').is_some_and(|(_, suffix)| suffixes.contains(&suffix))
        })
        .filter_map(|e| ebpf::pinned_interface(&e.file_name().to_string_lossy()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Pattern::new(pattern).expect("valid pattern").matches(name)
    }

    #[test]
    fn glob_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("eth0", "eth0", true),
            ("eth0", "eth01", false),
            ("eth0", "eth", false),
            ("lxc*", "lxc", true),
            ("lxc*", "lxc12ab", true),
            ("lxc*", "lx", false),
            ("lxc*", "veth0", false),
            ("*", "anything", true),
            ("*0", "eth0", true),
            ("*0", "eth1", false),
            ("e*h*0", "eth0", true),
            ("e*h*0", "ehhh10", true),
            ("e*h*0", "ehhh1", false),
            ("veth?", "veth1", true),
            ("veth?", "veth", false),
            ("veth?", "veth12", false),
            ("pod[0-9]", "pod7", true),
            ("pod[0-9]", "poda", false),
            ("pod[!0-9]", "poda", true),
            ("pod[^0-9]", "pod5", false),
            ("pod[abc]x", "podbx", true),
            ("pod[abc]x", "poddx", false),
            ("pod[]]", "pod]", true),
            ("pod[!]]", "pod]", false),
            ("pod[a-]", "pod-", true),
            ("*.100", "eth0.100", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("**", "", true),
            ("?*", "", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(m(pattern, name), *want, "{pattern:?} vs {name:?}");
        }
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        assert!(Pattern::new("").is_err());
        assert!(Pattern::new("pod[0-9").is_err());
        assert!(parse_patterns(&[" ".into()]).is_err());
        let parsed = parse_patterns(&["lxc*".into(), " veth0 ".into()]).expect("valid");
        assert_eq!(parsed.iter().map(Pattern::as_str).collect::<Vec<_>>(), ["lxc*", "veth0"]);
        assert!(!parsed[0].is_literal());
        assert!(parsed[1].is_literal());
    }

    #[test]
    fn link_messages_are_recognised() {
        let message = |kind: u16, len: u32| {
            let mut m = vec![0_u8; 16];
            m[..4].copy_from_slice(&len.to_ne_bytes());
            m[4..6].copy_from_slice(&kind.to_ne_bytes());
            m
        };
        assert!(has_link_message(&message(libc::RTM_NEWLINK, 16)));
        assert!(has_link_message(&message(libc::RTM_DELLINK, 16)));
        assert!(!has_link_message(&message(libc::RTM_NEWADDR, 16)));
        let mut two = message(libc::RTM_NEWADDR, 16);
        two.extend(message(libc::RTM_DELLINK, 16));
        assert!(has_link_message(&two));
        assert!(!has_link_message(&message(libc::RTM_NEWADDR, 0)), "a zero length must not loop");
        assert!(!has_link_message(&[1, 2, 3]));
    }

    #[test]
    fn lists_the_loopback_interface() {
        let list = list_interfaces().expect("if_nameindex");
        assert!(list.iter().any(|(_, name)| name == "lo"), "{list:?}");
    }
}
