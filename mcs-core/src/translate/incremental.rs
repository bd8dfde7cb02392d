//! Translation that redoes only what changed.
//!
//! Without GKE imports, an MCS import's translation reads nothing but its
//! *group*: the `ServiceImport`s with its namespace and name, and the MCS
//! `EndpointSlice`s labelled with that service name in that namespace. The
//! one rule that reaches across groups is the claim of a (`ClusterSetIP`,
//! port, protocol) key by the first import in name order. So while no two
//! groups want the same key, the whole translation is the union of every
//! group's own translation, and a change re-translates only the groups it
//! touched.
//!
//! [`Incremental`] keeps each group's share of the result. A source reports
//! the groups its changes touched ([`Changes`]); [`Incremental::update`]
//! takes the touched groups' shares out, translates those groups again with
//! [`translate`](super::translate)'s own code, and puts the new shares in. It
//! falls back to translating everything (and stays there until the next
//! rebuild succeeds) when the inputs hold GKE imports, whose derived
//! services link groups, or when two groups want the same key, whose owner
//! depends on both. `translate` stays the reference: the tests check that
//! every update gives exactly what it gives.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Endpoints;

use super::{Config, DesiredState, ExcludedCluster, Inputs, Parts, Report, ServicePortKey, Skipped, translate_parts};
use crate::k8s::{self, GkeServiceImport, ServiceImport, Slice};

/// The groups some changes touched: (namespace, name) pairs, or everything.
///
/// A group is named by an import's namespace and name; an `EndpointSlice`
/// belongs to the groups of its `multicluster.kubernetes.io/service-name`
/// and `kubernetes.io/service-name` labels, an `Endpoints` object to the
/// group of its own name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    all: bool,
    /// Names by namespace.
    groups: BTreeMap<String, BTreeSet<String>>,
}

impl Changes {
    /// Everything may have changed (a first read, a relist, a restart).
    #[must_use]
    pub fn everything() -> Self {
        Self { all: true, groups: BTreeMap::new() }
    }

    /// Whether nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.all && self.groups.is_empty()
    }

    /// Whether everything may have changed.
    #[must_use]
    pub const fn is_everything(&self) -> bool {
        self.all
    }

    /// How many groups were touched (0 when everything was).
    #[must_use]
    pub fn len(&self) -> usize {
        self.groups.values().map(BTreeSet::len).sum()
    }

    /// Whether the group (`namespace`, `name`) was touched.
    #[must_use]
    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.all || self.groups.get(namespace).is_some_and(|names| names.contains(name))
    }

    /// Records that the group (`namespace`, `name`) was touched.
    pub fn mark(&mut self, namespace: &str, name: &str) {
        if self.all {
            return;
        }
        if let Some(names) = self.groups.get_mut(namespace) {
            if !names.contains(name) {
                names.insert(name.to_owned());
            }
        } else {
            self.groups.insert(namespace.to_owned(), BTreeSet::from([name.to_owned()]));
        }
    }

    /// Records that `import` appeared, changed or went away.
    pub fn import(&mut self, import: &ServiceImport) {
        self.mark(k8s::namespace_of(&import.metadata), k8s::name_of(&import.metadata));
    }

    /// Records that `slice` (an `EndpointSlice`, as kept or as served)
    /// appeared, changed or went away.
    pub fn slice(&mut self, slice: &impl k8s::Object) {
        for label in [k8s::LABEL_SERVICE_NAME, k8s::LABEL_KUBERNETES_SERVICE_NAME] {
            if let Some(service) = slice.label(label) {
                self.mark(slice.namespace(), service);
            }
        }
    }

    /// Records that a GKE import appeared, changed or went away.
    pub fn gke_import(&mut self, import: &GkeServiceImport) {
        self.mark(k8s::namespace_of(&import.metadata), k8s::name_of(&import.metadata));
    }

    /// Records that an `Endpoints` object appeared, changed or went away.
    pub fn endpoints(&mut self, endpoints: &Endpoints) {
        self.mark(k8s::namespace_of(&endpoints.metadata), k8s::name_of(&endpoints.metadata));
    }

    /// Records every object of `inputs`.
    pub fn inputs(&mut self, inputs: &Inputs) {
        inputs.imports.iter().for_each(|i| self.import(i));
        inputs.slices.iter().for_each(|s| self.slice(&**s));
        inputs.gke_imports.iter().for_each(|i| self.gke_import(i));
        inputs.endpoints.iter().for_each(|e| self.endpoints(e));
    }

    /// Adds what `other` touched.
    pub fn merge(&mut self, other: Self) {
        if other.all {
            *self = Self::everything();
            return;
        }
        if self.all {
            return;
        }
        for (namespace, names) in other.groups {
            self.groups.entry(namespace).or_default().extend(names);
        }
    }

    fn each(&self) -> impl Iterator<Item = (&str, &str)> {
        self.groups.iter().flat_map(|(ns, names)| names.iter().map(move |n| (ns.as_str(), n.as_str())))
    }
}

