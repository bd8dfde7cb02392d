//! The narrow interface through which [`crate::sync`] reads and writes the
//! maps, and the errors it reports. The kernel implementation (over aya) is
//! `mcs_agent::dataplane::AyaDataplane`; the in-memory one for tests is
//! [`crate::fake::FakeDataplane`].
use std::io;

use mcs_common::{Backend, ServiceKey, ServiceValue};

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The map has no room for another entry (the kernel's `E2BIG`).
    #[error("{what}: {map} is full")]
    Full {
        /// The map.
        map: &'static str,
        /// The operation, naming the entry.
        what: String,
    },
    /// An entry or a map that must exist does not.
    #[error("{what}: {map} has no such entry")]
    Missing {
        /// The map (or the object that should hold it).
        map: &'static str,
        /// The operation, naming the entry.
        what: String,
    },
    /// The kernel refused the operation.
    #[error("{what}: {error}")]
    Kernel {
        /// The operation, naming the map and the entry.
        what: String,
        /// What the kernel said.
        error: io::Error,
    },
    /// A value that cannot be stored (a name too long, a table too large) or
    /// a map that is not what it should be (another type or layout, a name
    /// that is not UTF-8).
    #[error("{what}: {reason}")]
    Invalid {
        /// The operation or the object.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The result of a map operation.
pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// The maps the sync reads and writes, as it sees them.
pub trait Dataplane {
    /// Every entry of the services map.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    /// Every entry of the backends map.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn backends(&self) -> Result<Vec<(u32, Backend)>>;
    /// Every cluster name by id.
    ///
    /// # Errors
    /// When the map cannot be read or holds a name that is not UTF-8.
    fn clusters(&self) -> Result<Vec<(u32, String)>>;
    /// Slots of the flat Maglev array (`MCS_MAGLEV`): every table's slots together.
    fn maglev_slots(&self) -> u32;
    /// `len` slots of the flat Maglev array from slot `start`.
    ///
    /// # Errors
    /// When the slots are beyond the array or cannot be read.
    fn slots(&self, start: u32, len: u32) -> Result<Vec<u32>>;
    /// The [`crate::maglev::digest_table`] of `len` slots from `start`, read
    /// without copying them.
    ///
    /// # Errors
    /// As [`Dataplane::slots`].
    fn slots_digest(&self, start: u32, len: u32) -> Result<u64> {
        Ok(crate::maglev::digest_table(&self.slots(start, len)?))
    }
    /// Ids below this may hold a backend (the backends array's length).
    fn backend_id_limit(&self) -> u32 {
        u32::MAX
    }
    /// The backends with ids in `ids`, by id.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn backends_in(&self, ids: std::ops::Range<u32>) -> Result<Vec<(u32, Backend)>> {
        Ok(self.backends()?.into_iter().filter(|(id, _)| ids.contains(id)).collect())
    }
    /// The largest Maglev table size (`--maglev-table-size`); a port's table
    /// is sized from its backend count up to this.
    fn maglev_table_size(&self) -> u32;
    /// Makes the slots from `start` hold `table`, in place: each slot that
    /// differs is written on its own (a packet sees every slot either as it
    /// was or as it will be, never torn), in order; the others are left
    /// alone. Returns how many slots were written.
    ///
    /// # Errors
    /// When the slots are beyond the array.
    fn write_slots(&mut self, start: u32, table: &[u32]) -> Result<usize>;
    /// The Maglev table of the service port `service_id` (its entry's slots),
    /// if it has one; a look-up over the services map, for diagnostics and tests.
    ///
    /// # Errors
    /// When a map cannot be read.
    fn table(&self, service_id: u32) -> Result<Option<Vec<u32>>> {
        let Some((_, value)) = self
            .services()?
            .into_iter()
            .find(|(k, v)| !k.is_wildcard() && v.service_id == service_id && v.table_size != 0)
        else {
            return Ok(None);
        };
        self.slots(value.table_start, value.table_size).map(Some)
    }
    /// Creates or replaces a services entry.
    ///
    /// # Errors
    /// When the kernel refuses (for example, the map is full).
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<()>;
    /// Deletes a services entry; deleting a missing entry is not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_service(&mut self, key: &ServiceKey) -> Result<()>;
    /// Creates or replaces a backend.
    ///
    /// # Errors
    /// When the kernel refuses (for example, the map is full).
    fn put_backend(&mut self, id: u32, backend: Backend) -> Result<()>;
    /// Creates or replaces the backends `backends` (sorted by id), in
    /// order; one result per backend. A dataplane that can write many at
    /// once (one mapping for a run of ids) does.
    fn put_backends(&mut self, backends: &[(u32, Backend)]) -> Vec<Result<()>> {
        backends.iter().map(|(id, backend)| self.put_backend(*id, *backend)).collect()
    }
    /// Deletes a backend; deleting a missing one is not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_backend(&mut self, id: u32) -> Result<()>;
    /// Records the name of cluster `id`.
    ///
    /// # Errors
    /// When the name does not fit or the kernel refuses.
    fn put_cluster(&mut self, id: u32, name: &str) -> Result<()>;
    /// Deletes cluster `id`'s name; a missing one is not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_cluster(&mut self, id: u32) -> Result<()>;
    /// Creates (or zeroes) the counters of service port `service_id`.
    ///
    /// # Errors
    /// When the kernel refuses (for example, the map is full).
    fn reset_service_stats(&mut self, service_id: u32) -> Result<()>;
    /// Deletes the counters of `service_id`; missing ones are not an error.
    ///
    /// # Errors
    /// When the kernel refuses.
    fn delete_service_stats(&mut self, service_id: u32) -> Result<()>;
    /// Forgets every session-affinity entry of `service_id`, so an id
    /// handed out again starts clean.
    ///
    /// # Errors
    /// When the map cannot be read or written.
    fn forget_affinity(&mut self, service_id: u32) -> Result<()>;
}

/// The reason a cluster name cannot be stored in `MCS_CLUSTERS`.
#[must_use]
pub fn cluster_name_reason() -> String {
    format!("longer than {} bytes or holds a NUL", mcs_common::limits::CLUSTER_NAME_MAX)
}

/// The length of a Maglev table as the `u32` the maps use.
///
/// # Errors
/// [`DataplaneError::Invalid`] when the table has more than `u32::MAX` slots.
pub fn table_len(table: &[u32]) -> Result<u32> {
    u32::try_from(table.len())
        .map_err(|_| DataplaneError::Invalid { what: "a Maglev table".into(), reason: "too large".into() })
}
