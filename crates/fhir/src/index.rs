//! Search-index values pulled out of a resource at write time.
//!
//! The store writes these rows in the same transaction as the version they describe. Token,
//! string, reference and uri values become [`IndexEntry`] rows; date, number and quantity values
//! and composites of a token with a quantity or date become [`RangeEntry`] rows. A parameter is
//! indexed when its R4 expression falls inside the [`crate::path`] subset.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::path::PathExpr;
use crate::search_param::{for_type, SearchParamKind, SearchParameterDef};

/// The longest index key in bytes. A longer token code or system, string (normalised and as
/// written), reference or uri is indexed by its first bytes up to this bound, at a character
/// boundary, and a search value is cut the same way ([`index_key`]): such values are compared
/// on their first 1,000 bytes (a `:contains` finds text within them only). Why a bound:
/// PostgreSQL cannot hold a b-tree key above about 2,700 bytes (the row's other key columns
/// included), and free-text results from a hospital's feed can be longer.
pub const INDEX_KEY_MAX_BYTES: usize = 1000;

/// `s` cut to [`INDEX_KEY_MAX_BYTES`] at a character boundary.
pub fn index_key(s: &str) -> &str {
    if s.len() <= INDEX_KEY_MAX_BYTES {
        return s;
    }
    let mut end = INDEX_KEY_MAX_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One index row: `param` of the resource has this (system, value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexEntry {
    /// The search parameter code.
    pub param: &'static str,
    /// Token system (or `None`); for a string, the text as written (for `:exact`).
    pub system: Option<String>,
    /// Token code, normalised string, `Type/id` reference or uri.
    pub value: String,
}

/// One range row: `param` of the resource covers `[low, high]` (dates: microseconds, `high`
/// exclusive; numbers and quantities: the value itself, or a Range's bounds).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeEntry {
    /// The search parameter code.
    pub param: &'static str,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
    /// Quantity unit system ('' if none).
    pub unit_system: String,
    /// Quantity unit code, or the unit text when there is no code ('' if none).
    pub unit_code: String,
    /// For a composite: the token part's system ('' if none).
    pub token_system: String,
    /// For a composite: the token part's code ('' if not a composite).
    pub token_code: String,
}

/// Every index row of one resource version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    /// Token, string, reference and uri rows.
    pub text: Vec<IndexEntry>,
    /// Date, number, quantity and composite rows.
    pub ranges: Vec<RangeEntry>,
}

/// Whether a parameter of `kind` is indexed by this crate.
pub fn is_indexed_kind(kind: SearchParamKind) -> bool {
    matches!(
        kind,
        SearchParamKind::Token
            | SearchParamKind::String
            | SearchParamKind::Reference
            | SearchParamKind::Uri
            | SearchParamKind::Date
            | SearchParamKind::Number
            | SearchParamKind::Quantity
            | SearchParamKind::Composite
    )
}

struct Compiled {
    def: &'static SearchParameterDef,
    path: PathExpr,
    /// For composites: the token part and the quantity or date part.
    parts: Option<(PathExpr, PathExpr)>,
}

/// The compiled parts of a composite that this crate indexes: a token with a quantity or date.
fn composite_parts(def: &SearchParameterDef) -> Option<(PathExpr, PathExpr)> {
    match def.components {
        [a, b]
            if a.kind == SearchParamKind::Token
                && matches!(b.kind, SearchParamKind::Quantity | SearchParamKind::Date) =>
        {
            Some((
                PathExpr::compile(a.expression)?,
                PathExpr::compile(b.expression)?,
            ))
        }
        _ => None,
    }
}

fn compile(def: &'static SearchParameterDef) -> Option<Compiled> {
    let path = PathExpr::compile(def.expression)?;
    let parts = if def.kind == SearchParamKind::Composite {
        Some(composite_parts(def)?)
    } else {
        None
    };
    Some(Compiled { def, path, parts })
}

type Registry = HashMap<&'static str, Vec<Compiled>>;

fn registry() -> &'static std::sync::Mutex<Registry> {
    static R: OnceLock<std::sync::Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| std::sync::Mutex::new(HashMap::new()))
}

/// True when `def` is indexed, i.e. can be searched.
pub fn is_searchable(def: &SearchParameterDef) -> bool {
    if def.code == "_id" || def.code == "_lastUpdated" {
        return true;
    }
    is_indexed_kind(def.kind)
        && PathExpr::compile(def.expression).is_some()
        && (def.kind != SearchParamKind::Composite || composite_parts(def).is_some())
}

