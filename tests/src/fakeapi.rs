//! A fake Kubernetes API server: just enough of the API's list/watch protocol
//! for the agent's Kubernetes source, over plain HTTP/1.1.
//!
//! What it speaks:
//! - discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`;
//! - LIST of a resource (all namespaces or one), with `labelSelector`
//!   (`key`, `!key`, `key=value`, `key==value`, `key!=value`, comma-joined)
//!   and the list's `metadata.resourceVersion`; with `limit`, in pages that
//!   `continue` resumes, every page at the first one's version, as the real
//!   server's consistent lists are (an unknown or evicted token gets `410`
//!   `Expired`, as a compacted one does);
//! - WATCH (`?watch=true`): from `resourceVersion` N it replays every change
//!   after N, then streams live ones, one JSON event per line (`ADDED`,
//!   `MODIFIED`, `DELETED`, and `BOOKMARK` every bookmark interval when the
//!   client sent `allowWatchBookmarks=true`); an object that stops matching
//!   the selector arrives as `DELETED`, one that starts matching as `ADDED`;
//!   without a version (or "0") it starts with the current objects as
//!   `ADDED`. A version older than the compaction point gets an `ERROR` event
//!   with a `410` `Expired` Status, as the real API server sends, after which
//!   a client must list again.
//!
//! Resources: core/v1 `endpoints`, `discovery.k8s.io/v1` `endpointslices`,
//! `multicluster.x-k8s.io` `serviceimports` (versions configurable, one
//! storage for all of them) and, when enabled, `net.gke.io/v1`
//! `serviceimports`. Objects are stored as they are applied, without schema
//! validation, so tests can store malformed objects.
//!
//! Faults ([`FakeApi::set_fault`], [`FakeApi::drop_watches`],
//! [`FakeApi::compact`]): every request answered 500, or 429 with
//! `Retry-After`; watches left open but silent (stalled); the server down
//! (connections accepted and closed at once, open ones cut); open watches
//! cut mid-stream; the history compacted, so a resumed watch gets 410 Gone.
//! Malformed objects are applied as any other.
//!
//! The server runs on its own thread with its own runtime and stops on drop.
//! It binds wherever the caller's listener is; to serve inside a network
//! namespace, bind the listener on a thread that has entered it.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, service::service_fn};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

/// A resource the server knows.
#[derive(Clone, Copy, Debug)]
struct Resource {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
}

const KINDS: [Resource; 4] = [
    Resource { group: "", plural: "endpoints", kind: "Endpoints" },
    Resource { group: "discovery.k8s.io", plural: "endpointslices", kind: "EndpointSlice" },
    Resource { group: "multicluster.x-k8s.io", plural: "serviceimports", kind: "ServiceImport" },
    Resource { group: "net.gke.io", plural: "serviceimports", kind: "ServiceImport" },
];

/// What the server serves.
#[derive(Clone, Debug)]
pub struct FakeApiOptions {
    /// Versions of `multicluster.x-k8s.io` served, preferred first (empty:
    /// the group is not served).
    pub mcs_versions: Vec<String>,
    /// Whether `net.gke.io/v1` is served.
    pub gke: bool,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for FakeApiOptions {
    fn default() -> Self {
        Self {
            mcs_versions: vec!["v1beta1".into(), "v1alpha1".into()],
            gke: false,
            bookmark_interval: Duration::from_millis(500),
        }
    }
}

/// One change in the history: the object before and after.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    group: &'static str,
    plural: &'static str,
    old: Option<Arc<Value>>,
    new: Option<Arc<Value>>,
}

/// Objects of one resource by (namespace, name). Shared with the history
/// and with paged lists: a list of 100,000 objects copies none of them.
type Objects = BTreeMap<(String, String), Arc<Value>>;

/// A fault the server injects until it is cleared ([`Fault::None`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Serving normally.
    #[default]
    None,
    /// Every request gets a 500 `InternalError` Status.
    InternalError,
    /// Every request gets a 429 `TooManyRequests` Status with `Retry-After`.
    TooManyRequests {
        /// The `Retry-After` header, in seconds.
        retry_after_seconds: u32,
    },
    /// Open and new watches stay connected and send nothing (no events, no
    /// bookmarks); lists are answered.
    StalledWatches,
    /// The server is down: connections are closed as soon as they are
    /// accepted, and open ones (watches included) are cut.
    Down,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// Watches from a version older than this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch.
    generation: u64,
    objects: BTreeMap<(&'static str, &'static str), Objects>,
    history: Vec<Change>,
    requests: Vec<String>,
    /// Watches answered with 410 Gone.
    gone: u64,
    fault: Fault,
    /// Paged lists in progress, by token id: the list's version and its items.
    pagings: BTreeMap<u64, (String, u64, Page)>,
    next_paging: u64,
}

