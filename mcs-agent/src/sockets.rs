//! Attaching the socket programs (`connect4`, `sendmsg4`, `recvmsg4`,
//! `getpeername4`) to a cgroup v2 directory, with pinned links.
//!
//! The links are pinned under `<pin dir>/links/sock_<program>`. A restarted
//! agent swaps its programs into the pinned links with `BPF_LINK_UPDATE`
//! (atomic: no `connect()` runs without a program), as the tc links do. A
//! pinned link attached to another cgroup than `--cgroup-path` asks for is
//! replaced: the new link is attached before the old pin goes, so no call is
//! missed (a call seen by both programs is translated once: the second sees
//! a backend's address, not a ClusterSetIP).
use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use mcs_common::program_names;
use tracing::{debug, info, warn};

use crate::ebpf;

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// The inode of the initial cgroup namespace (`PROC_CGROUP_INIT_INO`).
const INITIAL_CGROUP_NS_INODE: u64 = 0xEFFF_FFFB;

/// Where the socket programs would attach by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultCgroup {
    /// The root of the cgroup2 mount (`/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on a hybrid host), in the node's own cgroup
    /// namespace: every process of the node is below it.
    Root(PathBuf),
    /// A cgroup2 mount exists, but this process is in a cgroup namespace of
    /// its own (a container's): its root is the container's cgroup, and
    /// attaching there would translate only the agent's own sockets.
    Namespaced(PathBuf),
    /// No cgroup2 mount.
    Missing,
}

impl DefaultCgroup {
    /// Looks at `/proc/mounts` and this process's cgroup namespace.
    #[must_use]
    pub fn discover() -> Self {
        let Ok(mounts) = fs::read_to_string("/proc/mounts") else { return Self::Missing };
        let Some(root) = cgroup2_mount(&mounts) else { return Self::Missing };
        if in_initial_cgroup_namespace() { Self::Root(root) } else { Self::Namespaced(root) }
    }
}