/// A group: (namespace, name).
type Group = (String, String);

/// The group an `EndpointSlice` belongs to without GKE imports: its
/// namespace and its MCS service-name label, when that is not empty.
fn slice_group(slice: &Slice) -> Option<(&str, &str)> {
    let service = slice.labels.get(k8s::LABEL_SERVICE_NAME).filter(|s| !s.is_empty())?;
    Some((k8s::namespace_of(&slice.metadata), service))
}

/// The group of an MCS import.
fn import_group(import: &ServiceImport) -> (&str, &str) {
    (k8s::namespace_of(&import.metadata), k8s::name_of(&import.metadata))
}

/// Where each group's objects are in an [`Inputs`]: positions in its
/// `imports` and its `slices`. A source that keeps one up to date as its
/// objects change lets [`Incremental::update_with`] find a touched group's
/// objects without a pass over every object's labels.
///
/// The index is checked where it is used: a position past the end, or an
/// object that is not of the group the index files it under, makes the
/// update find the group's objects by the pass instead. A wrong index
/// therefore costs time, never a wrong translation; an object the index
/// misses altogether is not seen, which is why the sources' tests compare
/// their index with [`GroupIndex::of`].
#[derive(Clone, Debug, Default)]
pub struct GroupIndex {
    imports: HashMap<Group, Vec<usize>>,
    slices: HashMap<Group, Vec<usize>>,
}

/// Adds `at` under `group` (once).
fn file_under(map: &mut HashMap<Group, Vec<usize>>, group: (&str, &str), at: usize) {
    let positions = match map.get_mut(&(group.0.to_owned(), group.1.to_owned())) {
        Some(positions) => positions,
        None => map.entry((group.0.to_owned(), group.1.to_owned())).or_default(),
    };
    if !positions.contains(&at) {
        positions.push(at);
    }
}

/// Removes `at` from under `group`.
fn unfile(map: &mut HashMap<Group, Vec<usize>>, group: (&str, &str), at: usize) {
    let key = (group.0.to_owned(), group.1.to_owned());
    if let Some(positions) = map.get_mut(&key) {
        positions.retain(|p| *p != at);
        if positions.is_empty() {
            map.remove(&key);
        }
    }
}

impl GroupIndex {
    /// The index of `inputs`, from a pass over every object.
    #[must_use]
    pub fn of(inputs: &Inputs) -> Self {
        let mut index = Self::default();
        index.set_imports(&inputs.imports);
        for (at, slice) in inputs.slices.iter().enumerate() {
            index.insert_slice(slice, at);
        }
        index
    }

    /// Files every import of `imports` again (the slices are left as they are).
    pub fn set_imports(&mut self, imports: &[std::sync::Arc<ServiceImport>]) {
        self.imports.clear();
        for (at, import) in imports.iter().enumerate() {
            file_under(&mut self.imports, import_group(import), at);
        }
    }

    /// Records that `import` is at position `at`.
    pub fn insert_import(&mut self, import: &ServiceImport, at: usize) {
        file_under(&mut self.imports, import_group(import), at);
    }

    /// Records that `import` is no longer at position `at`.
    pub fn remove_import(&mut self, import: &ServiceImport, at: usize) {
        unfile(&mut self.imports, import_group(import), at);
    }

    /// Records that `slice` is at position `at`.
    pub fn insert_slice(&mut self, slice: &Slice, at: usize) {
        if let Some(group) = slice_group(slice) {
            file_under(&mut self.slices, group, at);
        }
    }

    /// Records that `slice` is no longer at position `at`.
    pub fn remove_slice(&mut self, slice: &Slice, at: usize) {
        if let Some(group) = slice_group(slice) {
            unfile(&mut self.slices, group, at);
        }
    }

    /// Whether this is the index of `inputs` (for tests of the sources).
    #[must_use]
    pub fn matches(&self, inputs: &Inputs) -> bool {
        let sorted = |map: &HashMap<Group, Vec<usize>>| -> BTreeMap<Group, Vec<usize>> {
            map.iter()
                .map(|(group, positions)| {
                    let mut positions = positions.clone();
                    positions.sort_unstable();
                    (group.clone(), positions)
                })
                .collect()
        };
        let fresh = Self::of(inputs);
        sorted(&self.imports) == sorted(&fresh.imports) && sorted(&self.slices) == sorted(&fresh.slices)
    }