/// The items of a paged list, as they were at its first page.
type Page = Arc<Vec<Arc<Value>>>;

/// Paged lists kept at once; the oldest goes first (its next page then gets 410).
const PAGINGS_MAX: usize = 64;

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change, to wake the watches.
    wake: watch::Sender<u64>,
    options: FakeApiOptions,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn served(&self, group: &str, version: &str) -> bool {
        match group {
            "" | "discovery.k8s.io" => version == "v1",
            "multicluster.x-k8s.io" => self.options.mcs_versions.iter().any(|v| v == version),
            "net.gke.io" => self.options.gke && version == "v1",
            _ => false,
        }
    }
}

/// The running server; stops on drop.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

fn kind_for(api_version: &str, kind: &str) -> Option<Resource> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    KINDS.iter().copied().find(|k| k.group == group && k.kind == kind)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

impl FakeApi {
    /// Serves on 127.0.0.1 (a free port) of the caller's network namespace,
    /// with the default options.
    ///
    /// # Panics
    /// When no port can be bound.
    #[must_use]
    pub fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the fake API server");
        Self::start_with(listener, FakeApiOptions::default())
    }

    /// Serves on `listener`.
    ///
    /// # Panics
    /// When the listener or the server's thread cannot be set up.
    #[must_use]
    pub fn start_with(listener: TcpListener, options: FakeApiOptions) -> Self {
        let addr = listener.local_addr().expect("listener address");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), wake: watch::channel(0).0, options });
        let (stop, stopped) = oneshot::channel();
        let server = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("fake-api".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(serve(listener, server, stopped));
            })
            .expect("start the fake API thread");
        Self { addr, shared, stop: Some(stop), thread: Some(thread) }
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig that points at this server.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config).expect("serialise"))
            .unwrap_or_else(|e| panic!("write kubeconfig {}: {e}", path.display()));
    }

    /// Creates or replaces an object (its `apiVersion`, `kind`,
    /// `metadata.namespace` (default `default`) and `metadata.name` say
    /// which). Returns its new `resourceVersion`.
    ///
    /// # Panics
    /// When the object is of a kind the server does not know or has no name.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind_name = obj["kind"].as_str().unwrap_or_default().to_owned();
        let kind = kind_for(&api_version, &kind_name)
            .unwrap_or_else(|| panic!("the fake API has no {api_version} {kind_name}"));
        let name = meta_str(&obj, "name").unwrap_or_else(|| panic!("object without a name: {obj}")).to_owned();
        let namespace = meta_str(&obj, "namespace").unwrap_or("default").to_owned();
        let mut state = self.shared.lock();
        state.rv += 1;
        let rv = state.rv;
        let objects = state.objects.entry((kind.group, kind.plural)).or_default();
        let old = objects.get(&(namespace.clone(), name.clone())).cloned();
        let uid = old.as_ref().and_then(|o| meta_str(o, "uid")).map_or_else(|| format!("uid-{rv}"), str::to_owned);
        let meta = obj["metadata"].as_object_mut().expect("metadata is an object");
        meta.insert("namespace".into(), namespace.clone().into());
        meta.insert("resourceVersion".into(), rv.to_string().into());
        meta.insert("uid".into(), uid.into());
        let obj = Arc::new(obj);
        objects.insert((namespace, name), Arc::clone(&obj));
        state.history.push(Change { rv, group: kind.group, plural: kind.plural, old, new: Some(obj) });
        drop(state);
        self.shared.wake.send_modify(|n| *n += 1);
        rv
    }

    fn remove(&self, api_version: &str, kind: &str, namespace: &str, name: &str, seen: bool) -> bool {
        let kind = kind_for(api_version, kind).unwrap_or_else(|| panic!("the fake API has no {api_version} {kind}"));
        let mut state = self.shared.lock();
        if !seen {
            // End every watch first, so none of them sees the deletion.
            state.generation += 1;
        }
        let Some(mut old) = state
            .objects
            .get_mut(&(kind.group, kind.plural))
            .and_then(|objects| objects.remove(&(namespace.to_owned(), name.to_owned())))
        else {
            return false;
        };
        state.rv += 1;
        let rv = state.rv;
        Arc::make_mut(&mut old)["metadata"]["resourceVersion"] = rv.to_string().into();
        state.history.push(Change { rv, group: kind.group, plural: kind.plural, old: Some(old), new: None });
        if !seen {
            state.compacted = rv;
        }
        drop(state);
        self.shared.wake.send_modify(|n| *n += 1);
        true
    }

    /// Deletes an object; watches see `DELETED`. Returns whether it existed.
    ///
    /// # Panics
    /// When the kind is unknown.
    #[must_use = "whether the object existed"]
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.remove(api_version, kind, namespace, name, true)
    }

    /// Deletes an object while no watch is open: every open watch is ended
    /// first, and the history is compacted past the deletion, so a client
    /// that resumes watching gets 410 Gone and learns of the deletion only by
    /// listing again. Returns whether it existed.
    ///
    /// # Panics
    /// When the kind is unknown.
    #[must_use = "whether the object existed"]
    pub fn delete_unseen(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        self.remove(api_version, kind, namespace, name, false)
    }

    /// The requests served so far: `METHOD path?query`.
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// How many watches were answered with 410 Gone.
    #[must_use]
    pub fn gone_sent(&self) -> u64 {
        self.shared.lock().gone
    }

    /// The current resource version.
    #[must_use]
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Injects `fault` (or, with [`Fault::None`], clears it). Entering
    /// [`Fault::Down`], [`Fault::InternalError`] or
    /// [`Fault::TooManyRequests`] also cuts every open watch, so clients
    /// meet the fault at once.
    pub fn set_fault(&self, fault: Fault) {
        let mut state = self.shared.lock();
        state.fault = fault;
        if !matches!(fault, Fault::None | Fault::StalledWatches) {
            state.generation += 1;
        }
        drop(state);
        self.shared.wake.send_modify(|n| *n += 1);
    }

    /// Cuts every open watch mid-stream (the connection ends without an
    /// error event), as a load balancer or an API server restart does.
    pub fn drop_watches(&self) {
        self.shared.lock().generation += 1;
        self.shared.wake.send_modify(|n| *n += 1);
    }

    /// Compacts the history up to now and cuts every open watch: a client
    /// that resumes from its last version gets 410 Gone and must list again.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.compacted = state.rv + 1;
        state.generation += 1;
        drop(state);
        self.shared.wake.send_modify(|n| *n += 1);
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        if shared.lock().fault == Fault::Down {
            drop(stream);
            continue;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move {
                    // Down: the connection is cut instead of answered.
                    if shared.lock().fault == Fault::Down {
                        return Err(std::io::Error::other("the fake API server is down"));
                    }
                    Ok(route(&shared, &request))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("a valid response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn not_found(path: &str) -> Response<Body> {
    respond(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("the server could not find {path}")))
}

/// Decodes a query component (`%XX` and `+`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(request: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A parsed label selector: every requirement must hold.
#[derive(Clone, Debug, Default)]
struct Selector(Vec<(String, Requirement)>);

#[derive(Clone, Debug)]
enum Requirement {
    Exists,
    NotExists,
    Equals(String),
    NotEquals(String),
}

impl Selector {
    fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                (k.trim().to_owned(), Requirement::NotEquals(v.trim().to_owned()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k.trim().to_owned(), Requirement::Equals(v.trim().to_owned()))
            } else if let Some(k) = part.strip_prefix('!') {
                (k.trim().to_owned(), Requirement::NotExists)
            } else {
                (part.to_owned(), Requirement::Exists)
            };
            out.push(requirement);
        }
        Self(out)
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        self.0.iter().all(|(key, requirement)| {
            let value = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
            match requirement {
                Requirement::Exists => value.is_some(),
                Requirement::NotExists => value.is_none(),
                Requirement::Equals(want) => value == Some(want.as_str()),
                Requirement::NotEquals(want) => value != Some(want.as_str()),
            }
        })
    }
}

