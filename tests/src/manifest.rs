//! Manifests for the integration tests, written as JSON files into a
//! directory the agent's file source reads. The objects come from the shared
//! test kit (`mcs_core::testkit`, re-exported here); this module only writes
//! them.
//!
//! Files are written atomically (a temporary name outside the agent's `*.json` pattern, then a
//! rename), so the agent never reads half a file.

use std::fs;
use std::path::Path;

pub use mcs_core::testkit::{
    EndpointConditions, ImportBuilder, NOT_READY, READY, SliceBuilder, TERMINATING, import, slice,
};
use serde::Serialize;

/// Writes `value` as `dir/name` atomically (written as `dir/.name.tmp`, then renamed).
///
/// # Panics
/// If the file cannot be written or renamed.
pub fn write(dir: &Path, name: &str, value: &impl Serialize) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let text = serde_json::to_string_pretty(value).expect("manifest serializes");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    let path = dir.join(name);
    fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), path.display()));
}

/// A temporary directory of manifests, removed on drop (also on panic). Hand its path to
/// [`crate::agent::AgentGuard`], which copies it; later changes go to the agent's own copy
/// (`AgentGuard::manifests`) with [`write`].
#[derive(Debug)]
pub struct ManifestDir {
    dir: tempfile::TempDir,
}

impl ManifestDir {
    /// Creates `<tmp>/<prefix>-source-<random>`.
    ///
    /// # Panics
    /// If it cannot be created.
    #[must_use]
    pub fn new(prefix: &str) -> ManifestDir {
        let dir = tempfile::Builder::new().prefix(&format!("{prefix}-source-")).tempdir();
        ManifestDir { dir: dir.unwrap_or_else(|e| panic!("create a manifest directory for {prefix}: {e}")) }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes one manifest (see [`write`]).
    pub fn write(&self, name: &str, value: &impl Serialize) {
        write(self.dir.path(), name, value);
    }
}