/// Which extraction of index rows this build does. A store records the generation its rows
/// were written with: the SQLite store deletes a resource's old rows by extracting them again
/// from the old body, which finds exactly the rows written only while extraction is unchanged,
/// so a store whose generation differs rebuilds its index when it opens.
///
/// Raise it with any change to what [`extract`] returns for some resource (a search parameter
/// added, a value normalised differently); the test `index_generation` in this crate pins a
/// digest of the rows extracted from the repository's example resources and names this
/// constant when they change.
pub const INDEX_GENERATION: i64 = 1;

/// Extracts every index row of `resource`. Rows are sorted and free of duplicates.
/// `_lastUpdated` is not extracted: the store indexes it from the version itself.
pub fn extract(resource_type: &'static str, resource: &Value) -> Index {
    let mut out = Index::default();
    let mut reg = match registry().lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let compiled = reg.entry(resource_type).or_insert_with(|| {
        for_type(resource_type)
            .filter(|d| d.code != "_id" && d.code != "_lastUpdated" && is_indexed_kind(d.kind))
            .filter_map(compile)
            .collect()
    });
    for c in compiled.iter() {
        for v in c.path.evaluate(resource) {
            match (&c.parts, c.def.kind) {
                (Some((token, value)), _) => {
                    composite_rows(c.def, token, value, v, &mut out.ranges)
                }
                (
                    None,
                    SearchParamKind::Date | SearchParamKind::Number | SearchParamKind::Quantity,
                ) => {
                    if let Some(mut r) = range_of(c.def.kind, v) {
                        r.param = c.def.code;
                        out.ranges.push(r);
                    }
                }
                _ => values_of(c.def, v, &mut out.text),
            }
        }
    }
    out.text.sort();
    out.text.dedup();
    out.ranges.dedup();
    out
}

