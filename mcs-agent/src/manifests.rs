//! Loading `ServiceImport`s, `EndpointSlice`s, GKE `ServiceImport`s and
//! `Endpoints` from a directory of manifests.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory is read,
//! in file-name order; hidden files and subdirectories are skipped. A YAML file
//! may hold several documents separated by `---` lines.
//!
//! In each document (and in each item of a `List`):
//! - a `ServiceImport` of `multicluster.x-k8s.io/v1alpha1` or `/v1beta1`, a
//!   `ServiceImport` of `net.gke.io/v1` (GKE), an `EndpointSlice` of
//!   `discovery.k8s.io/v1` and an `Endpoints` of `v1` are read;
//! - a `List`, `ServiceImportList`, `EndpointSliceList` or `EndpointsList` is
//!   read item by item (a typed list's items may leave out `apiVersion` and
//!   `kind`: they are the list's);
//! - any other object is ignored (logged at debug level).
//!
//! A document that cannot be read yields a [`LoadError`] naming the file, the
//! document, the object and the field; the other documents are read all the
//! same.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Map, Value};

use crate::k8s::{self, GkeServiceImport, ServiceImport};

use crate::translate::Inputs;

/// A document, or a whole file, that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based number of the document in the file, counting only documents
    /// that are not empty; 0 when the error is about the whole file.
    pub document: usize,
    /// `"Kind namespace/name"` (or `"Kind name"`) when known.
    pub object: Option<String>,
    /// What is wrong, starting with the field's path when there is one.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, " document {}", self.document)?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LoadError {}

/// Reads every manifest file directly in `dir`.
///
/// Unreadable files and documents become [`LoadError`]s; only a directory that
/// cannot be listed is an `Err`.
///
/// # Errors
/// When `dir` cannot be listed.
pub fn load_dir(dir: &Path) -> anyhow::Result<(Inputs, Vec<LoadError>)> {
    let mut inputs = Inputs::default();
    let (files, mut errors) = manifest_files(dir)?;
    for (path, _) in files {
        let (file_inputs, file_errors) = load_file(&path);
        inputs.extend(file_inputs);
        errors.extend(file_errors);
    }
    Ok((inputs, errors))
}

/// Manifest files with their metadata, and the entries that could not be examined.
pub type ManifestFiles = (Vec<(PathBuf, fs::Metadata)>, Vec<LoadError>);

/// The manifest files directly in `dir` (as [`load_dir`] reads them), in
/// file-name order, each with its metadata (symlinks followed); entries whose
/// metadata cannot be read become [`LoadError`]s.
///
/// # Errors
/// When `dir` cannot be listed.
pub fn manifest_files(dir: &Path) -> anyhow::Result<ManifestFiles> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| format!("reading manifest directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading manifest directory {}", dir.display()))?;
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            tracing::debug!(file = %path.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if name.starts_with('.') || !is_manifest_name(name) {
            continue;
        }
        // `fs::metadata` follows symlinks: a link to a manifest is read.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push((name.to_owned(), path, meta)),
            Ok(_) => tracing::debug!(file = %path.display(), "skipping a manifest-named entry that is not a file"),
            Err(err) => errors.push(file_error(path, &err)),
        }
    }
    files.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Ok((files.into_iter().map(|(_, path, meta)| (path, meta)).collect(), errors))
}

/// Reads one manifest file; a file that cannot be read is one [`LoadError`].
#[must_use]
pub fn load_file(path: &Path) -> (Inputs, Vec<LoadError>) {
    match fs::read_to_string(path) {
        Ok(text) => parse_str(path, &text),
        Err(err) => (Inputs::default(), vec![file_error(path.to_owned(), &err)]),
    }
}

