//! The Kubernetes API as a source of ServiceImports, EndpointSlices, GKE
//! ServiceImports and Endpoints.
//!
//! What is watched (each by a kube-rs watcher feeding a reflector store):
//! - `ServiceImport` of `multicluster.x-k8s.io`, `v1beta1` when the server
//!   serves it, else `v1alpha1`;
//! - `EndpointSlice`s (`discovery.k8s.io/v1`) that carry the label
//!   `multicluster.kubernetes.io/service-name` (label selector "exists");
//! - only when the server serves `net.gke.io/v1`: GKE's `ServiceImport`s, the
//!   core/v1 `Endpoints` and the `EndpointSlice`s labelled
//!   `kubernetes.io/service-name`. Those two are watched cluster-wide (one
//!   watch each, as kube-proxy does), but a snapshot hands the translation
//!   only the ones a GKE import names in its `net.gke.io/derived-service`
//!   annotation.
//!
//! The CRD types are watched as [`WatchedImport`]s, decoded into their typed
//! form when they arrive, so a malformed object can never fail a list or a
//! watch: it is kept with what is wrong, reported when a snapshot is taken
//! (namespace/name and the serde path of the bad field) and skipped, and the
//! others are used.
//!
//! Watchers back off on errors (kube's default backoff) and relist on 410
//! Gone; the reflector replaces a store's content when a relist completes, so
//! objects deleted while the watch was down are garbage-collected. The source
//! is synced once every watcher has completed its first list. Which versions
//! are served is checked again every minute; when that changes (a CRD was
//! installed), the watchers are restarted and the source is unsynced until
//! they have listed again.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Debug,
    hash::Hash,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use k8s_openapi::{api::core::v1::Endpoints, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client, Config, Resource,
    api::{ApiResource, GroupVersionKind, ListParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery,
    runtime::{
        WatchStreamExt as _,
        reflector::{
            Lookup, ObjectRef,
            store::{Store, Writer},
        },
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

mod watched;

pub use watched::{ImportKind, WatchedImport, WatchedSlice};

use super::{
    Problem, Snapshot,
    health::{ApiHealth, Health},
};
use crate::k8s::Object as _;
use crate::{
    k8s::{self, GkeServiceImport, ServiceImport, Slice},
    translate::{
        Inputs,
        incremental::{Changes, GroupIndex},
    },
};

/// Versions of the MCS API tried, most preferred first.
const MCS_VERSIONS: [&str; 2] = ["v1beta1", "v1alpha1"];
/// How often the served API versions are checked again.
const REDISCOVER_INTERVAL: Duration = Duration::from_mins(1);
/// Longest wait between two failed discovery attempts.
const DISCOVERY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A client for the API server: `kubeconfig` when given, else the usual
/// inference (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster service
/// account).
///
/// # Errors
/// When no configuration can be read.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => Config::infer().await.context("no kubeconfig and no in-cluster config (use --kubeconfig)")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// The resources this server serves that the source reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// The MCS `ServiceImport` resource, when served.
    pub imports: Option<ApiResource>,
    /// GKE's `ServiceImport` resource, when served.
    pub gke_imports: Option<ApiResource>,
}

/// Asks the server which of the resources are served.
///
/// # Errors
/// When the server cannot be reached or answers nonsense.
pub async fn discover(client: &Client) -> Result<Discovered> {
    let groups = client.list_api_groups().await.context("listing API groups (GET /apis)")?;
    let served = |group: &str, version: &str| {
        groups.groups.iter().any(|g| g.name == group && g.versions.iter().any(|v| v.version == version))
    };
    let mut found = Discovered::default();
    for version in MCS_VERSIONS {
        if !served(k8s::MCS_GROUP, version) {
            continue;
        }
        let gvk = GroupVersionKind::gvk(k8s::MCS_GROUP, version, k8s::SERVICE_IMPORT_KIND);
        match discovery::pinned_kind(client, &gvk).await {
            Ok((resource, _)) => {
                found.imports = Some(resource);
                break;
            }
            Err(e) => debug!(group = k8s::MCS_GROUP, version, error = %e, "no ServiceImport in this version"),
        }
    }
    if served(k8s::GKE_GROUP, "v1") {
        let gvk = GroupVersionKind::gvk(k8s::GKE_GROUP, "v1", k8s::SERVICE_IMPORT_KIND);
        match discovery::pinned_kind(client, &gvk).await {
            Ok((resource, _)) => found.gke_imports = Some(resource),
            Err(e) => debug!(group = k8s::GKE_GROUP, error = %e, "no GKE ServiceImport"),
        }
    }
    Ok(found)
}

/// Lists every object the translation reads, once, from the API server named
/// by `kubeconfig` (see [`client`]). Malformed objects are skipped and
/// returned as problems, each naming the object and the field.
///
/// # Errors
/// When the server cannot be reached or a list fails.
pub async fn snapshot_with_problems(kubeconfig: Option<&Path>) -> Result<Snapshot> {
    let client = client(kubeconfig).await?;
    let found = discover(&client).await?;
    let imports = match &found.imports {
        Some(ar) => list_all(&Api::<WatchedImport<ServiceImport>>::all_with(client.clone(), ar), None).await?,
        None => Vec::new(),
    };
    let slices = list_all(&Api::<WatchedSlice>::all(client.clone()), Some(k8s::LABEL_SERVICE_NAME)).await?;
    let (gke_imports, gke_endpoints, gke_slices) = match &found.gke_imports {
        Some(ar) => (
            list_all(&Api::<WatchedImport<GkeServiceImport>>::all_with(client.clone(), ar), None).await?,
            list_all(&Api::<Endpoints>::all(client.clone()), None).await?,
            list_all(&Api::<WatchedSlice>::all(client.clone()), Some(k8s::LABEL_KUBERNETES_SERVICE_NAME)).await?,
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    Ok(assemble(&Objects {
        imports: imports.iter().collect(),
        slices: slices.iter().collect(),
        gke_imports: gke_imports.iter().collect(),
        gke_endpoints: gke_endpoints.iter().collect(),
        gke_slices: gke_slices.iter().collect(),
    }))
}

async fn list_all<K>(api: &Api<K>, label: Option<&str>) -> Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut params = ListParams::default().limit(500);
    if let Some(label) = label {
        params = params.labels(label);
    }
    let mut out = Vec::new();
    // Bounded: a server that keeps handing out continue tokens is cut off.
    for _ in 0..100_000 {
        let page = api.list(&params).await.with_context(|| format!("listing {}", api.resource_url()))?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params.continue_token = Some(token),
            None => return Ok(out),
        }
    }
    anyhow::bail!("listing {}: too many pages", api.resource_url())
}

/// Borrowed objects of every kind, from stores or lists.
#[derive(Default)]
struct Objects<'a> {
    imports: Vec<&'a WatchedImport<ServiceImport>>,
    slices: Vec<&'a WatchedSlice>,
    gke_imports: Vec<&'a WatchedImport<GkeServiceImport>>,
    gke_endpoints: Vec<&'a Endpoints>,
    gke_slices: Vec<&'a WatchedSlice>,
}

/// An object's (namespace, name).
fn meta_key(meta: &ObjectMeta) -> (String, String) {
    (k8s::namespace_of(meta).to_owned(), k8s::name_of(meta).to_owned())
}

/// The imports that read as their type; a problem for each that does not.
fn typed_imports<T: ImportKind>(objects: &[&WatchedImport<T>], problems: &mut Vec<Problem>) -> Vec<Arc<T>> {
    let mut out = Vec::with_capacity(objects.len());
    for obj in objects {
        match &obj.typed {
            Ok(typed) => out.push(Arc::clone(typed)),
            Err(message) => {
                let (namespace, name) = meta_key(&obj.metadata);
                problems.push(Problem::Object {
                    kind: T::WHAT,
                    namespace,
                    name,
                    api_version: obj.api_version.clone(),
                    message: message.clone(),
                });
            }
        }
    }
    out
}

/// The snapshot of `objects`.
fn assemble(objects: &Objects<'_>) -> Snapshot {
    let mut problems = Vec::new();
    let imports = typed_imports(&objects.imports, &mut problems);
    let gke_imports = typed_imports(&objects.gke_imports, &mut problems);
    // The derived services the GKE imports name: only their Endpoints and
    // slices are handed on.
    let derived: BTreeSet<(String, String)> = gke_imports
        .iter()
        .filter_map(|i| {
            let name = i.metadata.annotations.as_ref()?.get(k8s::GKE_DERIVED_SERVICE_ANNOTATION)?;
            Some((i.namespace().to_owned(), name.clone()))
        })
        .collect();
    let mut slices: BTreeMap<(String, String), Arc<Slice>> = BTreeMap::new();
    for WatchedSlice(slice) in &objects.slices {
        slices.insert(meta_key(&slice.metadata), Arc::clone(slice));
    }
    for WatchedSlice(slice) in &objects.gke_slices {
        let namespace = k8s::namespace_of(&slice.metadata).to_owned();
        let Some(service) = slice.labels.get(k8s::LABEL_KUBERNETES_SERVICE_NAME) else {
            continue;
        };
        if derived.contains(&(namespace.clone(), service.to_owned())) {
            slices.insert((namespace, k8s::name_of(&slice.metadata).to_owned()), Arc::clone(slice));
        }
    }
    let endpoints = objects
        .gke_endpoints
        .iter()
        .filter(|e| derived.contains(&meta_key(&e.metadata)))
        .map(|e| (*e).clone())
        .collect();
    problems.sort_by_cached_key(ToString::to_string);
    Snapshot {
        inputs: Inputs { imports, slices: slices.into_values().collect(), gke_imports, endpoints },
        problems,
        index: None,
    }
}

/// The stores of the GKE watchers: imports, Endpoints, derived slices.
type GkeStores = (Store<WatchedImport<GkeServiceImport>>, Store<Endpoints>, Store<WatchedSlice>);

/// The stores of one set of watchers, and the tasks that feed them.
struct Watchers {
    imports: Option<Store<WatchedImport<ServiceImport>>>,
    slices: Store<WatchedSlice>,
    gke: Option<GkeStores>,
    synced: Vec<Arc<AtomicBool>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Watchers {
    fn start(
        client: &Client,
        found: &Discovered,
        (changes, touched): (&watch::Sender<u64>, &Arc<Mutex<Touched>>),
        health: &Arc<Health>,
    ) -> Self {
        fn crd<T>(o: &WatchedImport<T>, t: &mut Touched) {
            t.groups.mark(k8s::namespace_of(&o.metadata), k8s::name_of(&o.metadata));
            t.others = true;
        }
        let slice = |o: &WatchedSlice, t: &mut Touched| {
            t.groups.slice(o);
            t.slices.insert(meta_key(&o.0.metadata));
        };
        let derived_slice = |o: &WatchedSlice, t: &mut Touched| {
            t.groups.slice(o);
            t.others = true;
        };
        let endpoints = |o: &Endpoints, t: &mut Touched| {
            t.groups.endpoints(o);
            t.others = true;
        };
        let mut synced = Vec::new();
        let mut tasks = Vec::new();
        let mut spawn = |task: (JoinHandle<()>, Arc<AtomicBool>)| {
            tasks.push(task.0);
            synced.push(task.1);
        };
        let imports = found.imports.as_ref().map(|ar| {
            let writer = Writer::new(ar.clone());
            let store = writer.as_reader();
            let api = Api::<WatchedImport<ServiceImport>>::all_with(client.clone(), ar);
            spawn(watch_into(
                api,
                watcher::Config::default(),
                writer,
                "ServiceImport",
                (changes.clone(), Arc::clone(touched), crd),
                Arc::clone(health),
            ));
            store
        });
        let slices = {
            let writer = Writer::new(());
            let store = writer.as_reader();
            let config = watcher::Config::default().labels(k8s::LABEL_SERVICE_NAME);
            spawn(watch_into(
                Api::all(client.clone()),
                config,
                writer,
                "EndpointSlice",
                (changes.clone(), Arc::clone(touched), slice),
                Arc::clone(health),
            ));
            store
        };
        let gke = found.gke_imports.as_ref().map(|ar| {
            let import_writer = Writer::new(ar.clone());
            let import_store = import_writer.as_reader();
            let api = Api::<WatchedImport<GkeServiceImport>>::all_with(client.clone(), ar);
            spawn(watch_into(
                api,
                watcher::Config::default(),
                import_writer,
                "GKE ServiceImport",
                (changes.clone(), Arc::clone(touched), crd),
                Arc::clone(health),
            ));
            let endpoints_writer = Writer::new(());
            let endpoints_store = endpoints_writer.as_reader();
            spawn(watch_into(
                Api::<Endpoints>::all(client.clone()),
                watcher::Config::default(),
                endpoints_writer,
                "Endpoints",
                (changes.clone(), Arc::clone(touched), endpoints),
                Arc::clone(health),
            ));
            let slices_writer = Writer::new(());
            let slices_store = slices_writer.as_reader();
            let config = watcher::Config::default().labels(k8s::LABEL_KUBERNETES_SERVICE_NAME);
            spawn(watch_into(
                Api::<WatchedSlice>::all(client.clone()),
                config,
                slices_writer,
                "EndpointSlice (GKE derived)",
                (changes.clone(), Arc::clone(touched), derived_slice),
                Arc::clone(health),
            ));
            (import_store, endpoints_store, slices_store)
        });
        Self { imports, slices, gke, synced, tasks }
    }

    fn synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }
}

/// What the watchers saw change since a sync last took it.
#[derive(Debug, Default)]
struct Touched {
    /// The groups, for the translation.
    groups: Changes,
    /// The MCS `EndpointSlice`s, by (namespace, name): the snapshot replaces
    /// just these.
    slices: BTreeSet<(String, String)>,
    /// Whether anything but an MCS `EndpointSlice` changed: the snapshot
    /// then gathers the (already decoded) imports again.
    others: bool,
}

impl Touched {
    fn everything() -> Self {
        Self { groups: Changes::everything(), slices: BTreeSet::new(), others: true }
    }
}

/// What a watcher tells of a change: the generation counter to bump, what
/// changed, and how to record an object in it.
type Recorders<K> = (watch::Sender<u64>, Arc<Mutex<Touched>>, fn(&K, &mut Touched));

/// Runs a watcher into `writer` until aborted: every change bumps `changes`,
/// the first completed list marks the returned flag, and `health` hears of
/// every event and error.
fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    what: &'static str,
    (changes, touched, record): Recorders<K>,
    health: Arc<Health>,
) -> (JoinHandle<()>, Arc<AtomicBool>)
where
    K: Resource
        + Lookup<DynamicType = <K as Resource>::DynamicType>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    <K as Resource>::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let synced = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&synced);
    health.started(what);
    let task = tokio::spawn(async move {
        let stream = watcher(api, config)
            .default_backoff()
            .modify(|obj: &mut K| obj.meta_mut().managed_fields = None)
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match &item {
                Ok(_) => health.event(what),
                // A relist the server asked for is not a failure.
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {}
                Err(e) => health.error(what, &e.to_string()),
            }
            match item {
                // The reflector has applied the event to the store before
                // it reaches here, so a sync that takes the changes before
                // reading the stores never misses one.
                Ok(watcher::Event::InitDone) => {
                    if !flag.swap(true, Ordering::AcqRel) {
                        info!(resource = what, "initial list done");
                    }
                    *touched.lock().unwrap_or_else(PoisonError::into_inner) = Touched::everything();
                    changes.send_modify(|generation| *generation += 1);
                }
                Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                    record(&object, &mut touched.lock().unwrap_or_else(PoisonError::into_inner));
                    changes.send_modify(|generation| *generation += 1);
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    info!(resource = what, "watch expired (410 Gone); relisting");
                }
                Err(e) => warn!(resource = what, error = %e, "watch failed; retrying with backoff"),
            }
        }
        health.error(what, "the watch stream ended");
        warn!(resource = what, "watch stream ended");
    });
    (task, synced)
}