/// The first cgroup2 mount point in `mounts` (the format of `/proc/mounts`).
#[must_use]
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
        (fs_type == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Whether this process is in the initial cgroup namespace (the node's).
#[must_use]
pub fn in_initial_cgroup_namespace() -> bool {
    fs::metadata("/proc/self/ns/cgroup").is_ok_and(|m| m.ino() == INITIAL_CGROUP_NS_INODE)
}

/// The id of the cgroup v2 directory `path` (its inode), after checking that
/// it is one.
///
/// # Errors
/// When `path` is not a directory of a cgroup2 file system.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    let kind = ebpf::fs_type(path).with_context(|| format!("--cgroup-path {}: cannot stat it", path.display()))?;
    if kind != CGROUP2_SUPER_MAGIC {
        bail!(
            "--cgroup-path {} is not a cgroup v2 directory (on a host with cgroup v1 controllers the v2 \
             hierarchy is often at /sys/fs/cgroup/unified); or turn socket load balancing off with --socket-lb=false",
            path.display()
        );
    }
    Ok(fs::metadata(path).with_context(|| format!("--cgroup-path {}", path.display()))?.ino())
}

/// Where the link of socket program `program` is pinned.
#[must_use]
pub fn link_pin_path(dir: &Path, program: &str) -> PathBuf {
    dir.join("links").join(format!("sock_{}", program.trim_start_matches("mcs_")))
}

/// Attaches the socket programs of `bpf` (loaded by [`ebpf::load`]) to the
/// cgroup at `cgroup`, pinning the links under `pin_dir`, or swapping the
/// programs into links pinned there before.
///
/// # Errors
/// When `cgroup` is not a cgroup v2 directory or the kernel refuses.
pub fn attach(bpf: &mut Ebpf, cgroup: &Path, pin_dir: &Path) -> Result<()> {
    let id = cgroup_id(cgroup)?;
    let dir = fs::File::open(cgroup).with_context(|| format!("opening --cgroup-path {}", cgroup.display()))?;
    for name in program_names::SOCKET {
        let program: &mut CgroupSockAddr = bpf
            .program_mut(name)
            .with_context(|| format!("program {name} is missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a cgroup sock_addr program"))?;
        let pin = link_pin_path(pin_dir, name);
        let prog_fd = program.fd()?.as_fd().as_raw_fd();
        match adopt(&pin, id, prog_fd) {
            Ok(true) => {
                debug!(program = name, pin = %pin.display(), "swapped program into pinned cgroup link");
                continue;
            }
            Ok(false) => {}
            Err(e) => warn!(program = name, pin = %pin.display(), error = %format!("{e:#}"), "replacing pinned link"),
        }
        let link_id = program
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
        let link: FdLink = program.take_link(link_id)?.try_into()?;
        // The new link is attached: the old one may go now.
        match fs::remove_file(&pin) {
            Ok(()) => info!(program = name, pin = %pin.display(), "detached the link of another cgroup"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", pin.display())),
        }
        drop(link.pin(&pin).with_context(|| format!("pinning link at {}", pin.display()))?);
    }
    info!(cgroup = %cgroup.display(), "socket programs attached");
    Ok(())
}

/// Swaps `prog_fd` into the link pinned at `pin` if it is attached to the
/// cgroup `cgroup_id`. `Ok(false)`: no pin, or a pin of another cgroup (to
/// be replaced).
fn adopt(pin: &Path, cgroup_id: u64, prog_fd: i32) -> Result<bool> {
    let link = match obj_get(pin) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", pin.display())),
    };
    let attached_to = link_cgroup_id(&link).with_context(|| format!("reading pinned link {}", pin.display()))?;
    if attached_to != cgroup_id {
        debug!(pin = %pin.display(), attached_to, cgroup_id, "pinned link belongs to another cgroup");
        return Ok(false);
    }
    link_update(&link, prog_fd).with_context(|| format!("updating pinned link {}", pin.display()))?;
    Ok(true)
}

/// Removes the socket programs' link pins under `pin_dir` (detaching them).
///
/// # Errors
/// When a pin exists but cannot be removed.
pub fn cleanup(pin_dir: &Path) -> Result<()> {
    for name in program_names::SOCKET {
        let pin = link_pin_path(pin_dir, name);
        match fs::remove_file(&pin) {
            Ok(()) => info!(pin = %pin.display(), "detached socket program"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", pin.display())),
        }
    }
    Ok(())
}

// The three `bpf(2)` commands aya 0.14 has no public API for: opening a
// pinned object as a raw fd, reading a cgroup link's cgroup id, and
// `BPF_LINK_UPDATE` of a cgroup link.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 27;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: `attr` is a zeroed, 128-byte `union bpf_attr` that outlives the
    // call; the kernel reads the size given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = [0u64; 16];
    // `pathname` (u64) at offset 0; `bpf_fd` and `file_flags` 0.
    attr[0] = c_path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bpf_link_info.cgroup.cgroup_id` of a cgroup link.
fn link_cgroup_id(link: &OwnedFd) -> io::Result<u64> {
    // struct bpf_link_info: type, id, prog_id (u32 each), then at offset 16
    // the union, whose `cgroup` member starts with the u64 cgroup_id.
    let mut info = [0u64; 8];
    let mut attr = [0u64; 16];
    let fd = u64::try_from(link.as_raw_fd()).map_err(io::Error::other)?;
    // `bpf_fd` (u32) and `info_len` (u32) share the first u64; `info` (u64) next.
    attr[0] = fd | ((size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // BPF_LINK_TYPE_CGROUP is 3.
    #[expect(clippy::cast_possible_truncation, reason = "the low half of the first word is the type")]
    let link_type = info[0] as u32;
    if link_type != 3 {
        return Err(io::Error::other(format!("a link of type {link_type}, not a cgroup link")));
    }
    Ok(info[2])
}

fn link_update(link: &OwnedFd, prog_fd: i32) -> io::Result<()> {
    let mut attr = [0u64; 16];
    let (link_fd, prog_fd) =
        (u64::try_from(link.as_raw_fd()).map_err(io::Error::other)?, u64::try_from(prog_fd).map_err(io::Error::other)?);
    // `link_fd` and `new_prog_fd` (u32 each), then `flags` and `old_prog_fd` 0.
    attr[0] = link_fd | (prog_fd << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let unified = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"), None);
    }

    #[test]
    fn socket_link_pins_are_not_taken_for_interfaces() {
        let dir = Path::new("/sys/fs/bpf/mcs");
        for name in program_names::SOCKET {
            let pin = link_pin_path(dir, name);
            let file = pin.file_name().and_then(|f| f.to_str()).expect("utf-8");
            assert!(file.starts_with("sock_") && !file.contains('.'), "{file}");
            assert_eq!(ebpf::pinned_interface(file), None, "{file} must not look like an interface's pin");
        }
    }
}