/// Reads the manifests in `text`, which came from `source_name`.
///
/// `source_name` is used in errors and picks the format: a `.json` name is
/// read as one JSON document, anything else as (multi-document) YAML.
#[must_use]
pub fn parse_str(source_name: &Path, text: &str) -> (Inputs, Vec<LoadError>) {
    let mut reader = Reader { file: source_name, document: 0, inputs: Inputs::default(), errors: Vec::new() };
    let is_json = source_name.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        if !text.trim().is_empty() {
            reader.document = 1;
            if reader.fast_json(text, "", None) {
                return (reader.inputs, reader.errors);
            }
            match serde_json::from_str::<Value>(text) {
                Ok(value) => reader.object(value, ""),
                Err(err) => reader.error(None, err.to_string()),
            }
        }
    } else {
        for (first_line, chunk) in split_yaml_documents(text) {
            if is_blank_yaml(chunk) {
                continue;
            }
            reader.document += 1;
            // Pad with the lines before the chunk so that the parser's line
            // numbers are those of the file.
            let padded = format!("{}{chunk}", "\n".repeat(first_line));
            match serde_norway::from_str::<Value>(&padded) {
                Ok(value) => reader.object(value, ""),
                Err(err) => reader.error(None, err.to_string()),
            }
        }
    }
    (reader.inputs, reader.errors)
}

fn is_manifest_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["yaml", "yml", "json"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn file_error(file: PathBuf, err: &std::io::Error) -> LoadError {
    LoadError { file, document: 0, object: None, message: format!("cannot read: {err}") }
}

/// Splits a YAML stream at its `---` lines, as `kubectl` does. Returns each
/// document's text with the 0-based line it starts on. The text after `---` on
/// a separator line belongs to the next document.
fn split_yaml_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut start_line = 0;
    let mut offset = 0;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let is_separator =
            line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        if is_separator {
            documents.push((start_line, &text[start..offset]));
            start = offset + 3;
            start_line = line_no;
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    documents
}

/// Whether a YAML document holds nothing but blank lines and comments.
fn is_blank_yaml(chunk: &str) -> bool {
    chunk.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#')
    })
}

/// Joins a field path prefix (`""`, `"items[2]"`) and a path inside it.
fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// `"path: message"`, or the message alone when the path is empty.
fn at(path: &str, message: impl fmt::Display) -> String {
    if path.is_empty() { message.to_string() } else { format!("{path}: {message}") }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// `"Kind namespace/name"` from an object's raw fields, when its name is known.
fn object_label(kind: &str, map: &Map<String, Value>) -> Option<String> {
    let metadata = map.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    Some(match metadata.get("namespace").and_then(Value::as_str) {
        Some(namespace) if !namespace.is_empty() => format!("{kind} {namespace}/{name}"),
        _ => format!("{kind} {name}"),
    })
}

/// The kinds of typed lists that are read, with the kind of their items.
const TYPED_LISTS: [(&str, &str); 3] = [
    ("ServiceImportList", k8s::SERVICE_IMPORT_KIND),
    ("EndpointSliceList", k8s::ENDPOINT_SLICE_KIND),
    ("EndpointsList", k8s::ENDPOINTS_KIND),
];

/// Reads the documents of one file.
struct Reader<'a> {
    file: &'a Path,
    /// The number of the document being read (1-based).
    document: usize,
    inputs: Inputs,
    errors: Vec<LoadError>,
}

