//! Validation of custom resources against a CRD schema.
#![allow(clippy::wildcard_imports, reason = "the test crate's shared imports and helpers")]
use super::*;

// Validation of custom resources against a CRD schema (a subset of OpenAPI
// v3: the keywords the MCS CRDs use; any other keyword met on the way is an
// error, so the check never silently passes what it does not understand).

pub(super) fn validate(schema: &JSONSchemaProps, value: &Value, path: &str, errors: &mut Vec<String>) {
    let here = if path.is_empty() { "<root>" } else { path };
    let unsupported = [
        ("pattern", schema.pattern.is_some()),
        ("format date-time", schema.format.as_deref() == Some("date-time")),
        ("allOf/anyOf/oneOf/not", schema.all_of.is_some() || schema.any_of.is_some() || schema.one_of.is_some()),
        ("x-kubernetes-validations", schema.x_kubernetes_validations.is_some()),
    ];
    for (keyword, used) in unsupported {
        if used {
            errors.push(format!("{here}: the schema uses {keyword}, which this test does not check"));
        }
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        errors.push(format!("{here}: {value} is not one of the allowed values"));
    }
    match (schema.type_.as_deref(), value) {
        (Some("object"), Value::Object(map)) => {
            for required in schema.required.iter().flatten() {
                if !map.contains_key(required) {
                    errors.push(format!("{here}: required field {required} is missing"));
                }
            }
            for (key, field) in map {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                // The API server checks these itself; they are parsed strictly elsewhere.
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(property) = schema.properties.as_ref().and_then(|p| p.get(key)) {
                    validate(property, field, &child, errors);
                } else if let Some(JSONSchemaPropsOrBool::Schema(additional)) = &schema.additional_properties {
                    validate(additional, field, &child, errors);
                } else if !matches!(schema.additional_properties, Some(JSONSchemaPropsOrBool::Bool(true)))
                    && schema.x_kubernetes_preserve_unknown_fields != Some(true)
                {
                    errors.push(format!("{child}: not in the CRD's schema (the API server would drop it)"));
                }
            }
        }
        (Some("array"), Value::Array(items)) => validate_array(schema, items, path, errors),
        (Some("string"), Value::String(s)) => {
            let length = i64::try_from(s.chars().count()).expect("a manifest string fits i64");
            if schema.max_length.is_some_and(|max| length > max) || schema.min_length.is_some_and(|min| length < min) {
                errors.push(format!("{here}: length {length} is out of range"));
            }
        }
        (Some("integer"), Value::Number(n)) => match n.as_i64() {
            None => errors.push(format!("{here}: {n} is not an integer")),
            Some(i) => {
                let int32 = schema.format.as_deref() == Some("int32");
                #[expect(clippy::cast_precision_loss, reason = "manifest integers are far below 2^52")]
                let as_float = i as f64;
                if (int32 && i32::try_from(i).is_err())
                    || schema.minimum.is_some_and(|min| as_float < min)
                    || schema.maximum.is_some_and(|max| as_float > max)
                {
                    errors.push(format!("{here}: {i} is out of range"));
                }
            }
        },
        (Some("boolean"), Value::Bool(_)) | (Some("number"), Value::Number(_)) => {}
        (Some(expected), other) => errors.push(format!("{here}: expected {expected}, found {other}")),
        (None, _) => errors.push(format!("{here}: the schema has no type")),
    }
}

pub(super) fn validate_array(schema: &JSONSchemaProps, items: &[Value], path: &str, errors: &mut Vec<String>) {
    let count = i64::try_from(items.len()).expect("a manifest list fits i64");
    if schema.max_items.is_some_and(|max| count > max) || schema.min_items.is_some_and(|min| count < min) {
        errors.push(format!("{path}: {count} items is out of range"));
    }
    let Some(JSONSchemaPropsOrArray::Schema(item_schema)) = &schema.items else {
        errors.push(format!("{path}: the schema has no single items schema"));
        return;
    };
    for (i, item) in items.iter().enumerate() {
        validate(item_schema, item, &format!("{path}[{i}]"), errors);
    }
    if schema.x_kubernetes_list_type.as_deref() == Some("map") {
        let keys = schema.x_kubernetes_list_map_keys.clone().unwrap_or_default();
        let mut seen = BTreeSet::new();
        for item in items {
            let key: Vec<String> =
                keys.iter().map(|k| item.get(k).map(ToString::to_string).unwrap_or_default()).collect();
            if !seen.insert(key.clone()) {
                errors.push(format!("{path}: two items share the map key {key:?}"));
            }
        }
    }
}

/// The schema of `version` of the CRD for `kind`.
pub(super) fn crd_schema<'a>(parsed: &'a Parsed, kind: &str, version: &str) -> &'a JSONSchemaProps {
    let (_, crd) = parsed
        .crds
        .iter()
        .find(|(_, crd)| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("deploy/crds has no CRD for {kind}"));
    let found = crd.spec.versions.iter().find(|v| v.name == version);
    let found = found.unwrap_or_else(|| panic!("the {kind} CRD has no version {version}"));
    found.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("every version has a schema")
}

pub(super) fn validate_custom_resource(parsed: &Parsed, doc: &Doc) -> Vec<String> {
    let version = doc.api_version().rsplit('/').next().unwrap_or_default();
    let mut errors = Vec::new();
    validate(crd_schema(parsed, doc.kind(), version), &doc.value, "", &mut errors);
    errors
}

/// The schema at `path` (`spec.ports[].port`: `[]` steps into items).
pub(super) fn schema_at<'a>(root: &'a JSONSchemaProps, path: &str) -> &'a JSONSchemaProps {
    let mut schema = root;
    for step in path.split('.') {
        let (field, into_items) = step.strip_suffix("[]").map_or((step, false), |f| (f, true));
        schema = schema
            .properties
            .as_ref()
            .and_then(|p| p.get(field))
            .unwrap_or_else(|| panic!("the schema has no field {path} (missing {field})"));
        if into_items {
            let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items else {
                panic!("{path}: {field} is not a list with an items schema");
            };
            schema = items;
        }
    }
    schema
}
