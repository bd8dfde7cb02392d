//! A directory of manifests as a source.
//!
//! A task checks the directory every poll interval: it lists the manifest
//! files and their metadata (device, inode, size, modification and change
//! times). Only files whose metadata changed (or that are new) are read and
//! parsed again; the objects of unchanged files are kept, moved (not copied)
//! into the new union in file-name order, so the result is exactly what
//! [`manifests::load_dir`] would read. A change is reported only when some
//! file changed, appeared or went away. The source is synced once the
//! directory has been read successfully.
//!
//! The union is shared with the sync as an `Arc`: a sync reads it without
//! copying it, and the next change takes it back (copying it only when a sync
//! is reading it at that moment).
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Result;
use tokio::{sync::watch, task::JoinHandle};
use tracing::error;

use super::{Problem, Snapshot};
use crate::{
    manifests::{self, LoadError},
    translate::{
        Inputs,
        incremental::{Changes, GroupIndex},
    },
};

/// What identifies one version of a file: it is read again when any of it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl From<&fs::Metadata> for Stamp {
    fn from(m: &fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// How many objects of each kind a file contributed to the union.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    imports: usize,
    slices: usize,
    gke_imports: usize,
    endpoints: usize,
}

impl From<&Inputs> for Counts {
    fn from(i: &Inputs) -> Self {
        Self {
            imports: i.imports.len(),
            slices: i.slices.len(),
            gke_imports: i.gke_imports.len(),
            endpoints: i.endpoints.len(),
        }
    }
}

/// What is known of one file: its version, its share of the union, its errors.
#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    counts: Counts,
    errors: Vec<LoadError>,
}

/// A file read again in this round.
struct Parsed {
    stamp: Stamp,
    inputs: Inputs,
    errors: Vec<LoadError>,
}

/// Files read again in a round, and files gone since the last one.
type Rescan = (BTreeMap<PathBuf, Parsed>, Vec<PathBuf>);

/// The per-file cache of a manifest directory.
#[derive(Debug, Default)]
pub(crate) struct DirCache {
    /// Files in name order, as in the union.
    files: BTreeMap<PathBuf, Cached>,
    /// Errors of the listing itself (an entry whose metadata is unreadable).
    listing_errors: Vec<LoadError>,
    /// Whether the directory has been read once.
    loaded: bool,
    /// Files parsed since the start (for tests and diagnostics).
    parses: u64,
    /// Rounds whose files were replaced in place (for tests).
    in_place: u64,
}

/// Moves the next `n` items of `from` into `to`, or drops them after
/// showing each to `dropped`.
fn carry<T>(from: &mut impl Iterator<Item = T>, n: usize, to: Option<&mut Vec<T>>, mut dropped: impl FnMut(&T)) {
    if let Some(to) = to {
        to.extend(from.by_ref().take(n));
    } else {
        from.by_ref().take(n).for_each(|item| dropped(&item));
    }
}