impl Reader<'_> {
    fn error(&mut self, object: Option<String>, message: String) {
        self.errors.push(LoadError { file: self.file.to_owned(), document: self.document, object, message });
    }

    /// Reads one object; `prefix` is its path in the document (`""` for the
    /// document itself, `"items[2]"` for an item of a list).
    fn object(&mut self, value: Value, prefix: &str) {
        let map = match &value {
            Value::Null => return, // An empty document or a null list item.
            Value::Object(map) => map,
            other => {
                let message =
                    at(prefix, format_args!("expected a mapping with apiVersion and kind, found {}", describe(other)));
                self.error(None, message);
                return;
            }
        };
        let (api_version, kind) = match (Self::string_field(map, "apiVersion"), Self::string_field(map, "kind")) {
            (Ok(api_version), Ok(kind)) => (api_version.to_owned(), kind.to_owned()),
            (Err(message), _) => {
                let object = object_label("?", map);
                self.error(object, at(&join_path(prefix, "apiVersion"), message));
                return;
            }
            (_, Err(message)) => {
                let object = object_label("?", map);
                self.error(object, at(&join_path(prefix, "kind"), message));
                return;
            }
        };
        let object = object_label(&kind, map);
        if k8s::is_service_import(&api_version, &kind) {
            if let Some(import) = self.typed::<ServiceImport>(value, prefix, object) {
                self.inputs.imports.push(Arc::new(import));
            }
        } else if k8s::is_gke_service_import(&api_version, &kind) {
            if let Some(import) = self.typed::<GkeServiceImport>(value, prefix, object) {
                self.inputs.gke_imports.push(Arc::new(import));
            }
        } else if k8s::is_endpoint_slice(&api_version, &kind) {
            if let Some(slice) = self.typed::<EndpointSlice>(value, prefix, object) {
                self.inputs.slices.push(std::sync::Arc::new(slice.into()));
            }
        } else if k8s::is_endpoints(&api_version, &kind) {
            if let Some(endpoints) = self.typed::<Endpoints>(value, prefix, object) {
                self.inputs.endpoints.push(endpoints);
            }
        } else if kind == "List" {
            self.list(value, prefix, None);
        } else if let Some(&(_, item_kind)) = TYPED_LISTS.iter().find(|(list_kind, _)| *list_kind == kind) {
            self.list(value, prefix, Some((&api_version, item_kind)));
        } else {
            tracing::debug!(
                file = %self.file.display(),
                document = self.document,
                api_version,
                kind,
                "ignoring an object of a kind the agent does not read"
            );
        }
    }

    fn string_field<'m>(map: &'m Map<String, Value>, key: &str) -> Result<&'m str, String> {
        match map.get(key) {
            None | Some(Value::Null) => Err("missing".to_owned()),
            Some(Value::String(s)) if s.is_empty() => Err("empty".to_owned()),
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(format!("expected a string, found {}", describe(other))),
        }
    }

    /// Deserializes an object of a kind that is read; `None` after an error.
    fn typed<T: serde::de::DeserializeOwned + k8s::Object>(
        &mut self,
        value: Value,
        prefix: &str,
        object: Option<String>,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(typed) if typed.name().is_empty() => {
                self.error(object, at(&join_path(prefix, "metadata.name"), "missing"));
                None
            }
            Ok(typed) => Some(typed),
            Err(err) => {
                let path = err.path().to_string();
                let path = if path == "." { String::new() } else { path };
                self.error(object, at(&join_path(prefix, &path), err.inner()));
                None
            }
        }
    }

    /// Reads one JSON object (a list item by item) straight from its text
    /// into its type, without a tree of values: at scale the tree was most
    /// of the reading's time and memory. Returns false, having read nothing,
    /// where the object (or a list item) is not plainly well formed: the
    /// tree path then reads that part, with its messages. `defaults` is a
    /// typed list's `apiVersion` and `kind`.
    fn fast_json(&mut self, text: &str, prefix: &str, defaults: Option<(&str, &str)>) -> bool {
        /// What is read first of every object.
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "apiVersion", default, deserialize_with = "written")]
            api_version: TypeField,
            #[serde(default, deserialize_with = "written")]
            kind: TypeField,
            #[serde(borrow, default)]
            items: Option<Vec<&'a serde_json::value::RawValue>>,
        }
        /// `apiVersion` or `kind` as written.
        #[derive(Default, PartialEq)]
        enum TypeField {
            #[default]
            Absent,
            Null,
            Given(String),
        }
        fn written<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TypeField, D::Error> {
            Ok(<Option<String> as serde::Deserialize>::deserialize(d)?.map_or(TypeField::Null, TypeField::Given))
        }
        /// The object, when it reads as `T` and has a name.
        fn named<T: serde::de::DeserializeOwned + k8s::Object>(text: &str) -> Option<T> {
            serde_json::from_str::<T>(text).ok().filter(|t| !t.name().is_empty())
        }
        // Only a mapping is an object (serde would read a sequence into the
        // head's fields in order).
        if !text.trim_start().starts_with('{') {
            return false;
        }
        let Ok(head) = serde_json::from_str::<Head<'_>>(text) else { return false };
        // A type field written as null is an error the tree path reports.
        if head.api_version == TypeField::Null || head.kind == TypeField::Null {
            return false;
        }
        // A typed list's item may leave out its type fields: the tree path
        // adds them (the typed structs require them).
        let own_types = head.api_version != TypeField::Absent && head.kind != TypeField::Absent;
        let given = |field: TypeField, default: Option<&str>| match field {
            TypeField::Given(text) => Some(text).filter(|s| !s.is_empty()),
            TypeField::Absent | TypeField::Null => default.map(str::to_owned).filter(|s| !s.is_empty()),
        };
        let (Some(api_version), Some(kind)) =
            (given(head.api_version, defaults.map(|d| d.0)), given(head.kind, defaults.map(|d| d.1)))
        else {
            return false;
        };
        if kind == "List" || TYPED_LISTS.iter().any(|(list_kind, _)| *list_kind == kind) {
            let item_defaults = TYPED_LISTS.iter().find(|(list_kind, _)| *list_kind == kind).map(|(_, k)| *k);
            for (index, item) in head.items.unwrap_or_default().into_iter().enumerate() {
                let item_prefix = join_path(prefix, &format!("items[{index}]"));
                let item_defaults = item_defaults.map(|k| (api_version.as_str(), k));
                if item.get() == "null" || self.fast_json(item.get(), &item_prefix, item_defaults) {
                    continue;
                }
                match serde_json::from_str::<Value>(item.get()) {
                    Ok(mut value) => {
                        if let (Some((api_version, kind)), Value::Object(map)) = (item_defaults, &mut value) {
                            map.entry("apiVersion").or_insert_with(|| api_version.into());
                            map.entry("kind").or_insert_with(|| kind.into());
                        }
                        self.object(value, &item_prefix);
                    }
                    Err(err) => self.error(None, at(&item_prefix, err)),
                }
            }
            return true;
        }
        let read = k8s::is_service_import(&api_version, &kind)
            || k8s::is_gke_service_import(&api_version, &kind)
            || k8s::is_endpoint_slice(&api_version, &kind)
            || k8s::is_endpoints(&api_version, &kind);
        if read && !own_types {
            return false;
        }
        if k8s::is_service_import(&api_version, &kind) {
            let Some(import) = named::<ServiceImport>(text) else { return false };
            self.inputs.imports.push(Arc::new(import));
        } else if k8s::is_gke_service_import(&api_version, &kind) {
            let Some(import) = named::<GkeServiceImport>(text) else { return false };
            self.inputs.gke_imports.push(Arc::new(import));
        } else if k8s::is_endpoint_slice(&api_version, &kind) {
            let Some(slice) = named::<EndpointSlice>(text) else { return false };
            self.inputs.slices.push(std::sync::Arc::new(slice.into()));
        } else if k8s::is_endpoints(&api_version, &kind) {
            let Some(endpoints) = named::<Endpoints>(text) else { return false };
            self.inputs.endpoints.push(endpoints);
        } else {
            tracing::debug!(
                file = %self.file.display(),
                document = self.document,
                api_version,
                kind,
                "ignoring an object of a kind the agent does not read"
            );
        }
        true
    }

    /// Reads the items of a list. `defaults` is the `apiVersion` and `kind`
    /// that the items of a typed list may leave out.
    fn list(&mut self, value: Value, prefix: &str, defaults: Option<(&str, &str)>) {
        let Value::Object(mut map) = value else { return };
        let items = match map.remove("items") {
            None | Some(Value::Null) => return,
            Some(Value::Array(items)) => items,
            Some(other) => {
                let message =
                    at(&join_path(prefix, "items"), format_args!("expected a sequence, found {}", describe(&other)));
                self.error(None, message);
                return;
            }
        };
        for (index, mut item) in items.into_iter().enumerate() {
            if let (Some((api_version, kind)), Value::Object(item_map)) = (defaults, &mut item) {
                item_map.entry("apiVersion").or_insert_with(|| api_version.into());
                item_map.entry("kind").or_insert_with(|| kind.into());
            }
            self.object(item, &join_path(prefix, &format!("items[{index}]")));
        }
    }
}