/// The name [`Health`] reports API discovery under.
const DISCOVERY: &str = "discovery";

/// A snapshot handed out, and where each of its slices is.
struct Assembled {
    snapshot: Arc<Snapshot>,
    /// Position in `snapshot.inputs.slices` by (namespace, name).
    index: HashMap<(String, String), usize>,
}

impl Assembled {
    /// Puts the slice `key` as the store holds it now (`None`: gone). The
    /// slices' order changes; the translation does not depend on it.
    /// The snapshot's group index is kept up to date with it.
    fn put_slice(&mut self, key: (String, String), current: Option<&WatchedSlice>) {
        let snapshot = Arc::make_mut(&mut self.snapshot);
        let slices = &mut snapshot.inputs.slices;
        let groups = snapshot.index.get_or_insert_default();
        match (current.map(|w| Arc::clone(&w.0)), self.index.get(&key).copied()) {
            (Some(slice), Some(at)) => {
                groups.remove_slice(&slices[at], at);
                groups.insert_slice(&slice, at);
                slices[at] = slice;
            }
            (Some(slice), None) => {
                self.index.insert(key, slices.len());
                groups.insert_slice(&slice, slices.len());
                slices.push(slice);
            }
            (None, Some(at)) => {
                self.index.remove(&key);
                let last = slices.len() - 1;
                groups.remove_slice(&slices[at], at);
                if at != last {
                    groups.remove_slice(&slices[last], last);
                    groups.insert_slice(&slices[last], at);
                }
                slices.swap_remove(at);
                if let Some(moved) = slices.get(at) {
                    let moved = meta_key(&moved.metadata);
                    self.index.insert(moved, at);
                }
            }
            (None, None) => {}
        }
    }
}