/// What a LIST or WATCH request asks for.
struct Target {
    kind: Resource,
    api_version: String,
    namespace: Option<String>,
    selector: Selector,
}

impl Target {
    fn wants(&self, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| meta_str(obj, "namespace") == Some(ns)) && self.selector.matches(obj)
    }

    /// The object as served at the requested version (a copy only when
    /// it was stored under another).
    fn present(&self, obj: &Arc<Value>) -> Arc<Value> {
        if obj.get("apiVersion").and_then(Value::as_str) == Some(self.api_version.as_str()) {
            return Arc::clone(obj);
        }
        let mut obj = Value::clone(obj);
        obj["apiVersion"] = self.api_version.clone().into();
        Arc::new(obj)
    }
}

fn route(shared: &Arc<Shared>, request: &Request<hyper::body::Incoming>) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let query = query(request);
    let fault = {
        let mut state = shared.lock();
        state.requests.push(format!("{} {}", request.method(), request.uri()));
        state.fault
    };
    match fault {
        Fault::InternalError => {
            let body = status(500, "InternalError", "an error on the server (injected) has prevented the request");
            return respond(StatusCode::INTERNAL_SERVER_ERROR, &body);
        }
        Fault::TooManyRequests { retry_after_seconds } => {
            let body = status(429, "TooManyRequests", "the server has received too many requests (injected)");
            let mut response = respond(StatusCode::TOO_MANY_REQUESTS, &body);
            response.headers_mut().insert("retry-after", retry_after_seconds.into());
            return response;
        }
        Fault::None | Fault::StalledWatches | Fault::Down => {}
    }
    if request.method() != hyper::Method::GET {
        let body = status(405, "MethodNotAllowed", "the fake API server is read-only over HTTP");
        return respond(StatusCode::METHOD_NOT_ALLOWED, &body);
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segments.as_slice() {
        ["api"] => return respond(StatusCode::OK, &json!({"kind": "APIVersions", "versions": ["v1"]})),
        ["apis"] => return respond(StatusCode::OK, &group_list(shared)),
        ["version"] => {
            return respond(StatusCode::OK, &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}));
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return not_found(&path),
    };
    if !shared.served(group, version) {
        return not_found(&path);
    }
    let (namespace, plural) = match rest {
        [] => return respond(StatusCode::OK, &resource_list(group, version)),
        [plural] => (None, *plural),
        ["namespaces", namespace, plural] => (Some((*namespace).to_owned()), *plural),
        _ => return not_found(&path),
    };
    let Some(kind) = KINDS.iter().copied().find(|k| k.group == group && k.plural == plural) else {
        return not_found(&path);
    };
    let api_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    let target = Target {
        kind,
        api_version,
        namespace,
        selector: Selector::parse(query.get("labelSelector").map_or("", String::as_str)),
    };
    if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        watch_response(shared, target, &query)
    } else {
        list_response(shared, &target, &query)
    }
}