/// The objects whose name is checked after reading.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::Object as _;

    fn parse(name: &str, text: &str) -> (Inputs, Vec<LoadError>) {
        parse_str(Path::new(name), text)
    }

    fn import_names(inputs: &Inputs) -> Vec<String> {
        inputs.imports.iter().map(|i| format!("{}/{}", i.namespace(), i.name())).collect()
    }

    fn slice_names(inputs: &Inputs) -> Vec<String> {
        inputs.slices.iter().map(|s| k8s::name_of(&s.metadata).to_owned()).collect()
    }

    fn messages(errors: &[LoadError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    const IMPORT_WEB: &str = "\
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata:
  namespace: demo
  name: web
spec:
  type: ClusterSetIP
  ips: [198.19.0.1]
  ports:
  - name: http
    protocol: TCP
    port: 80
";

    const SLICE_EAST: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: demo
  name: web-east
  labels:
    multicluster.kubernetes.io/service-name: web
    multicluster.kubernetes.io/source-cluster: east
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: 8080
endpoints:
- addresses: [198.18.0.10]
  conditions: {ready: true}
";

    #[test]
    fn reads_a_multi_document_file() {
        let text = format!(
            "# header comment\n---\n{IMPORT_WEB}---\n{SLICE_EAST}--- # trailing comment\n\
             apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceImport\n\
             metadata: {{name: api, namespace: other}}\nspec: {{type: Headless}}\n---\n"
        );
        let (inputs, errors) = parse("all.yaml", &text);
        assert_eq!(messages(&errors), Vec::<String>::new());
        assert_eq!(import_names(&inputs), ["demo/web", "other/api"]);
        assert_eq!(slice_names(&inputs), ["web-east"]);
        let web = &inputs.imports[0];
        assert_eq!(web.spec.ips, ["198.19.0.1"]);
        assert_eq!(web.spec.ports[0].port, 80);
        let slice = &inputs.slices[0];
        assert_eq!(slice.address_type, "IPv4");
        let ports = slice.ports.as_ref().expect("slice ports");
        assert_eq!(ports[0].port, Some(8080));
        assert_eq!(inputs.imports[1].spec.type_, "Headless");
    }

    #[test]
    fn a_malformed_document_does_not_hide_the_others() {
        let bad = IMPORT_WEB.replace("port: 80", "port: x");
        let text = format!("{IMPORT_WEB}---\n{}---\n{bad}---\n{SLICE_EAST}", IMPORT_WEB.replace("web", "api"));
        let (inputs, errors) = parse("deploy/examples/x.yaml", &text);
        assert_eq!(import_names(&inputs), ["demo/web", "demo/api"]);
        assert_eq!(slice_names(&inputs), ["web-east"]);
        assert_eq!(
            messages(&errors),
            [
                r#"deploy/examples/x.yaml document 3 (ServiceImport demo/web): spec.ports[0].port: invalid type: string "x", expected i64"#
            ]
        );
        assert_eq!(errors[0].document, 3);
        assert_eq!(errors[0].object.as_deref(), Some("ServiceImport demo/web"));
    }

    #[test]
    fn errors_name_file_document_object_and_field() {
        let bad_slice = SLICE_EAST.replace("port: 8080", "port: 8080.5");
        let no_name = IMPORT_WEB.replace("  name: web\n", "");
        let text = format!("{bad_slice}---\n{no_name}---\nkind: ServiceImport\n---\n- just\n- a list\n");
        let (inputs, errors) = parse("m.yaml", &text);
        assert!(inputs.imports.is_empty() && inputs.slices.is_empty(), "{inputs:?}");
        assert_eq!(
            messages(&errors),
            [
                "m.yaml document 1 (EndpointSlice demo/web-east): ports[0].port: invalid type: floating point `8080.5`, expected i32",
                "m.yaml document 2: metadata.name: missing",
                "m.yaml document 3: apiVersion: missing",
                "m.yaml document 4: expected a mapping with apiVersion and kind, found a sequence",
            ]
        );
    }

    #[test]
    fn a_yaml_syntax_error_names_the_line_of_the_file_and_spares_the_others() {
        let text = format!("{IMPORT_WEB}---\nmetadata: [unclosed\n---\n{SLICE_EAST}");
        let (inputs, errors) = parse("s.yaml", &text);
        assert_eq!(import_names(&inputs), ["demo/web"]);
        assert_eq!(slice_names(&inputs), ["web-east"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 2);
        let separator_line = IMPORT_WEB.lines().count() + 1;
        assert!(
            errors[0].message.contains(&format!("line {}", separator_line + 1)),
            "the error should give the line in the file: {}",
            errors[0]
        );
    }

    #[test]
    fn other_kinds_are_ignored() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: web, namespace: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec: {replicas: \"not even checked\"}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: old, namespace: demo}
---
apiVersion: v1
kind: ConfigMapList
items: [{kind: ServiceImport}]
";
        let (inputs, errors) = parse("other.yaml", text);
        assert!(inputs.imports.is_empty() && inputs.slices.is_empty(), "{inputs:?}");
        assert_eq!(messages(&errors), Vec::<String>::new());
    }

    #[test]
    fn lists_are_read_item_by_item() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: demo}
- apiVersion: multicluster.x-k8s.io/v1beta1
  kind: ServiceImport
  metadata: {name: web, namespace: demo}
  spec: {ips: [198.19.0.1], ports: [{port: 80}]}
- apiVersion: multicluster.x-k8s.io/v1beta1
  kind: ServiceImport
  metadata: {name: bad, namespace: demo}
  spec: {ports: [{port: "80"}]}
- apiVersion: v1
  kind: List
  items:
  - apiVersion: multicluster.x-k8s.io/v1beta1
    kind: ServiceImport
    metadata: {name: nested, namespace: demo}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSliceList
items:
- metadata: {name: typed-item, namespace: demo}
  addressType: IPv4
  endpoints: []
"#;
        let (inputs, errors) = parse("list.yaml", text);
        assert_eq!(import_names(&inputs), ["demo/web", "demo/nested"]);
        assert_eq!(slice_names(&inputs), ["typed-item"]);
        assert_eq!(
            messages(&errors),
            [
                r#"list.yaml document 1 (ServiceImport demo/bad): items[2].spec.ports[0].port: invalid type: string "80", expected i64"#
            ]
        );
    }

    const GKE_IMPORT: &str = "\
apiVersion: net.gke.io/v1
kind: ServiceImport
metadata:
  namespace: demo
  name: web
  annotations:
    net.gke.io/derived-service: gke-mcs-web
status:
  type: ClusterSetIP
  ips: [198.19.0.5]
  ports:
  - name: http
    protocol: TCP
    port: 80
";

    const ENDPOINTS: &str = "\
apiVersion: v1
kind: Endpoints
metadata:
  namespace: demo
  name: gke-mcs-web
subsets:
- addresses:
  - ip: 198.18.0.10
  notReadyAddresses:
  - ip: 198.18.0.11
  ports:
  - name: http
    port: 8080
    protocol: TCP
";

    #[test]
    fn reads_gke_imports_and_endpoints() {
        let list = "\
apiVersion: net.gke.io/v1
kind: ServiceImportList
items:
- metadata: {name: api, namespace: demo}
  spec: {ips: [198.19.0.6], ports: [{port: 81}]}
---
apiVersion: v1
kind: EndpointsList
items:
- metadata: {name: gke-mcs-api, namespace: demo}
  subsets: [{addresses: [{ip: 198.18.0.12}], ports: [{port: 8081}]}]
";
        let text = format!("{GKE_IMPORT}---\n{ENDPOINTS}---\n{list}");
        let (inputs, errors) = parse("gke.yaml", &text);
        assert_eq!(messages(&errors), Vec::<String>::new());
        assert!(inputs.imports.is_empty(), "GKE imports are not MCS imports: {inputs:?}");
        let gke: Vec<_> = inputs.gke_imports.iter().map(|i| format!("{}/{}", i.namespace(), i.name())).collect();
        assert_eq!(gke, ["demo/web", "demo/api"]);
        assert_eq!(inputs.gke_imports[0].status.as_ref().expect("status").ips, ["198.19.0.5"]);
        assert_eq!(inputs.gke_imports[1].spec.as_ref().expect("spec").ports[0].port, 81);
        let endpoints: Vec<_> = inputs.endpoints.iter().map(|e| k8s::name_of(&e.metadata).to_owned()).collect();
        assert_eq!(endpoints, ["gke-mcs-web", "gke-mcs-api"]);
        let subset = &inputs.endpoints[0].subsets.as_ref().expect("subsets")[0];
        assert_eq!(subset.not_ready_addresses.as_ref().expect("not ready")[0].ip, "198.18.0.11");
    }

    #[test]
    fn gke_and_endpoints_errors_name_file_document_object_and_field() {
        let bad_import = GKE_IMPORT.replace("port: 80", "port: eighty");
        let bad_endpoints = ENDPOINTS.replace("- ip: 198.18.0.10", "- ip: [198.18.0.10]");
        let no_name = ENDPOINTS.replace("  name: gke-mcs-web\n", "");
        let text = format!("{bad_import}---\n{bad_endpoints}---\n{no_name}---\n{GKE_IMPORT}");
        let (inputs, errors) = parse("g.yaml", &text);
        assert_eq!(inputs.gke_imports.len(), 1, "the good import is still read");
        assert!(inputs.endpoints.is_empty());
        let messages = messages(&errors);
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert_eq!(
            messages[0],
            r#"g.yaml document 1 (ServiceImport demo/web): status.ports[0].port: invalid type: string "eighty", expected i64"#
        );
        assert!(
            messages[1].starts_with(
                "g.yaml document 2 (Endpoints demo/gke-mcs-web): subsets[0].addresses[0].ip: invalid type: sequence"
            ),
            "{}",
            messages[1]
        );
        assert_eq!(messages[2], "g.yaml document 3: metadata.name: missing");
    }

    #[test]
    fn json_files_are_read() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
             "metadata": {"name": "web", "namespace": "demo"},
             "spec": {"ips": ["198.19.0.1"], "ports": [{"name": "http", "port": 80}]}}
        ]}"#;
        let (inputs, errors) = parse("x.json", text);
        assert_eq!(messages(&errors), Vec::<String>::new());
        assert_eq!(import_names(&inputs), ["demo/web"]);

        let (_, errors) = parse("broken.json", "{\"kind\": ");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 1);
    }

    /// JSON is read straight into the types where it can be, and through a
    /// tree of values where an item is not plainly well formed; YAML always
    /// goes through the tree. The same text (JSON is YAML) must give the
    /// same objects and the same errors either way.
    #[test]
    fn json_read_straight_equals_json_read_as_a_tree() {
        let import = |name: &str, port: &str| {
            format!(
                r#"{{"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
                    "metadata": {{"name": "{name}", "namespace": "demo"}},
                    "spec": {{"ips": ["198.19.0.1"], "ports": [{{"name": "http", "port": {port}}}]}}}}"#
            )
        };
        let slice = |name: &str, extra: &str| {
            format!(
                r#"{{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {{"name": "{name}", "namespace": "demo",
                                 "labels": {{"multicluster.kubernetes.io/service-name": "web"}}}},
                    "addressType": "IPv4", "ports": [{{"name": "http", "port": 8080}}],
                    "endpoints": [{{"addresses": ["198.18.0.1"], "conditions": {{"ready": true}},
                                   "nodeName": "n1", "zone": "z"}}]{extra}}}"#
            )
        };
        let items = [
            import("good", "80"),
            import("bad-port", "\"eighty\""),
            import("", "80"),
            slice("good-slice", ""),
            slice("bad-slice", r#", "endpoints": 7"#),
            slice("", ""),
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}}"#.to_owned(),
            r#"{"kind": "ServiceImport"}"#.to_owned(),
            "null".to_owned(),
            "[1, 2]".to_owned(),
            // A sequence is no object, whatever it holds; a null type field is an error.
            r#"["v1", "ConfigMap"]"#.to_owned(),
            format!(r#"["v1", "List", [{}]]"#, import("in-a-sequence", "80")),
            format!(r#"{{"apiVersion": null, "kind": "List", "items": [{}]}}"#, import("under-null", "80")),
            // A typed list's items may leave their type fields out.
            r#"{"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImportList",
                "items": [{"metadata": {"name": "typed", "namespace": "demo"},
                           "spec": {"ips": ["198.19.0.2"], "ports": [{"port": 81}]}}]}"#
                .to_owned(),
        ];
        // The straight path takes well-formed objects and leaves the others.
        let mut reader =
            Reader { file: Path::new("set.json"), document: 1, inputs: Inputs::default(), errors: Vec::new() };
        for (item, straight) in
            [(0, true), (1, false), (2, false), (3, true), (4, false), (5, false), (6, true), (7, false), (10, false)]
                .into_iter()
                .chain([(11, false), (12, false)])
        {
            assert_eq!(reader.fast_json(&items[item], "", None), straight, "item {item}: {}", items[item]);
        }
        assert_eq!((reader.inputs.imports.len(), reader.inputs.slices.len()), (1, 1), "read straight");
        let text = format!(r#"{{"apiVersion": "v1", "kind": "List", "items": [{}]}}"#, items.join(",\n"));
        assert!(reader.fast_json(&text, "", None), "a list is read straight, its bad items through the tree");
        let (json, json_errors) = parse("set.json", &text);
        let (yaml, yaml_errors) = parse("set.yaml", &text);
        assert_eq!(import_names(&json), ["demo/good", "demo/typed"], "{json_errors:?}");
        assert_eq!(slice_names(&json), ["good-slice"], "{json_errors:?}");
        assert_eq!(format!("{:?}", json.imports), format!("{:?}", yaml.imports), "the imports");
        assert_eq!(json.slices, yaml.slices, "the slices");
        let without_file = |errors: &[LoadError]| -> Vec<String> {
            errors.iter().map(|e| format!("{} {:?} {}", e.document, e.object, e.message)).collect()
        };
        assert_eq!(without_file(&json_errors), without_file(&yaml_errors), "the errors");
        assert_eq!(json_errors.len(), 9, "{json_errors:#?}");
        for (item, field) in [(1, "spec.ports[0].port"), (2, "metadata.name"), (4, "endpoints"), (5, "metadata.name")] {
            let path = format!("items[{item}].{field}");
            assert!(json_errors.iter().any(|e| e.message.starts_with(&path)), "no error at {path}: {json_errors:#?}");
        }
    }

    #[test]
    fn blank_documents_are_not_counted() {
        let bad = IMPORT_WEB.replace("port: 80", "port: []");
        let text = format!("---\n# only a comment\n---\n\n---\n{bad}");
        let (_, errors) = parse("b.yaml", &text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 1);
    }

    #[test]
    fn load_dir_reads_manifest_files_in_name_order() {
        let temp = tempfile::tempdir().expect("create a temporary directory");
        let dir = temp.path().to_owned();
        let write = |name: &str, text: &str| fs::write(dir.join(name), text).expect("write manifest");
        write("b.yaml", &IMPORT_WEB.replace("web", "second"));
        write("a.yml", &format!("{}---\n{SLICE_EAST}", IMPORT_WEB.replace("web", "first")));
        write(
            "c.json",
            r#"{"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
               "metadata": {"name": "third", "namespace": "demo"}, "spec": {"ips": 5}}"#,
        );
        write(".hidden.yaml", &IMPORT_WEB.replace("web", "hidden"));
        write("notes.txt", &IMPORT_WEB.replace("web", "notes"));
        fs::create_dir(dir.join("sub.yaml")).expect("create subdirectory");
        fs::write(dir.join("sub.yaml").join("d.yaml"), IMPORT_WEB.replace("web", "nested")).expect("write nested");

        let (inputs, errors) = load_dir(&dir).expect("the directory is readable");
        assert_eq!(import_names(&inputs), ["demo/first", "demo/second"]);
        assert_eq!(slice_names(&inputs), ["web-east"]);
        assert_eq!(
            messages(&errors),
            [format!(
                "{} document 1 (ServiceImport demo/third): spec.ips: invalid type: integer `5`, expected a sequence",
                dir.join("c.json").display()
            )]
        );

        temp.close().expect("remove temporary directory");
        let err = load_dir(&dir).expect_err("a missing directory is an error");
        assert!(err.to_string().contains(&dir.display().to_string()), "{err:#}");
    }

    #[test]
    fn splits_documents_at_separator_lines_only() {
        let text = "a: 1\n---\nb: '---'\n----\n--- c: 3\n---";
        let docs = split_yaml_documents(text);
        assert_eq!(docs, [(0, "a: 1\n"), (1, "\nb: '---'\n----\n"), (4, " c: 3\n"), (5, "")]);
    }
}