fn number_of(v: &Value) -> Option<f64> {
    match v {
        // With arbitrary_precision the number's text is kept; f64 is precise enough to search.
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

fn empty_range(low: f64, high: f64) -> RangeEntry {
    RangeEntry {
        param: "",
        low,
        high,
        unit_system: String::new(),
        unit_code: String::new(),
        token_system: String::new(),
        token_code: String::new(),
    }
}

/// The range a date, number or quantity value covers.
fn range_of(kind: SearchParamKind, v: &Value) -> Option<RangeEntry> {
    match kind {
        SearchParamKind::Date => {
            let (low, high) = match v {
                Value::String(s) => {
                    let r = crate::date::parse_range(s)?;
                    (r.low as f64, r.high as f64)
                }
                Value::Object(o) => {
                    // Period: an open end is unbounded.
                    let start = o
                        .get("start")
                        .and_then(Value::as_str)
                        .and_then(crate::date::parse_range);
                    let end = o
                        .get("end")
                        .and_then(Value::as_str)
                        .and_then(crate::date::parse_range);
                    if start.is_none() && end.is_none() {
                        return None;
                    }
                    (
                        start.map_or(f64::MIN, |r| r.low as f64),
                        end.map_or(f64::MAX, |r| r.high as f64),
                    )
                }
                _ => return None,
            };
            Some(empty_range(low, high))
        }
        SearchParamKind::Number => number_of(v).map(|n| empty_range(n, n)),
        SearchParamKind::Quantity => {
            let o = v.as_object()?;
            if let Some(n) = o.get("value").and_then(number_of) {
                let mut r = empty_range(n, n);
                r.unit_system = o
                    .get("system")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                r.unit_code = o
                    .get("code")
                    .or_else(|| o.get("unit"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                return Some(r);
            }
            // A Range: its bounds (an open side is unbounded).
            let low = o
                .get("low")
                .and_then(|q| q.get("value"))
                .and_then(number_of);
            let high = o
                .get("high")
                .and_then(|q| q.get("value"))
                .and_then(number_of);
            if low.is_none() && high.is_none() {
                return None;
            }
            let unit_of = |k: &str| {
                o.get(k)
                    .and_then(|q| q.get("code").or_else(|| q.get("unit")))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let mut r = empty_range(low.unwrap_or(f64::MIN), high.unwrap_or(f64::MAX));
            r.unit_code = unit_of("low")
                .or_else(|| unit_of("high"))
                .unwrap_or_default();
            r.unit_system = o
                .get("low")
                .or_else(|| o.get("high"))
                .and_then(|q| q.get("system"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            Some(r)
        }
        _ => None,
    }
}

/// Composite rows: every (token, value) pair of one node.
fn composite_rows(
    def: &'static SearchParameterDef,
    token: &PathExpr,
    value: &PathExpr,
    node: &Value,
    out: &mut Vec<RangeEntry>,
) {
    let value_kind = def
        .components
        .get(1)
        .map(|c| c.kind)
        .unwrap_or(SearchParamKind::Quantity);
    let mut tokens = Vec::new();
    for t in token.evaluate(node) {
        let codings: Vec<&Value> = match t.get("coding").and_then(Value::as_array) {
            Some(c) => c.iter().collect(),
            None => vec![t],
        };
        for c in codings {
            if let Some(code) = c.get("code").and_then(Value::as_str) {
                tokens.push((
                    c.get("system")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    code.to_string(),
                ));
            }
        }
    }
    for v in value.evaluate(node) {
        if let Some(r) = range_of(value_kind, v) {
            for (system, code) in &tokens {
                out.push(RangeEntry {
                    param: def.code,
                    token_system: index_key(system).to_string(),
                    token_code: index_key(code).to_string(),
                    ..r.clone()
                });
            }
        }
    }
}

fn push(out: &mut Vec<IndexEntry>, param: &'static str, system: Option<&str>, value: &str) {
    if !value.is_empty() {
        out.push(IndexEntry {
            param,
            system: system
                .filter(|s| !s.is_empty())
                .map(|s| index_key(s).to_string()),
            value: index_key(value).to_string(),
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
                let text_param = modified(p, "text");
                if let Some(codings) = o.get("coding").and_then(Value::as_array) {
                    for c in codings {
                        token_of(p, c, out);
                        if let Some(d) = c.get("display").and_then(Value::as_str) {
                            push(out, text_param, None, &normalize_string(d));
                        }
                    }
                    if let Some(t) = o.get("text").and_then(Value::as_str) {
                        push(out, text_param, None, &normalize_string(t));
                    }
                } else {
                    token_of(p, v, out);
                    if let Some(d) = o.get("display").and_then(Value::as_str) {
                        push(out, text_param, None, &normalize_string(d));
                    }
                }
                // Identifier.type: `:of-type` (type system|type code|value) and `:text`.
                if let (Some(t), Some(value)) =
                    (o.get("type"), o.get("value").and_then(Value::as_str))
                {
                    for c in t
                        .get("coding")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(code) = c.get("code").and_then(Value::as_str) {
                            let system =
                                c.get("system").and_then(Value::as_str).unwrap_or_default();
                            push(
                                out,
                                modified(p, "of-type"),
                                None,
                                &format!("{system}|{code}|{value}"),
                            );
                        }
                    }
                    if let Some(text) = t.get("text").and_then(Value::as_str) {
                        push(out, text_param, None, &normalize_string(text));
                    }
                }
            }
            _ => {}
        },
        SearchParamKind::String => string_values(p, v, out),
        SearchParamKind::Reference => {
            if let Some(r) = v.get("reference").and_then(Value::as_str) {
                push(out, p, None, &relative_reference(r));
            }
            // A logical reference: `:identifier`.
            if let Some(id) = v.get("identifier") {
                token_of(modified(p, "identifier"), id, out);
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
        // The exact text rides in `system` (unused for strings) for `:exact`.
        Value::String(s) => push(out, p, Some(s), &normalize_string(s)),
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

/// The index name of a modifier's own rows (`code:text`, `identifier:of-type`,
/// `subject:identifier`). Interned: one allocation per name for the life of the process.
pub fn modified(param: &str, modifier: &str) -> &'static str {
    static NAMES: OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        OnceLock::new();
    let name = format!("{param}:{modifier}");
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.get(name.as_str()) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

/// `http://any.base/fhir/Patient/1/_history/2` and `Patient/1` both index as `Patient/1`.
pub fn relative_reference(r: &str) -> String {
    match crate::reference::literal_target(r) {
        Some((t, id)) => format!("{t}/{id}"),
        None => r.to_string(),
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

    proptest::proptest! {
        /// Any text, of any length and any characters: its key is a prefix of it that fits the
        /// bound, cut where a character starts, the text itself when it fits, and stable.
        #[test]
        fn an_index_key_is_the_longest_fitting_prefix(text in "\\PC{0,1200}") {
            let key = index_key(&text);
            proptest::prop_assert!(text.starts_with(key));
            proptest::prop_assert!(key.len() <= INDEX_KEY_MAX_BYTES);
            proptest::prop_assert!(text.len() <= INDEX_KEY_MAX_BYTES || key.len() + 4 > INDEX_KEY_MAX_BYTES);
            if text.len() <= INDEX_KEY_MAX_BYTES {
                proptest::prop_assert_eq!(key, text.as_str());
            }
            proptest::prop_assert_eq!(index_key(key), key);
        }
    }

    #[test]
    fn index_keys_are_cut_at_a_character_boundary() {
        let short = "ä".repeat(10);
        assert_eq!(index_key(&short), short);
        // 999 bytes of ASCII, then a two-byte character across the bound.
        let long = format!("{}ä{}", "a".repeat(999), "b".repeat(50));
        let cut = index_key(&long);
        assert_eq!(cut.len(), 999);
        assert!(long.starts_with(cut));
        assert_eq!(index_key(cut), cut);
        let family = "漢".repeat(2000);
        let index = extract(
            "Patient",
            &serde_json::json!({"resourceType": "Patient", "name": [{"family": family}]}),
        );
        for e in &index.text {
            assert!(e.value.len() <= INDEX_KEY_MAX_BYTES, "{}", e.param);
            assert!(e
                .system
                .as_ref()
                .is_none_or(|s| s.len() <= INDEX_KEY_MAX_BYTES));
        }
    }
    use serde_json::json;

    #[test]
    fn patient_rows() {
        let p = json!({"resourceType":"Patient","id":"x",
            "identifier":[{"system":"urn:mrn","value":"123"}],
            "name":[{"family":"Müller","given":["Peter","James"]}],
            "gender":"male","active":true,
            "managingOrganization":{"reference":"http://h/fhir/Organization/o1"}});
        let rows = extract("Patient", &p).text;
        let has = |param: &str, sys: Option<&str>, v: &str| {
            rows.iter()
                .any(|r| r.param == param && r.system.as_deref() == sys && r.value == v)
        };
        assert!(has("identifier", Some("urn:mrn"), "123"));
        assert!(has("name", Some("Müller"), "muller"));
        assert!(has("name", Some("Peter"), "peter"));
        assert!(has("family", Some("Müller"), "muller"));
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
        let index = extract("Observation", &o);
        let rows = index.text;
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

    #[test]
    fn range_rows() {
        let o: Value = serde_json::from_str(r#"{"resourceType":"Observation","status":"final",
            "code":{"coding":[{"system":"http://loinc.org","code":"39156-5"}]},
            "effectivePeriod":{"start":"2024-03-05"},
            "valueQuantity":{"value":24.50,"unit":"kg/m2","system":"http://unitsofmeasure.org","code":"kg/m2"},
            "component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120,"code":"mm[Hg]"}}]}"#).unwrap();
        let r = extract("Observation", &o).ranges;
        let find = |p: &str| r.iter().filter(|e| e.param == p).collect::<Vec<_>>();
        let date = find("date");
        assert_eq!(date.len(), 1);
        assert_eq!(date[0].high, f64::MAX, "an open Period end is unbounded");
        let q = find("value-quantity");
        assert_eq!(
            (q[0].low, q[0].unit_code.as_str(), q[0].unit_system.as_str()),
            (24.5, "kg/m2", "http://unitsofmeasure.org")
        );
        let cvq = find("code-value-quantity");
        assert_eq!((cvq[0].token_code.as_str(), cvq[0].low), ("39156-5", 24.5));
        let comp = find("component-code-value-quantity");
        assert_eq!(
            (
                comp[0].token_code.as_str(),
                comp[0].low,
                comp[0].unit_code.as_str()
            ),
            ("8480-6", 120.0, "mm[Hg]")
        );
        assert_eq!(find("combo-code-value-quantity").len(), 2);
    }
}

#[cfg(test)]
mod coverage {
    use crate::search_param::{for_type, SearchParamKind};

    /// The trial's resource types and those they point at (the search issue's list).
    const TYPES: &[&str] = &[
        "ResearchStudy",
        "ResearchSubject",
        "Procedure",
        "Observation",
        "Patient",
        "Encounter",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Location",
        "Group",
        "Consent",
        "Medication",
        "MedicationAdministration",
        "Device",
        "AdverseEvent",
        "Condition",
        "Provenance",
        "PlanDefinition",
        "CodeSystem",
        "ValueSet",
        "ConceptMap",
    ];

    /// Every R4 search parameter of these types is searchable except the ones listed here, whose
    /// expressions need FHIRPath beyond the supported subset or that are special.
    #[test]
    fn searchable_parameters_of_the_trial_types() {
        let mut missing = Vec::new();
        let mut total = 0;
        for t in TYPES {
            for d in for_type(t) {
                total += 1;
                if !super::is_searchable(d) {
                    missing.push(format!("{t}.{} ({:?})", d.code, d.kind));
                }
            }
        }
        missing.sort();
        println!(
            "{} of {total} searchable; not: {missing:#?}",
            total - missing.len()
        );
        // Composites of a token with a concept or string, `near` (geographic) and
        // `Patient.deceased` (`exists() and ... != false`) are not built yet.
        let expected = [
            "CodeSystem.context-type-value",
            "ConceptMap.context-type-value",
            "Group.characteristic-value",
            "Location.near",
            "Observation.code-value-concept",
            "Observation.code-value-string",
            "Observation.combo-code-value-concept",
            "Observation.component-code-value-concept",
            "Patient.deceased",
            "PlanDefinition.context-type-value",
            "ValueSet.context-type-value",
        ];
        let names: Vec<&str> = missing
            .iter()
            .map(|m| m.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(names, expected);
        assert_eq!(total, 499);
        let _ = SearchParamKind::Special;
    }
}