fn group_list(shared: &Shared) -> Value {
    let group = |name: &str, versions: &[String]| {
        let list: Vec<Value> =
            versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
        json!({"name": name, "versions": list, "preferredVersion": list[0]})
    };
    let mut groups = vec![group("discovery.k8s.io", &["v1".to_owned()])];
    if !shared.options.mcs_versions.is_empty() {
        groups.push(group("multicluster.x-k8s.io", &shared.options.mcs_versions));
    }
    if shared.options.gke {
        groups.push(group("net.gke.io", &["v1".to_owned()]));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.group == group)
        .map(|k| {
            json!({"name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": true, "kind": k.kind,
                   "verbs": ["get", "list", "watch"]})
        })
        .collect();
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn list_response(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    // A token continues the list it came from: the same resource, namespace and selector.
    let list = format!(
        "{}/{} {:?} {}",
        target.kind.group,
        target.kind.plural,
        target.namespace,
        query.get("labelSelector").map_or("", String::as_str)
    );
    let mut state = shared.lock();
    // A continued list: the next page of the items as they were at its first page.
    let (rv, items, offset, paging): (u64, Page, usize, Option<u64>) =
        if let Some(token) = query.get("continue").filter(|t| !t.is_empty()) {
            let parsed = token.split_once('-').and_then(|(id, at)| Some((id.parse::<u64>().ok()?, at.parse().ok()?)));
            let Some(((id, offset), (rv, items))) = parsed.and_then(|(id, at)| {
                let (of, rv, items) = state.pagings.get(&id)?;
                (*of == list).then(|| ((id, at), (*rv, Arc::clone(items))))
            }) else {
                drop(state);
                let body = status(410, "Expired", "the provided continue parameter is too old or unknown");
                return respond(StatusCode::GONE, &body);
            };
            (rv, items, offset, Some(id))
        } else {
            let items: Vec<Arc<Value>> = state
                .objects
                .get(&(target.kind.group, target.kind.plural))
                .into_iter()
                .flat_map(BTreeMap::values)
                .filter(|o| target.wants(o))
                .map(|o| target.present(o))
                .collect();
            (state.rv, Arc::new(items), 0, None)
        };
    let end = limit.map_or(items.len(), |l| offset.saturating_add(l).min(items.len()));
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        let id = paging.unwrap_or_else(|| {
            state.next_paging += 1;
            let id = state.next_paging;
            state.pagings.insert(id, (list, rv, Arc::clone(&items)));
            while state.pagings.len() > PAGINGS_MAX {
                state.pagings.pop_first();
            }
            id
        });
        metadata["continue"] = format!("{id}-{end}").into();
        metadata["remainingItemCount"] = (items.len() - end).into();
    } else if let Some(id) = paging {
        state.pagings.remove(&id);
    }
    drop(state);
    // Written item by item: a tree of the whole list would copy every object.
    let head =
        json!({"kind": format!("{}List", target.kind.kind), "apiVersion": target.api_version, "metadata": metadata});
    let mut body = serde_json::to_vec(&head).expect("a list head serialises");
    body.pop(); // its closing brace
    body.extend_from_slice(br#","items":["#);
    for (i, item) in items.get(offset.min(end)..end).unwrap_or_default().iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &**item).expect("an object serialises");
    }
    body.extend_from_slice(b"]}");
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("a valid response")
}