/// The watching source.
pub struct KubeSource {
    current: Arc<Mutex<Option<Arc<Watchers>>>>,
    /// What the watchers saw change since a sync last took it.
    touched: Arc<Mutex<Touched>>,
    /// The last snapshot handed out, kept to be brought up to date in place.
    assembled: Mutex<Option<Assembled>>,
    changes: watch::Receiver<u64>,
    supervisor: JoinHandle<()>,
    health: Arc<Health>,
}

impl KubeSource {
    /// Connects (see [`client`]) and starts discovery and the watchers in the
    /// background.
    ///
    /// # Errors
    /// When the kubeconfig cannot be read.
    pub async fn start(kubeconfig: Option<&Path>) -> Result<Self> {
        let client = client(kubeconfig).await?;
        Ok(Self::start_with_client(client))
    }

    /// Starts discovery and the watchers with `client`.
    #[must_use]
    pub fn start_with_client(client: Client) -> Self {
        let current = Arc::new(Mutex::new(None));
        let (tx, changes) = watch::channel(0_u64);
        let health = Arc::new(Health::default());
        health.started(DISCOVERY);
        let touched = Arc::new(Mutex::new(Touched::everything()));
        let supervisor =
            tokio::spawn(supervise(client, Arc::clone(&current), (tx, Arc::clone(&touched)), Arc::clone(&health)));
        Self { current, touched, assembled: Mutex::new(None), changes, supervisor, health }
    }