    /// The objects of `group` in `inputs`, in their order there; `None`
    /// when the index does not fit `inputs` there.
    fn parts<'a>(&self, inputs: &'a Inputs, group: (&str, &str)) -> Option<Parts<'a>> {
        let key = (group.0.to_owned(), group.1.to_owned());
        let mut parts = Parts::default();
        let mut imports = self.imports.get(&key).cloned().unwrap_or_default();
        imports.sort_unstable();
        for at in imports {
            let import = inputs.imports.get(at).filter(|i| import_group(i) == group)?;
            parts.imports.push(import);
        }
        let mut slices = self.slices.get(&key).cloned().unwrap_or_default();
        slices.sort_unstable();
        for at in slices {
            let slice = inputs.slices.get(at).filter(|s| slice_group(s) == Some(group))?;
            parts.slices.push(slice);
        }
        Some(parts)
    }
}

/// What one group contributes to the result.
#[derive(Debug, Default)]
struct Share {
    keys: Vec<ServicePortKey>,
    warnings: Vec<String>,
}

/// How the last update was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nothing translated yet.
    Empty,
    /// Per group: the next change re-translates only what it touches.
    Grouped,
    /// Whole: GKE imports or a key two groups want; the next change
    /// translates everything again.
    Whole,
}

/// The translation, kept between changes; see the module's documentation.
#[derive(Debug)]
pub struct Incremental {
    config: Config,
    mode: Mode,
    shares: HashMap<Group, Share>,
    state: DesiredState,
    report: Report,
    /// Every group's skipped imports and excluded clusters, in report order.
    skipped: BTreeMap<Group, Vec<Skipped>>,
    excluded: BTreeMap<Group, Vec<ExcludedCluster>>,
    /// Warnings, with how many groups gave each.
    warnings: BTreeMap<String, usize>,
}

/// What [`Incremental::update`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updated {
    /// The service ports whose desired state may differ from before the
    /// update (added, changed or gone); `None` when any may.
    pub changed: Option<BTreeSet<ServicePortKey>>,
    /// Groups translated.
    pub groups: usize,
    /// How the update was made.
    pub mode: Mode,
}

/// Two groups want the same key: which one owns it depends on both.
struct Contested;