fn event(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// The events a watch at `cursor` has not seen yet, and the new cursor.
fn pending(state: &State, target: &Target, cursor: u64) -> (Vec<Bytes>, u64) {
    let mut out = Vec::new();
    for change in state.history.iter().filter(|c| c.rv > cursor) {
        if change.group != target.kind.group || change.plural != target.kind.plural {
            continue;
        }
        let before = change.old.as_ref().is_some_and(|o| target.wants(o));
        let after = change.new.as_ref().is_some_and(|o| target.wants(o));
        let item = match (before, after, &change.new, &change.old) {
            (false, true, Some(new), _) => ("ADDED", new.clone()),
            (true, true, Some(new), _) => ("MODIFIED", new.clone()),
            // Deleted, or no longer selected: the last state, at the change's version.
            (true, false, new, Some(old)) => {
                let mut last = new.clone().unwrap_or_else(|| old.clone());
                Arc::make_mut(&mut last)["metadata"]["resourceVersion"] = change.rv.to_string().into();
                ("DELETED", last)
            }
            _ => continue,
        };
        out.push(event(item.0, &target.present(&item.1)));
    }
    (out, state.rv)
}

fn watch_response(shared: &Arc<Shared>, target: Target, query: &BTreeMap<String, String>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout =
        query.get("timeoutSeconds").and_then(|t| t.parse().ok()).map_or(Duration::from_mins(5), Duration::from_secs);
    let requested = query.get("resourceVersion").cloned().unwrap_or_default();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut wake = shared.wake.subscribe();
        let start = {
            let state = shared.lock();
            match requested.parse::<u64>() {
                Ok(rv) if rv > 0 && rv < state.compacted => {
                    let message = format!("too old resource version: {rv} ({})", state.compacted);
                    drop(state);
                    shared.lock().gone += 1;
                    Err(message)
                }
                Ok(rv) if rv > 0 => Ok((state.generation, rv, Vec::new())),
                // No version: the current objects first, as ADDED.
                _ => {
                    let initial = state
                        .objects
                        .get(&(target.kind.group, target.kind.plural))
                        .into_iter()
                        .flat_map(BTreeMap::values)
                        .filter(|o| target.wants(o))
                        .map(|o| event("ADDED", &target.present(o)))
                        .collect();
                    Ok((state.generation, state.rv, initial))
                }
            }
        };
        let (generation, mut cursor, first) = match start {
            Ok(start) => start,
            Err(message) => {
                let _ = tx.send(event("ERROR", &status(410, "Expired", &message))).await;
                return;
            }
        };
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bookmark = tokio::time::interval(shared.options.bookmark_interval);
        bookmark.tick().await;
        let mut mark_due = false;
        // Bounded by the watch's timeout.
        loop {
            let (lines, next) = {
                let state = shared.lock();
                if state.generation != generation {
                    return;
                }
                if state.fault == Fault::StalledWatches {
                    // Connected, and silent: nothing until the stall ends.
                    mark_due = false;
                    (Vec::new(), cursor)
                } else {
                    pending(&state, &target, cursor)
                }
            };
            cursor = next;
            for line in lines {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            if mark_due {
                mark_due = false;
                let mark = json!({"kind": target.kind.kind, "apiVersion": target.api_version,
                                  "metadata": {"resourceVersion": cursor.to_string()}});
                if tx.send(event("BOOKMARK", &mark)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                changed = wake.changed() => if changed.is_err() { return },
                _ = bookmark.tick(), if bookmarks => mark_due = true,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("a valid response")
}

/// Renders the request log for failure messages.
#[must_use]
pub fn render_requests(requests: &[String]) -> String {
    let mut out = String::new();
    for r in requests {
        let _ = writeln!(out, "  {r}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        for (selector, want) in [
            ("", true),
            ("a", true),
            ("c", false),
            ("!c", true),
            ("!a", false),
            ("a=1", true),
            ("a==1", true),
            ("a=2", false),
            ("a!=2", true),
            ("a,b=2", true),
            ("a,b=3", false),
        ] {
            assert_eq!(Selector::parse(selector).matches(&obj), want, "{selector:?}");
        }
    }

    /// A GET on the server, over one HTTP/1.1 connection: the status and the body.
    fn get(api: &FakeApi, path: &str) -> (u16, Value) {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(api.addr).expect("connect to the fake API");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n").expect("send the request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read the response");
        let text = String::from_utf8(response).expect("a UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
        let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status in {head:?}"));
        // The body may come chunked: the JSON object is between its first `{` and last `}`.
        let json = body.find('{').zip(body.rfind('}')).map_or("null", |(a, b)| &body[a..=b]);
        (code, serde_json::from_str(json).unwrap_or_else(|e| panic!("body of {path}: {e}: {body:?}")))
    }

    fn slice_object(name: &str) -> Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "ns", "labels": {"multicluster.kubernetes.io/service-name": "s"}},
               "addressType": "IPv4", "endpoints": []})
    }

    fn names(list: &Value) -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().expect("name").to_owned())
            .collect()
    }

    #[test]
    fn lists_page_with_limit_and_continue_at_the_first_pages_version() {
        let api = FakeApi::start();
        for name in ["a", "b", "c", "d", "e"] {
            api.apply(slice_object(name));
        }
        let base = "/apis/discovery.k8s.io/v1/endpointslices";
        let (code, first) = get(&api, &format!("{base}?limit=2"));
        assert_eq!((code, names(&first)), (200, vec!["a".to_owned(), "b".to_owned()]), "first page: {first}");
        let version = first["metadata"]["resourceVersion"].clone();
        assert_eq!(first["metadata"]["remainingItemCount"], 3, "{first}");
        // A change between pages is not in them: they are at the first page's version.
        api.apply(slice_object("bb"));
        let token = first["metadata"]["continue"].as_str().expect("a continue token").to_owned();
        // A token continues only its own list.
        let (code, _) = get(&api, &format!("{base}?limit=2&continue={token}&labelSelector=other"));
        assert_eq!(code, 410, "a token used for another selector");
        let (_, second) = get(&api, &format!("{base}?limit=2&continue={token}"));
        assert_eq!(names(&second), ["c", "d"], "second page: {second}");
        assert_eq!(second["metadata"]["resourceVersion"], version, "{second}");
        let token = second["metadata"]["continue"].as_str().expect("a continue token").to_owned();
        let (_, last) = get(&api, &format!("{base}?limit=2&continue={token}"));
        assert_eq!(names(&last), ["e"], "last page: {last}");
        assert!(last["metadata"].get("continue").is_none(), "the last page has no token: {last}");
        // The token is spent with its last page, and an unknown one is expired.
        let (code, expired) = get(&api, &format!("{base}?limit=2&continue={token}"));
        assert_eq!((code, expired["code"].clone()), (410, json!(410)), "a spent token: {expired}");
        // Without a limit, one page of everything now.
        let (_, whole) = get(&api, base);
        assert_eq!(names(&whole), ["a", "b", "bb", "c", "d", "e"], "{whole}");
    }

    #[test]
    fn query_decoding() {
        assert_eq!(decode("multicluster.kubernetes.io%2Fservice-name"), "multicluster.kubernetes.io/service-name");
        assert_eq!(decode("a+b%3d"), "a b=");
        assert_eq!(decode("100%"), "100%");
    }
}