    /// How discovery and each watch are doing.
    #[must_use]
    pub fn health(&self) -> ApiHealth {
        self.health.snapshot()
    }

    /// Waits until a watcher recorded a change.
    ///
    /// # Errors
    /// When the watchers have stopped.
    pub async fn changed(&mut self) -> Result<()> {
        super::wait_changed(&mut self.changes).await
    }

    /// Whether discovery ran and every watcher completed its first list.
    #[must_use]
    pub fn synced(&self) -> bool {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|w| w.synced())
    }

    /// What the stores hold now, and the groups that changed since the last
    /// call (everything before the first, and after a relist or a restart
    /// of the watchers). The changes are taken first: one that lands while
    /// the stores are read is reported again by the next call.
    ///
    /// The snapshot is shared, not copied: the one handed out last is
    /// brought up to date, replacing only the MCS `EndpointSlice`s that
    /// changed, and gathering the decoded imports again only when an import
    /// (or a GKE object) changed. It is assembled anew after a relist, and while
    /// GKE imports exist.
    #[must_use]
    pub fn take(&self) -> (Arc<Snapshot>, Changes) {
        let touched = std::mem::take(&mut *self.touched.lock().unwrap_or_else(PoisonError::into_inner));
        let Some(watchers) = self.current.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
            return (Arc::default(), touched.groups);
        };
        let gke = watchers.gke.as_ref().is_some_and(|(imports, _, _)| !imports.is_empty());
        let mut assembled = self.assembled.lock().unwrap_or_else(PoisonError::into_inner);
        // A snapshot assembled while GKE imports existed holds their derived
        // objects, which only a whole assembly hands on or drops.
        let kept_gke = |kept: &Assembled| {
            !kept.snapshot.inputs.gke_imports.is_empty() || !kept.snapshot.inputs.endpoints.is_empty()
        };
        match assembled.as_mut() {
            Some(kept) if !touched.groups.is_everything() && !gke && !kept_gke(kept) => {
                let snapshot = Arc::make_mut(&mut kept.snapshot);
                if touched.others {
                    let imports = watchers.imports.as_ref().map(Store::state).unwrap_or_default();
                    let objects =
                        Objects { imports: imports.iter().map(AsRef::as_ref).collect(), ..Objects::default() };
                    let fresh = assemble(&objects);
                    snapshot.inputs.imports = fresh.inputs.imports;
                    snapshot.problems = fresh.problems;
                    snapshot.index.get_or_insert_default().set_imports(&snapshot.inputs.imports);
                }
                for (namespace, name) in touched.slices {
                    let current = watchers.slices.get(&ObjectRef::new(&name).within(&namespace));
                    kept.put_slice((namespace, name), current.as_deref());
                }
            }
            _ => {
                let mut snapshot = self.snapshot();
                let index =
                    snapshot.inputs.slices.iter().enumerate().map(|(i, s)| (meta_key(&s.metadata), i)).collect();
                snapshot.index = Some(GroupIndex::of(&snapshot.inputs));
                *assembled = Some(Assembled { snapshot: Arc::new(snapshot), index });
            }
        }
        let snapshot = assembled.as_ref().map(|a| Arc::clone(&a.snapshot)).unwrap_or_default();
        (snapshot, touched.groups)
    }

    /// What the stores hold now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let Some(watchers) = self.current.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
            return Snapshot::default();
        };
        let imports = watchers.imports.as_ref().map(Store::state).unwrap_or_default();
        let slices = watchers.slices.state();
        let (gke_imports, gke_endpoints, gke_slices) =
            watchers.gke.as_ref().map(|(i, e, s)| (i.state(), e.state(), s.state())).unwrap_or_default();
        let objects = Objects {
            imports: imports.iter().map(AsRef::as_ref).collect(),
            slices: slices.iter().map(AsRef::as_ref).collect(),
            gke_imports: gke_imports.iter().map(AsRef::as_ref).collect(),
            gke_endpoints: gke_endpoints.iter().map(AsRef::as_ref).collect(),
            gke_slices: gke_slices.iter().map(AsRef::as_ref).collect(),
        };
        assemble(&objects)
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.supervisor.abort();
        // Dropping the watchers aborts their tasks.
        self.current.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// Discovers what is served, starts the watchers, and restarts them when