impl Incremental {
    /// Nothing translated yet; the first update translates everything.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            mode: Mode::Empty,
            shares: HashMap::new(),
            state: DesiredState::default(),
            report: Report::default(),
            skipped: BTreeMap::new(),
            excluded: BTreeMap::new(),
            warnings: BTreeMap::new(),
        }
    }

    /// The desired state as of the last update.
    #[must_use]
    pub const fn state(&self) -> &DesiredState {
        &self.state
    }

    /// The report as of the last update.
    #[must_use]
    pub const fn report(&self) -> &Report {
        &self.report
    }

    /// Brings the result up to date with `inputs`, of which only the groups
    /// in `changes` differ from the inputs of the last update (all of them
    /// before the first). The result is [`translate`](super::translate)'s
    /// for `inputs`.
    pub fn update(&mut self, inputs: &Inputs, changes: &Changes) -> Updated {
        self.update_with(inputs, None, changes)
    }

    /// [`Incremental::update`], finding the touched groups' objects through
    /// `index` (the [`GroupIndex`] of `inputs`) where it is given.
    pub fn update_with(&mut self, inputs: &Inputs, index: Option<&GroupIndex>, changes: &Changes) -> Updated {
        if self.mode != Mode::Empty && changes.is_empty() {
            return Updated { changed: Some(BTreeSet::new()), groups: 0, mode: self.mode };
        }
        if self.mode == Mode::Grouped && !changes.all && inputs.gke_imports.is_empty() {
            let mut ports = BTreeSet::new();
            if self.regroup(inputs, index, changes, &mut ports).is_ok() {
                self.assemble();
                return Updated { changed: Some(ports), groups: changes.len(), mode: Mode::Grouped };
            }
        }
        self.rebuild(inputs)
    }

    /// Translates everything again, per group where it can.
    fn rebuild(&mut self, inputs: &Inputs) -> Updated {
        self.clear();
        if inputs.gke_imports.is_empty() {
            let groups = partition(inputs, None);
            let count = groups.len();
            let mut changed = BTreeSet::new();
            if groups.into_iter().try_for_each(|(group, parts)| self.put(group, &parts, &mut changed)).is_ok() {
                self.mode = Mode::Grouped;
                self.assemble();
                return Updated { changed: None, groups: count, mode: Mode::Grouped };
            }
            self.clear();
        }
        let (state, report) = translate_parts(&Parts::of(inputs), &self.config);
        self.state = state;
        self.report = report;
        self.mode = Mode::Whole;
        Updated { changed: None, groups: 0, mode: Mode::Whole }
    }

    fn clear(&mut self) {
        self.shares.clear();
        self.state = DesiredState::default();
        self.report = Report::default();
        self.skipped.clear();
        self.excluded.clear();
        self.warnings.clear();
    }

    /// Takes the touched groups' shares out and translates them again.
    fn regroup(
        &mut self,
        inputs: &Inputs,
        index: Option<&GroupIndex>,
        changes: &Changes,
        ports: &mut BTreeSet<ServicePortKey>,
    ) -> Result<(), Contested> {
        for (namespace, name) in changes.each() {
            self.take(&(namespace.to_owned(), name.to_owned()), ports);
        }
        let indexed: Option<BTreeMap<(&str, &str), Parts<'_>>> = index.and_then(|index| {
            changes
                .each()
                .map(|group| Some((group, index.parts(inputs, group)?)))
                .filter(|found| {
                    found.as_ref().is_none_or(|(_, parts)| !parts.imports.is_empty() || !parts.slices.is_empty())
                })
                .collect()
        });
        for (group, parts) in indexed.unwrap_or_else(|| partition(inputs, Some(changes))) {
            self.put(group, &parts, ports)?;
        }
        Ok(())
    }

    /// Removes a group's share.
    fn take(&mut self, group: &Group, changed: &mut BTreeSet<ServicePortKey>) {
        let Some(share) = self.shares.remove(group) else { return };
        for key in share.keys {
            self.state.services.remove(&key);
            changed.insert(key);
        }
        for warning in share.warnings {
            if let Some(count) = self.warnings.get_mut(&warning) {
                *count -= 1;
                if *count == 0 {
                    self.warnings.remove(&warning);
                }
            }
        }
        self.skipped.remove(group);
        self.excluded.remove(group);
    }

    /// Translates one group and adds its share.
    fn put(
        &mut self,
        group: (&str, &str),
        parts: &Parts<'_>,
        changed: &mut BTreeSet<ServicePortKey>,
    ) -> Result<(), Contested> {
        let (state, report) = translate_parts(parts, &self.config);
        if state.services.keys().any(|key| self.state.services.contains_key(key)) {
            return Err(Contested);
        }
        let group = (group.0.to_owned(), group.1.to_owned());
        let keys: Vec<ServicePortKey> = state.services.keys().copied().collect();
        changed.extend(keys.iter().copied());
        self.state.services.extend(state.services);
        for warning in &report.warnings {
            *self.warnings.entry(warning.clone()).or_default() += 1;
        }
        if !report.skipped.is_empty() {
            self.skipped.insert(group.clone(), report.skipped);
        }
        if !report.excluded_clusters.is_empty() {
            self.excluded.insert(group.clone(), report.excluded_clusters);
        }
        self.shares.insert(group, Share { keys, warnings: report.warnings });
        Ok(())
    }

    /// The report from the groups' shares, in [`translate`](super::translate)'s order.
    fn assemble(&mut self) {
        self.report = Report {
            skipped: self.skipped.values().flatten().cloned().collect(),
            excluded_clusters: self.excluded.values().flatten().cloned().collect(),
            warnings: self.warnings.keys().cloned().collect(),
        };
    }
}

/// The objects of each group (only of the groups in `only`, when given).
/// An `EndpointSlice` without the MCS service-name label belongs to no
/// group: without GKE imports, translation passes over it in silence.
fn partition<'a>(inputs: &'a Inputs, only: Option<&Changes>) -> BTreeMap<(&'a str, &'a str), Parts<'a>> {
    let wanted = |namespace: &str, name: &str| only.is_none_or(|c| c.contains(namespace, name));
    let mut groups: BTreeMap<(&str, &str), Parts<'_>> = BTreeMap::new();
    for import in &inputs.imports {
        let group = import_group(import);
        if wanted(group.0, group.1) {
            groups.entry(group).or_default().imports.push(import);
        }
    }
    for slice in &inputs.slices {
        let Some(group) = slice_group(slice) else { continue };
        if wanted(group.0, group.1) {
            groups.entry(group).or_default().slices.push(slice);
        }
    }
    groups
}