impl DirCache {
    /// Lists `dir` and reads the files that changed. Returns `None` when
    /// nothing changed, else what to apply to the union.
    fn scan(&mut self, dir: &Path) -> Result<Option<Rescan>> {
        let (files, listing_errors) = manifests::manifest_files(dir)?;
        let mut parsed = BTreeMap::new();
        for (path, meta) in &files {
            let stamp = Stamp::from(meta);
            if self.files.get(path).is_some_and(|c| c.stamp == stamp) {
                continue;
            }
            let (inputs, errors) = manifests::load_file(path);
            self.parses += 1;
            parsed.insert(path.clone(), Parsed { stamp, inputs, errors });
        }
        let present: std::collections::BTreeSet<&PathBuf> = files.iter().map(|(p, _)| p).collect();
        let removed: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(p)).cloned().collect();
        let unchanged = self.loaded && parsed.is_empty() && removed.is_empty() && listing_errors == self.listing_errors;
        self.listing_errors = listing_errors;
        Ok((!unchanged).then_some((parsed, removed)))
    }

    /// Brings `inputs` (the union as of the last round) and its group
    /// `index` up to date with the files read in this round. Records in
    /// `changes` the groups of every object dropped or added.
    ///
    /// When no file appeared or went away and every file read again holds
    /// as many objects of each kind as before, every other object keeps its
    /// position: the changed files' objects are replaced where they are, and
    /// the index with them. Otherwise the union is rebuilt, moving the
    /// unchanged files' objects, and indexed again.
    fn apply(
        &mut self,
        (inputs, index): (&mut Inputs, &mut Option<GroupIndex>),
        parsed: BTreeMap<PathBuf, Parsed>,
        removed: &[PathBuf],
        changes: &mut Changes,
    ) {
        let same_shape = self.loaded
            && index.is_some()
            && removed.is_empty()
            && parsed.iter().all(|(path, p)| self.files.get(path).is_some_and(|c| c.counts == Counts::from(&p.inputs)));
        if let (true, Some(index)) = (same_shape, index.as_mut()) {
            self.replace_in_place(inputs, index, parsed, changes);
            self.in_place += 1;
        } else {
            self.rebuild(inputs, parsed, removed, changes);
            *index = Some(GroupIndex::of(inputs));
        }
        self.loaded = true;
    }

    /// [`DirCache::apply`] for files whose objects keep their positions.
    fn replace_in_place(
        &mut self,
        inputs: &mut Inputs,
        index: &mut GroupIndex,
        mut parsed: BTreeMap<PathBuf, Parsed>,
        changes: &mut Changes,
    ) {
        let mut at = Counts::default();
        for (path, cached) in &mut self.files {
            let c = cached.counts;
            if let Some(Parsed { stamp, inputs: fresh, errors }) = parsed.remove(path) {
                for (i, import) in fresh.imports.into_iter().enumerate() {
                    let position = at.imports + i;
                    let old = std::mem::replace(&mut inputs.imports[position], import);
                    index.remove_import(&old, position);
                    index.insert_import(&inputs.imports[position], position);
                    changes.import(&old);
                    changes.import(&inputs.imports[position]);
                }
                for (i, slice) in fresh.slices.into_iter().enumerate() {
                    let position = at.slices + i;
                    let old = std::mem::replace(&mut inputs.slices[position], slice);
                    index.remove_slice(&old, position);
                    index.insert_slice(&inputs.slices[position], position);
                    changes.slice(&old);
                    changes.slice(&inputs.slices[position]);
                }
                for (i, import) in fresh.gke_imports.into_iter().enumerate() {
                    let old = std::mem::replace(&mut inputs.gke_imports[at.gke_imports + i], import);
                    changes.gke_import(&old);
                    changes.gke_import(&inputs.gke_imports[at.gke_imports + i]);
                }
                for (i, endpoints) in fresh.endpoints.into_iter().enumerate() {
                    let old = std::mem::replace(&mut inputs.endpoints[at.endpoints + i], endpoints);
                    changes.endpoints(&old);
                    changes.endpoints(&inputs.endpoints[at.endpoints + i]);
                }
                cached.stamp = stamp;
                cached.errors = errors;
            }
            at.imports += c.imports;
            at.slices += c.slices;
            at.gke_imports += c.gke_imports;
            at.endpoints += c.endpoints;
        }
    }

    /// [`DirCache::apply`] for any change: the union rebuilt in file order.
    fn rebuild(
        &mut self,
        inputs: &mut Inputs,
        mut parsed: BTreeMap<PathBuf, Parsed>,
        removed: &[PathBuf],
        changes: &mut Changes,
    ) {
        let old = std::mem::take(inputs);
        let mut imports = old.imports.into_iter();
        let mut slices = old.slices.into_iter();
        let mut gke_imports = old.gke_imports.into_iter();
        let mut endpoints = old.endpoints.into_iter();
        let mut paths: Vec<PathBuf> = self.files.keys().chain(parsed.keys()).cloned().collect();
        paths.sort();
        paths.dedup();
        for path in paths {
            let fresh = parsed.remove(&path);
            if let Some(cached) = self.files.get(&path) {
                // The file's objects as of the last round: kept when the file
                // is unchanged, dropped when it changed or went away.
                let keep = fresh.is_none() && !removed.contains(&path);
                let c = cached.counts;
                carry(&mut imports, c.imports, keep.then_some(&mut inputs.imports), |i| changes.import(i));
                carry(&mut slices, c.slices, keep.then_some(&mut inputs.slices), |s| changes.slice(s));
                carry(&mut gke_imports, c.gke_imports, keep.then_some(&mut inputs.gke_imports), |i| {
                    changes.gke_import(i);
                });
                carry(&mut endpoints, c.endpoints, keep.then_some(&mut inputs.endpoints), |e| changes.endpoints(e));
            }
            if let Some(Parsed { stamp, inputs: file_inputs, errors }) = fresh {
                let counts = Counts::from(&file_inputs);
                changes.inputs(&file_inputs);
                inputs.extend(file_inputs);
                self.files.insert(path, Cached { stamp, counts, errors });
            } else if removed.contains(&path) {
                self.files.remove(&path);
            }
        }
    }

    /// Every problem, in file order: the listing's, then each file's.
    fn problems(&self) -> Vec<Problem> {
        self.listing_errors
            .iter()
            .chain(self.files.values().flat_map(|c| &c.errors))
            .cloned()
            .map(Problem::from)
            .collect()
    }

    /// Reads what changed in `dir` into `snapshot` (as the polling task does,
    /// without the lock). Returns whether anything changed.
    ///
    /// # Errors
    /// When `dir` cannot be listed; `snapshot` is then left as it was.
    #[cfg(test)]
    pub(crate) fn refresh(&mut self, dir: &Path, snapshot: &mut Snapshot, changes: &mut Changes) -> Result<bool> {
        let Some((parsed, removed)) = self.scan(dir)? else { return Ok(false) };
        self.apply((&mut snapshot.inputs, &mut snapshot.index), parsed, &removed, changes);
        snapshot.problems = self.problems();
        Ok(true)
    }
}