/// what is served changes.
async fn supervise(
    client: Client,
    current: Arc<Mutex<Option<Arc<Watchers>>>>,
    (changes, touched): (watch::Sender<u64>, Arc<Mutex<Touched>>),
    health: Arc<Health>,
) {
    let mut found: Option<Discovered> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        match discover(&client).await {
            Ok(now) => {
                health.event(DISCOVERY);
                backoff = Duration::from_millis(500);
                if found.as_ref() != Some(&now) {
                    describe(&now);
                    let watchers = Watchers::start(&client, &now, (&changes, &touched), &health);
                    *current.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(watchers));
                    *touched.lock().unwrap_or_else(PoisonError::into_inner) = Touched::everything();
                    changes.send_modify(|generation| *generation += 1);
                    found = Some(now);
                }
                // Again in a while, or as soon as a watch fails: then a
                // successful discovery says the server answers again.
                tokio::select! {
                    () = tokio::time::sleep(REDISCOVER_INTERVAL) => {}
                    () = health.probe_requested() => {}
                }
            }
            Err(e) => {
                health.error(DISCOVERY, &format!("{e:#}"));
                warn!(error = %format!("{e:#}"), retry_in = ?backoff, "API discovery failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(DISCOVERY_BACKOFF_MAX);
            }
        }
    }
}

