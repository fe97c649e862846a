//! Search-index values pulled out of a resource at write time.
//!
//! The store writes these rows in the same transaction as the version they describe. Today the
//! token, string, reference and uri parameters whose R4 expression falls inside the
//! [`crate::path`] subset are indexed; date, number, quantity and composite parameters are the
//! search work that follows (see README "Not built yet").

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::path::PathExpr;
use crate::search_param::{for_type, SearchParamKind, SearchParameterDef};

/// One index row: `param` of the resource has this (system, value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexEntry {
    /// The search parameter code.
    pub param: &'static str,
    /// Token system (or `None`); unused for other kinds.
    pub system: Option<String>,
    /// Token code, normalised string, `Type/id` reference or uri.
    pub value: String,
}

/// Whether a parameter of `kind` is indexed by this crate.
pub fn is_indexed_kind(kind: SearchParamKind) -> bool {
    matches!(
        kind,
        SearchParamKind::Token
            | SearchParamKind::String
            | SearchParamKind::Reference
            | SearchParamKind::Uri
    )
}

struct Compiled {
    def: &'static SearchParameterDef,
    path: PathExpr,
}

type Registry = HashMap<&'static str, Vec<Compiled>>;

fn registry() -> &'static std::sync::Mutex<Registry> {
    static R: OnceLock<std::sync::Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| std::sync::Mutex::new(HashMap::new()))
}

/// True when `def` is indexed, i.e. can be searched.
pub fn is_searchable(def: &SearchParameterDef) -> bool {
    def.code == "_id" || (is_indexed_kind(def.kind) && PathExpr::compile(def.expression).is_some())
}

/// Extracts every index row of `resource`. Rows are sorted and free of duplicates.
pub fn extract(resource_type: &'static str, resource: &Value) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    let mut reg = match registry().lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let compiled = reg.entry(resource_type).or_insert_with(|| {
        for_type(resource_type)
            .filter(|d| d.code != "_id" && is_indexed_kind(d.kind))
            .filter_map(|def| PathExpr::compile(def.expression).map(|path| Compiled { def, path }))
            .collect()
    });
    for c in compiled.iter() {
        for v in c.path.evaluate(resource) {
            values_of(c.def, v, &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

fn push(out: &mut Vec<IndexEntry>, param: &'static str, system: Option<&str>, value: &str) {
    if !value.is_empty() {
        out.push(IndexEntry {
            param,
            system: system.filter(|s| !s.is_empty()).map(str::to_string),
            value: value.to_string(),
        });
    }
}

fn values_of(def: &'static SearchParameterDef, v: &Value, out: &mut Vec<IndexEntry>) {
    let p = def.code;
    match def.kind {
        SearchParamKind::Token => match v {
            Value::String(s) => push(out, p, None, s),
            Value::Bool(b) => push(out, p, None, if *b { "true" } else { "false" }),
            Value::Object(o) => {
                if let Some(codings) = o.get("coding").and_then(Value::as_array) {
                    for c in codings {
                        token_of(p, c, out);
                    }
                } else {
                    token_of(p, v, out);
                }
            }
            _ => {}
        },
        SearchParamKind::String => string_values(p, v, out),
        SearchParamKind::Reference => {
            if let Some(r) = v.get("reference").and_then(Value::as_str) {
                push(out, p, None, &relative_reference(r));
            }
            if let Value::String(s) = v {
                // canonical references are plain strings
                push(out, p, None, s);
            }
        }
        SearchParamKind::Uri => {
            if let Value::String(s) = v {
                push(out, p, None, s);
            }
        }
        _ => {}
    }
}

fn token_of(p: &'static str, v: &Value, out: &mut Vec<IndexEntry>) {
    let system = v.get("system").and_then(Value::as_str);
    if let Some(code) = v.get("code").and_then(Value::as_str) {
        push(out, p, system, code);
    } else if let Some(value) = v.get("value").and_then(Value::as_str) {
        // Identifier and ContactPoint
        push(out, p, system, value);
    }
}

fn string_values(p: &'static str, v: &Value, out: &mut Vec<IndexEntry>) {
    match v {
        Value::String(s) => push(out, p, None, &normalize_string(s)),
        Value::Array(items) => items.iter().for_each(|i| string_values(p, i, out)),
        Value::Object(o) => {
            // HumanName and Address: every string part is searchable.
            for key in [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                if let Some(part) = o.get(key) {
                    string_values(p, part, out);
                }
            }
        }
        _ => {}
    }
}

/// `http://any.base/fhir/Patient/1/_history/2` and `Patient/1` both index as `Patient/1`.
pub fn relative_reference(r: &str) -> String {
    let parts: Vec<&str> = r.split('/').collect();
    let n = parts.len();
    let (t, id) = if n >= 4 && parts[n - 2] == "_history" {
        (parts[n - 4], parts[n - 3])
    } else if n >= 2 {
        (parts[n - 2], parts[n - 1])
    } else {
        return r.to_string();
    };
    if crate::is_resource_type(t) {
        format!("{t}/{id}")
    } else {
        r.to_string()
    }
}

/// Case- and accent-insensitive form used for string search (`Müller` and `muller` match).
pub fn normalize_string(s: &str) -> String {
    s.nfd()
        .filter(|c| !('\u{0300}'..='\u{036f}').contains(c))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patient_rows() {
        let p = json!({"resourceType":"Patient","id":"x",
            "identifier":[{"system":"urn:mrn","value":"123"}],
            "name":[{"family":"Müller","given":["Peter","James"]}],
            "gender":"male","active":true,
            "managingOrganization":{"reference":"http://h/fhir/Organization/o1"}});
        let rows = extract("Patient", &p);
        let has = |param: &str, sys: Option<&str>, v: &str| {
            rows.iter()
                .any(|r| r.param == param && r.system.as_deref() == sys && r.value == v)
        };
        assert!(has("identifier", Some("urn:mrn"), "123"));
        assert!(has("name", None, "muller"));
        assert!(has("name", None, "peter"));
        assert!(has("family", None, "muller"));
        assert!(has("gender", None, "male"));
        assert!(has("active", None, "true"));
        assert!(has("organization", None, "Organization/o1"));
        assert!(!rows.iter().any(|r| r.param == "_id"));
    }

    #[test]
    fn observation_rows() {
        let o = json!({"resourceType":"Observation","status":"final",
            "code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}],"text":"Heart rate"},
            "subject":{"reference":"Patient/example"}});
        let rows = extract("Observation", &o);
        assert!(rows.contains(&IndexEntry {
            param: "code",
            system: Some("http://loinc.org".into()),
            value: "8867-4".into()
        }));
        assert!(rows.contains(&IndexEntry {
            param: "subject",
            system: None,
            value: "Patient/example".into()
        }));
        assert!(rows.contains(&IndexEntry {
            param: "patient",
            system: None,
            value: "Patient/example".into()
        }));
        assert!(rows.contains(&IndexEntry {
            param: "status",
            system: None,
            value: "final".into()
        }));
    }
}