/// What the polling task last read, and what changed since a sync last took it.
struct Latest {
    snapshot: Option<Arc<Snapshot>>,
    changes: Changes,
}

/// The file source: a polling task and what it last read.
pub struct FileSource {
    latest: Arc<Mutex<Latest>>,
    changes: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl FileSource {
    /// Starts polling `dir` every `interval`.
    ///
    /// # Errors
    /// When `dir` cannot be listed now (a directory that goes away later
    /// is reported and waited for).
    pub fn start(dir: PathBuf, interval: Duration) -> Result<Self> {
        manifests::manifest_files(&dir)?;
        let latest = Arc::new(Mutex::new(Latest { snapshot: None, changes: Changes::everything() }));
        let (tx, changes) = watch::channel(0_u64);
        let task = tokio::spawn(poll(dir, interval, Arc::clone(&latest), tx));
        Ok(Self { latest, changes, task })
    }

    /// Waits until the directory's content changed.
    ///
    /// # Errors
    /// When the polling task has stopped.
    pub async fn changed(&mut self) -> Result<()> {
        super::wait_changed(&mut self.changes).await
    }

    /// Whether the directory has been read once.
    #[must_use]
    pub fn synced(&self) -> bool {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner).snapshot.is_some()
    }

    /// What the directory held when it was last read (shared, not copied),
    /// and the groups that changed since the last call (everything before
    /// the first).
    #[must_use]
    pub fn take(&self) -> (Arc<Snapshot>, Changes) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        (latest.snapshot.clone().unwrap_or_default(), std::mem::take(&mut latest.changes))
    }
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn poll(dir: PathBuf, interval: Duration, latest: Arc<Mutex<Latest>>, tx: watch::Sender<u64>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cache = DirCache::default();
    let mut last_error: Option<String> = None;
    loop {
        ticker.tick().await;
        let scanned = match cache.scan(&dir) {
            Ok(scanned) => {
                last_error = None;
                scanned
            }
            Err(e) => {
                // Keep what was read before; say so once per distinct error.
                let message = format!("{e:#}");
                if last_error.as_ref() != Some(&message) {
                    error!(error = %message, "cannot read manifests; keeping what was read before");
                    last_error = Some(message);
                }
                None
            }
        };
        let Some((parsed, removed)) = scanned else { continue };
        {
            // Reading and parsing happened above; only the moves happen under
            // the lock. The union is copied only if a sync holds it now.
            let mut guard = latest.lock().unwrap_or_else(PoisonError::into_inner);
            let latest = &mut *guard;
            let mut snapshot = latest.snapshot.take().unwrap_or_default();
            let union = Arc::make_mut(&mut snapshot);
            cache.apply((&mut union.inputs, &mut union.index), parsed, &removed, &mut latest.changes);
            union.problems = cache.problems();
            latest.snapshot = Some(snapshot);
        }
        tx.send_modify(|generation| *generation += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_a_change_only_when_the_directory_changes() {
        let temp = tempfile::tempdir().expect("create a temporary directory");
        let dir = temp.path().to_owned();
        let mut source = FileSource::start(dir.clone(), Duration::from_millis(10)).expect("the directory exists");
        tokio::time::timeout(Duration::from_secs(5), source.changed()).await.expect("first read").expect("running");
        assert!(source.synced());
        let (snapshot, changes) = source.take();
        assert!(snapshot.inputs.imports.is_empty());
        assert!(changes.is_everything(), "the first read is a change of everything");

        // Nothing changes: no notification within a few polls.
        let quiet = tokio::time::timeout(Duration::from_millis(100), source.changed()).await;
        assert!(quiet.is_err(), "a change was reported for an unchanged directory");

        fs::write(
            dir.join("import.yaml"),
            "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\nmetadata: {name: web, namespace: demo}\n\
             spec: {type: ClusterSetIP, ips: [198.19.0.1], ports: [{port: 80}]}\n",
        )
        .expect("write manifest");
        fs::write(dir.join("broken.yaml"), "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\nspec: 7\n")
            .expect("write manifest");
        tokio::time::timeout(Duration::from_secs(5), source.changed()).await.expect("change seen").expect("running");
        let (snapshot, changes) = source.take();
        assert_eq!(snapshot.inputs.imports.len(), 1, "{snapshot:?}");
        assert!(changes.contains("demo", "web") && changes.len() == 1, "{changes:?}");
        assert!(source.take().1.is_empty(), "taken: nothing changed since");
        assert_eq!(snapshot.problems.len(), 1, "{snapshot:?}");
        assert!(snapshot.problems[0].to_string().contains("broken.yaml"), "{:?}", snapshot.problems);
    }

    const IMPORT: &str = "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\n\
                          metadata: {name: NAME, namespace: demo}\n\
                          spec: {type: ClusterSetIP, ips: [198.19.0.1], ports: [{port: 80}]}\n";

    fn import(name: &str) -> String {
        IMPORT.replace("NAME", name)
    }

    fn names(snapshot: &Snapshot) -> Vec<String> {
        snapshot.inputs.imports.iter().map(|i| i.metadata.name.clone().unwrap_or_default()).collect()
    }

    #[test]
    fn only_changed_files_are_parsed_again_and_the_union_matches_load_dir() {
        let temp = tempfile::tempdir().expect("create a temporary directory");
        let dir = temp.path().to_owned();
        fs::write(dir.join("a.yaml"), import("a")).expect("write a");
        fs::write(dir.join("b.yaml"), format!("{}---\n{}", import("b1"), import("b2"))).expect("write b");
        fs::write(dir.join("c.yaml"), import("c")).expect("write c");
        fs::write(dir.join("d.yaml"), "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\nspec: 7\n")
            .expect("write d");
        let same_as_load_dir = |snapshot: &Snapshot| {
            let (inputs, errors) = manifests::load_dir(&dir).expect("load_dir");
            let expected: Vec<String> =
                inputs.imports.iter().map(|i| i.metadata.name.clone().unwrap_or_default()).collect();
            assert_eq!(names(snapshot), expected);
            let problems: Vec<Problem> = errors.into_iter().map(Problem::from).collect();
            assert_eq!(snapshot.problems, problems);
            assert!(
                snapshot.index.as_ref().is_some_and(|index| index.matches(&snapshot.inputs)),
                "the group index does not fit the union: {:?}",
                snapshot.index
            );
        };

        // The groups recorded by one read, taken.
        let mut changes = Changes::default();
        let taken = |changes: &mut Changes| {
            let got = std::mem::take(changes);
            ["a", "b1", "b2", "b3", "bb", "c", "c2", "d"]
                .into_iter()
                .filter(|n| got.contains("demo", n))
                .collect::<Vec<_>>()
        };
        let mut cache = DirCache::default();
        let mut snapshot = Snapshot::default();
        assert!(cache.refresh(&dir, &mut snapshot, &mut changes).expect("first read"), "the first read is a change");
        assert_eq!(taken(&mut changes), ["a", "b1", "b2", "c"]);
        assert_eq!(cache.parses, 4);
        assert_eq!(names(&snapshot), ["a", "b1", "b2", "c"]);
        assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
        assert!(snapshot.problems[0].to_string().contains("d.yaml document 1"), "{:?}", snapshot.problems);
        same_as_load_dir(&snapshot);

        assert!(!cache.refresh(&dir, &mut snapshot, &mut changes).expect("second read"), "nothing changed");
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(cache.parses, 4, "an unchanged file is not parsed again");

        // Rewritten in place (another size), and replaced by a rename (another inode).
        fs::write(dir.join("b.yaml"), import("b3")).expect("rewrite b");
        fs::write(dir.join("c.tmp"), import("c2")).expect("write aside");
        fs::rename(dir.join("c.tmp"), dir.join("c.yaml")).expect("rename into place");
        assert!(cache.refresh(&dir, &mut snapshot, &mut changes).expect("third read"));
        assert_eq!(cache.parses, 6, "only the two changed files are parsed again");
        assert_eq!(taken(&mut changes), ["b1", "b2", "b3", "c", "c2"], "what went and what came");
        assert_eq!(names(&snapshot), ["a", "b3", "c2"]);
        same_as_load_dir(&snapshot);

        // A file goes away, one appears, the broken one is fixed.
        fs::remove_file(dir.join("a.yaml")).expect("remove a");
        fs::write(dir.join("bb.yaml"), import("bb")).expect("write bb");
        fs::write(dir.join("d.yaml"), import("d")).expect("fix d");
        assert!(cache.refresh(&dir, &mut snapshot, &mut changes).expect("fourth read"));
        assert_eq!(cache.parses, 8);
        assert_eq!(taken(&mut changes), ["a", "bb", "d"], "the broken d had no object");
        assert_eq!(names(&snapshot), ["b3", "bb", "c2", "d"]);
        assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
        same_as_load_dir(&snapshot);
    }

    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                         metadata: {name: NAME, namespace: demo, labels: \
                         {multicluster.kubernetes.io/service-name: SERVICE, \
                         multicluster.kubernetes.io/source-cluster: east}}\n\
                         addressType: IPv4\nports: [{port: 8080}]\n\
                         endpoints: [{addresses: [ADDRESS]}]\n";

    fn slice(name: &str, service: &str, address: &str) -> String {
        SLICE.replace("NAME", name).replace("SERVICE", service).replace("ADDRESS", address)
    }

    #[test]
    fn a_rewrite_that_keeps_the_shape_replaces_objects_in_place() {
        let temp = tempfile::tempdir().expect("create a temporary directory");
        let dir = temp.path().to_owned();
        let write = |file: &str, text: String| fs::write(dir.join(file), text).expect("write manifest");
        write("a.yaml", format!("{}---\n{}", import("a"), slice("a-east", "a", "198.18.0.1")));
        write("b.yaml", format!("{}---\n{}", import("b"), slice("b-east", "b", "198.18.0.2")));
        write("c.yaml", format!("{}---\n{}", import("c"), slice("c-east", "c", "198.18.0.3")));
        let check = |snapshot: &Snapshot, step: &str| {
            let (inputs, errors) = manifests::load_dir(&dir).expect("load_dir");
            assert!(errors.is_empty(), "{step}: {errors:?}");
            let debug = |i: &Inputs| (format!("{:?}", i.imports), format!("{:?}", i.slices));
            assert_eq!(debug(&snapshot.inputs), debug(&inputs), "{step}: the union differs from load_dir's");
            assert!(
                snapshot.index.as_ref().is_some_and(|index| index.matches(&snapshot.inputs)),
                "{step}: the group index does not fit the union: {:?}",
                snapshot.index
            );
        };
        let mut cache = DirCache::default();
        let mut snapshot = Snapshot::default();
        let mut changes = Changes::default();
        assert!(cache.refresh(&dir, &mut snapshot, &mut changes).expect("first read"));
        check(&snapshot, "first read");
        assert_eq!(cache.in_place, 0, "the first read builds the union");

        // b's slice moves to another service (same counts): in place, and
        // the index follows the label.
        changes = Changes::default();
        write("b.yaml", format!("{}---\n{}", import("b"), slice("b-east", "c", "198.18.0.4")));
        assert!(cache.refresh(&dir, &mut snapshot, &mut changes).expect("second read"));
        assert_eq!(cache.in_place, 1, "same counts: replaced in place");
        check(&snapshot, "b's slice relabelled");
        assert!(changes.contains("demo", "b") && changes.contains("demo", "c") && !changes.contains("demo", "a"));

        // b gains a slice: another shape, so the union is rebuilt and indexed again.
        write(
            "b.yaml",
            format!(
                "{}---\n{}---\n{}",
                import("b"),
                slice("b-east", "b", "198.18.0.4"),
                slice("b-west", "b", "198.18.0.5")
            ),
        );
        assert!(cache.refresh(&dir, &mut snapshot, &mut changes).expect("third read"));
        assert_eq!(cache.in_place, 1, "another shape: rebuilt");
        check(&snapshot, "b gained a slice");

        // Two files rewritten at once, both with their shape: in place.
        write("a.yaml", format!("{}---\n{}", import("a"), slice("a-east", "a", "198.18.0.6")));
        write("c.yaml", format!("{}---\n{}", import("c2"), slice("c-east", "c2", "198.18.0.7")));
        assert!(cache.refresh(&dir, &mut snapshot, &mut changes).expect("fourth read"));
        assert_eq!(cache.in_place, 2);
        check(&snapshot, "a and c rewritten");
    }
}