fn describe(found: &Discovered) {
    if let Some(ar) = &found.imports {
        info!(api_version = %ar.api_version, "watching ServiceImports");
    } else {
        warn!(
            group = k8s::MCS_GROUP,
            "the server serves no ServiceImport (is the MCS CRD installed?); checking again every minute"
        );
    }
    if let Some(ar) = &found.gke_imports {
        info!(api_version = %ar.api_version, "watching GKE ServiceImports and their derived Endpoints");
    } else {
        debug!("net.gke.io/v1 is not served; GKE imports are not watched");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import<T: ImportKind>(json: serde_json::Value) -> WatchedImport<T> {
        serde_json::from_value(json).expect("a watched import")
    }

    #[test]
    fn malformed_imports_are_reported_with_the_field_and_skipped() {
        let good = import(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
            "metadata": {"namespace": "demo", "name": "good", "resourceVersion": "1"},
            "spec": {"type": "ClusterSetIP", "ips": ["198.19.0.1"], "ports": [{"port": 80}]}
        }));
        let bad = import(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
            "metadata": {"namespace": "demo", "name": "bad", "resourceVersion": "2"},
            "spec": {"ports": [{"port": "eighty"}]}
        }));
        let objects = Objects { imports: vec![&good, &bad], ..Objects::default() };
        let snapshot = assemble(&objects);
        assert_eq!(snapshot.inputs.imports.len(), 1);
        assert_eq!(snapshot.inputs.imports[0].name(), "good");
        assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
        let problem = snapshot.problems[0].to_string();
        assert!(problem.contains("demo/bad") && problem.contains("spec.ports[0].port"), "{problem}");

        // Its next version, fixed: read as any other object (nothing of the
        // bad version is kept).
        let fixed = import(serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
            "metadata": {"namespace": "demo", "name": "bad", "resourceVersion": "3"},
            "spec": {"ports": [{"port": 81}]}
        }));
        let snapshot = assemble(&Objects { imports: vec![&fixed], ..Objects::default() });
        assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
        assert_eq!(snapshot.inputs.imports[0].spec.ports[0].port, 81);
    }

    #[test]
    fn list_items_without_type_fields_convert() {
        let item: WatchedImport<ServiceImport> = import(serde_json::json!({
            "metadata": {"namespace": "demo", "name": "web", "managedFields": [{"manager": "kubectl"}],
                         "annotations": {"a": "b"}, "labels": {"c": "d"}, "resourceVersion": "7", "uid": "u7",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u0"}]},
            "spec": {"ips": ["198.19.0.1"], "ports": [{"port": 80}]}
        }));
        let typed = item.typed.expect("converts");
        assert_eq!(typed.api_version, "multicluster.x-k8s.io/v1beta1");
        assert_eq!(typed.kind, "ServiceImport");
        assert_eq!(item.api_version, typed.api_version);
        assert_eq!(typed.metadata.managed_fields, None, "managedFields are dropped");
        assert_eq!(typed.metadata.annotations.as_ref().map(BTreeMap::len), Some(1), "annotations are kept");
        assert_eq!(
            item.metadata,
            ObjectMeta {
                namespace: Some("demo".into()),
                name: Some("web".into()),
                resource_version: Some("7".into()),
                uid: Some("u7".into()),
                ..ObjectMeta::default()
            },
            "the reflector keeps what it keys and resumes by: namespace, name, resourceVersion, uid"
        );

        // Metadata that does not read fails the read (as it failed a dynamic
        // object's); metadata without a name reads, under the empty name.
        let unreadable = serde_json::from_value::<WatchedImport<ServiceImport>>(serde_json::json!({"metadata": 5}));
        assert!(unreadable.is_err(), "{unreadable:?}");
        let unnamed: WatchedImport<ServiceImport> = import(serde_json::json!({"metadata": {}, "spec": {}}));
        assert_eq!((k8s::name_of(&unnamed.metadata), unnamed.typed.is_ok()), ("", true));
    }

    #[test]
    fn only_the_derived_services_of_gke_imports_are_handed_on() {
        let gke = import(serde_json::json!({
            "apiVersion": "net.gke.io/v1", "kind": "ServiceImport",
            "metadata": {"namespace": "demo", "name": "web",
                         "annotations": {"net.gke.io/derived-service": "gke-mcs-abc"}},
            "status": {"ips": ["198.19.0.1"], "ports": [{"port": 80}]}
        }));
        let endpoints = |ns: &str, name: &str| -> Endpoints {
            serde_json::from_value(serde_json::json!({"metadata": {"namespace": ns, "name": name}})).expect("endpoints")
        };
        let slice = |ns: &str, name: &str, service: &str| -> WatchedSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "endpoints": []
            }))
            .expect("slice")
        };
        let wanted_e = endpoints("demo", "gke-mcs-abc");
        let other_e = endpoints("demo", "kubernetes");
        let other_ns_e = endpoints("other", "gke-mcs-abc");
        let wanted_s = slice("demo", "gke-mcs-abc-x1", "gke-mcs-abc");
        let other_s = slice("demo", "web-x1", "web");
        let snapshot = assemble(&Objects {
            gke_imports: vec![&gke],
            gke_endpoints: vec![&wanted_e, &other_e, &other_ns_e],
            gke_slices: vec![&wanted_s, &other_s],
            ..Objects::default()
        });
        assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
        assert_eq!(snapshot.inputs.gke_imports.len(), 1);
        let names: Vec<_> = snapshot.inputs.endpoints.iter().map(|e| k8s::name_of(&e.metadata).to_owned()).collect();
        assert_eq!(names, ["gke-mcs-abc"]);
        assert_eq!(snapshot.inputs.endpoints[0].metadata.namespace.as_deref(), Some("demo"));
        let slices: Vec<_> = snapshot.inputs.slices.iter().map(|s| k8s::name_of(&s.metadata).to_owned()).collect();
        assert_eq!(slices, ["gke-mcs-abc-x1"]);
    }
}
