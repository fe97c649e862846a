//! Layer 4: the core invariants of R4, written out from their FHIRPath expressions (the
//! generated table carries the spec text of each), plus the Bundle rules that the reference
//! validator applies beyond them. [`IMPLEMENTED`] lists what is checked.

use serde_json::{Map, Value};
use std::fmt::Write;
use trialbridge_fhir::structure::{self, TypeDef};
use trialbridge_fhir::{resource_type, IssueSeverity, IssueType};

use crate::walk::{ResourceFrame, Walk};

/// The invariant keys this module evaluates. `ele-1` (no empty elements) is part of the walk.
pub const IMPLEMENTED: &[&str] = &[
    "age-1", "att-1", "bdl-1", "bdl-2", "bdl-3", "bdl-4", "bdl-5", "bdl-7", "bdl-8", "bdl-9",
    "bdl-10", "bdl-11", "bdl-12", "cnt-3", "con-1", "con-2", "con-3", "con-4", "con-5", "cpt-2",
    "dis-1", "dom-2", "dom-3", "dom-4", "dom-5", "dom-6", "drq-1", "drq-2", "drt-1", "ele-1",
    "exp-1", "ext-1", "obs-3", "obs-6", "obs-7", "org-1", "org-2", "org-3", "pat-1", "pdf-0",
    "per-1", "qty-3", "rat-1", "ref-1", "rng-2", "sqty-1", "tim-1", "tim-2", "tim-4", "tim-5",
    "tim-6", "tim-7", "tim-8", "tim-9", "tim-10", "trd-1", "trd-2", "trd-3", "txt-1", "txt-2",
];

const UCUM: &str = "http://unitsofmeasure.org";

/// The other core invariants, each evaluated by the FHIRPath engine from its expression in
/// the definitions. The walk is planned once and visits only elements below which such an
/// invariant can apply, so a resource that has none costs a few look-ups. Invariants that
/// need a server or terminology (`resolve()`, `memberOf()`) are not evaluated here.
pub(crate) fn from_definitions(walk: &mut Walk, resource: &Value) {
    static CHECKER: std::sync::OnceLock<trialbridge_fhirpath::invariants::Checker> =
        std::sync::OnceLock::new();
    let checker =
        CHECKER.get_or_init(|| trialbridge_fhirpath::invariants::Checker::except(IMPLEMENTED));
    let findings = checker.check(resource);
    let saved = std::mem::take(&mut walk.path);
    for (key, path) in findings.violated {
        walk.path = path;
        violated(walk, key);
    }
    walk.path = saved;
}

fn ucum_or_absent(m: &Map<String, Value>) -> bool {
    m.get("system").is_none_or(|s| s.as_str() == Some(UCUM))
}

fn coded(v: Option<&Value>, system: &str, codes: &[&str]) -> bool {
    v.and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("system").and_then(Value::as_str) == Some(system)
                && c.get("code")
                    .and_then(Value::as_str)
                    .is_some_and(|k| codes.contains(&k))
        })
}

fn violated(walk: &mut Walk, key: &str) {
    let (error, human) = structure::invariant(key).map_or((true, ""), |i| (i.error, i.human));
    let severity = if error {
        IssueSeverity::Error
    } else {
        IssueSeverity::Warning
    };
    walk.issue(severity, IssueType::Invariant, format!("{key}: {human}"));
}

fn violated_at(walk: &mut Walk, child: &str, key: &str) {
    let len = walk.path.len();
    walk.path.push_str(child);
    violated(walk, key);
    walk.path.truncate(len);
}

fn precision(t: &str) -> usize {
    if t.contains('T') {
        11
    } else {
        t.len()
    }
}

fn has(m: &Map<String, Value>, key: &str) -> bool {
    m.contains_key(key) || m.contains_key(&format!("_{key}"))
}

fn has_prefix(m: &Map<String, Value>, prefix: &str) -> bool {
    m.keys().any(|k| {
        k.len() > prefix.len()
            && k.starts_with(prefix)
            && k.as_bytes()[prefix.len()].is_ascii_uppercase()
    })
}

fn decimal(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

/// Invariants of data types and backbone elements, after their members were walked.
pub(crate) fn element_type(walk: &mut Walk, td: &TypeDef, m: &Map<String, Value>) {
    match td.name {
        "Period" => {
            if let (Some(start), Some(end)) = (
                m.get("start").and_then(Value::as_str),
                m.get("end").and_then(Value::as_str),
            ) {
                if let (Some(s), Some(e)) = (
                    trialbridge_fhir::date::parse_range(start),
                    trialbridge_fhir::date::parse_range(end),
                ) {
                    // FHIRPath `start <= end`: at equal precision a plain comparison; at
                    // different precisions only a clear ordering counts (overlap is empty).
                    let ordered = if precision(start) == precision(end) {
                        s.low <= e.low
                    } else {
                        s.high <= e.low
                    };
                    if !ordered {
                        violated(walk, "per-1");
                    }
                }
            }
        }
        "Range" => {
            let low = m.get("low").and_then(|l| decimal(l.get("value")));
            let high = m.get("high").and_then(|h| decimal(h.get("value")));
            if let (Some(l), Some(h)) = (low, high) {
                if l > h {
                    violated(walk, "rng-2");
                }
            }
        }
        "Quantity" if m.contains_key("code") && !m.contains_key("system") => {
            violated(walk, "qty-3");
        }
        "Attachment" if m.contains_key("data") && !m.contains_key("contentType") => {
            violated(walk, "att-1");
        }
        "ContactPoint" if m.contains_key("value") && !m.contains_key("system") => {
            violated(walk, "cpt-2");
        }
        "Ratio" if m.contains_key("numerator") != m.contains_key("denominator") => {
            violated(walk, "rat-1");
        }
        "Extension" => {
            let value = has_prefix(m, "value");
            if m.contains_key("extension") == value {
                violated(walk, "ext-1");
            }
        }
        "Observation.referenceRange"
            if !m.contains_key("low") && !m.contains_key("high") && !has(m, "text") =>
        {
            violated(walk, "obs-3");
        }
        "Patient.contact" => {
            let details = ["name", "telecom", "address", "organization"]
                .iter()
                .any(|k| m.contains_key(*k));
            if !details {
                violated(walk, "pat-1");
            }
        }
        "Age" => {
            let value_ok = m
                .get("value")
                .and_then(Value::as_f64)
                .is_none_or(|v| v > 0.0);
            if (m.contains_key("value") && !m.contains_key("code"))
                || !ucum_or_absent(m)
                || !value_ok
            {
                violated(walk, "age-1");
            }
        }
        "Count" => {
            let whole = m
                .get("value")
                .is_none_or(|v| v.to_string().parse::<i64>().is_ok());
            let code_one = m.get("code").is_none_or(|c| c.as_str() == Some("1"));
            if (m.contains_key("value") && !m.contains_key("code"))
                || !ucum_or_absent(m)
                || !code_one
                || !whole
            {
                violated(walk, "cnt-3");
            }
        }
        "Distance"
            if (m.contains_key("value") && !m.contains_key("code")) || !ucum_or_absent(m) =>
        {
            violated(walk, "dis-1");
        }
        "Duration"
            if m.contains_key("code")
                && (m.get("system").and_then(Value::as_str) != Some(UCUM)
                    || !m.contains_key("value")) =>
        {
            violated(walk, "drt-1");
        }
        "Timing.repeat" => {
            let num = |k: &str| m.get(k).and_then(Value::as_f64);
            let when: Vec<&str> = m
                .get("when")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let rules: [(&str, bool); 9] = [
                (
                    "tim-1",
                    m.contains_key("duration") && !m.contains_key("durationUnit"),
                ),
                (
                    "tim-2",
                    m.contains_key("period") && !m.contains_key("periodUnit"),
                ),
                ("tim-4", num("duration").is_some_and(|d| d < 0.0)),
                ("tim-5", num("period").is_some_and(|p| p < 0.0)),
                (
                    "tim-6",
                    m.contains_key("periodMax") && !m.contains_key("period"),
                ),
                (
                    "tim-7",
                    m.contains_key("durationMax") && !m.contains_key("duration"),
                ),
                (
                    "tim-8",
                    m.contains_key("countMax") && !m.contains_key("count"),
                ),
                (
                    "tim-9",
                    m.contains_key("offset")
                        && (when.is_empty()
                            || when.iter().any(|w| matches!(*w, "C" | "CM" | "CD" | "CV"))),
                ),
                (
                    "tim-10",
                    m.contains_key("timeOfDay") && m.contains_key("when"),
                ),
            ];
            for (key, broken) in rules {
                if broken {
                    violated(walk, key);
                }
            }
        }
        "DataRequirement.codeFilter" if m.contains_key("path") == m.contains_key("searchParam") => {
            violated(walk, "drq-1");
        }
        "DataRequirement.dateFilter" if m.contains_key("path") == m.contains_key("searchParam") => {
            violated(walk, "drq-2");
        }
        "Expression" if !has(m, "expression") && !has(m, "reference") => violated(walk, "exp-1"),
        "TriggerDefinition" => {
            let has_timing = m.keys().any(|k| k.starts_with("timing"));
            if m.contains_key("data") && has_timing {
                violated(walk, "trd-1");
            }
            if m.contains_key("condition") && !m.contains_key("data") {
                violated(walk, "trd-2");
            }
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
            if (ty == "named-event" && !has(m, "name"))
                || (ty == "periodic" && !has_timing)
                || (ty.starts_with("data-") && !m.contains_key("data"))
            {
                violated(walk, "trd-3");
            }
        }
        "Condition.stage" if !m.contains_key("summary") && !m.contains_key("assessment") => {
            violated(walk, "con-1");
        }
        "Condition.evidence" if !m.contains_key("code") && !m.contains_key("detail") => {
            violated(walk, "con-2");
        }
        "Bundle.entry" => {
            if !m.contains_key("resource")
                && !m.contains_key("request")
                && !m.contains_key("response")
            {
                violated(walk, "bdl-5");
            }
            if let Some(full) = m.get("fullUrl").and_then(Value::as_str) {
                if full.contains("/_history/") {
                    violated_at(walk, ".fullUrl", "bdl-8");
                }
            }
        }
        _ => {}
    }
}

/// Checks on a resource inside `contained` (at its path).
pub(crate) fn contained_resource(walk: &mut Walk, m: &Map<String, Value>) {
    if m.contains_key("contained") {
        violated(walk, "dom-2");
    }
    if let Some(meta) = m.get("meta").and_then(Value::as_object) {
        if meta.contains_key("versionId") || meta.contains_key("lastUpdated") {
            violated(walk, "dom-4");
        }
        if meta.contains_key("security") {
            violated(walk, "dom-5");
        }
    }
    if m.contains_key("text") {
        walk.issue(
            IssueSeverity::Warning,
            IssueType::Invariant,
            "a contained resource should not have its own narrative",
        );
    }
}

/// `dom-3`: every contained resource is referenced from the resource (or refers to it).
pub(crate) fn contained(walk: &mut Walk, m: &Map<String, Value>, frame: &ResourceFrame) {
    let refers_back = frame.local_refs.iter().any(String::is_empty);
    let len = walk.path.len();
    for (i, (id, _)) in frame.contained.iter().enumerate() {
        if refers_back || frame.local_refs.iter().any(|r| r == id) {
            continue;
        }
        // A contained resource may also be referenced from the narrative (`<a href="#id">`).
        let in_text = m
            .get("text")
            .and_then(|t| t.get("div"))
            .and_then(Value::as_str)
            .is_some_and(|d| d.contains(&format!("\"#{id}\"")));
        if in_text {
            continue;
        }
        let _ = write!(walk.path, ".contained[{i}]");
        violated(walk, "dom-3");
        walk.path.truncate(len);
    }
}

/// (fullUrl, type, id, versionId) of a Bundle entry.
type BundleEntryKey = (Option<String>, &'static str, Option<String>, Option<String>);

/// What references inside a Bundle can resolve to.
pub(crate) struct BundleContext {
    ty: String,
    /// (fullUrl, type, id, versionId) per entry with a resource.
    entries: Vec<BundleEntryKey>,
}

impl BundleContext {
    pub(crate) fn new(m: &Map<String, Value>) -> Self {
        let str_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let entries = entries(m)
            .iter()
            .filter_map(|e| {
                let r = e.get("resource")?;
                let t = resource_type::canonical(r.get("resourceType")?.as_str()?)?;
                Some((
                    str_of(e.get("fullUrl")),
                    t,
                    str_of(r.get("id")),
                    str_of(r.get("meta").and_then(|m| m.get("versionId"))),
                ))
            })
            .collect();
        Self {
            ty: m
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            entries,
        }
    }

    /// Documents and messages must carry everything they reference.
    pub(crate) fn self_contained(&self) -> bool {
        matches!(self.ty.as_str(), "document" | "message")
    }

    /// The type of the entry with this fullUrl.
    pub(crate) fn by_full_url(&self, url: &str) -> Option<&'static str> {
        self.entries
            .iter()
            .find(|(f, ..)| f.as_deref() == Some(url))
            .map(|(_, t, ..)| *t)
    }

    /// For a self-contained Bundle, why the relative reference `r` does not resolve to exactly
    /// one entry.
    pub(crate) fn resolve_relative(&self, r: &str) -> Option<String> {
        if !self.self_contained() || r.contains("://") {
            return None;
        }
        let parts: Vec<&str> = r.split('/').collect();
        let (t, id, version) = match parts.as_slice() {
            [t, id] => (*t, *id, None),
            [t, id, "_history", v] => (*t, *id, Some(*v)),
            _ => return None,
        };
        let hits = self
            .entries
            .iter()
            .filter(|(_, et, eid, ev)| {
                *et == t
                    && eid.as_deref() == Some(id)
                    && version.is_none_or(|v| ev.as_deref() == Some(v))
            })
            .count();
        match hits {
            1 => None,
            0 => Some(format!("'{r}' is not an entry of this {} Bundle", self.ty)),
            n => Some(format!(
                "'{r}' matches {n} entries of this {} Bundle",
                self.ty
            )),
        }
    }
}

fn entries(m: &Map<String, Value>) -> &[Value] {
    m.get("entry")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Invariants of a resource type as a whole.
pub(crate) fn resource(walk: &mut Walk, type_name: &str, m: &Map<String, Value>, contained: bool) {
    match type_name {
        "Observation" => {
            observation(walk, m);
            crate::profiles::vital_signs(walk, m);
        }
        "Bundle" => bundle(walk, m),
        "Condition" => condition(walk, m),
        "Organization" => organization(walk, m),
        "PlanDefinition" => plan_definition(walk, m),
        _ => {}
    }
    // dom-6 (a guideline, so a warning): a resource should have a narrative.
    let domain = !matches!(type_name, "Bundle" | "Binary" | "Parameters");
    if domain && !contained && m.get("text").and_then(|t| t.get("div")).is_none() {
        violated(walk, "dom-6");
    }
}

const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const CONDITION_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";

fn condition(walk: &mut Walk, m: &Map<String, Value>) {
    let entered_in_error = coded(
        m.get("verificationStatus"),
        CONDITION_VERIFICATION,
        &["entered-in-error"],
    );
    let problem_list = m
        .get("category")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            coded(
                Some(c),
                "http://terminology.hl7.org/CodeSystem/condition-category",
                &["problem-list-item"],
            )
        });
    if !m.contains_key("clinicalStatus") && !entered_in_error && problem_list {
        violated(walk, "con-3");
    }
    let abated = m.keys().any(|k| k.starts_with("abatement"));
    if abated
        && !coded(
            m.get("clinicalStatus"),
            CONDITION_CLINICAL,
            &["resolved", "remission", "inactive"],
        )
    {
        violated(walk, "con-4");
    }
    if entered_in_error && m.contains_key("clinicalStatus") {
        violated(walk, "con-5");
    }
}

fn organization(walk: &mut Walk, m: &Map<String, Value>) {
    if !m.contains_key("identifier") && !has(m, "name") {
        violated(walk, "org-1");
    }
    for (field, key) in [("address", "org-2"), ("telecom", "org-3")] {
        for (i, a) in m
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if a.get("use").and_then(Value::as_str) == Some("home") {
                violated_at(walk, &format!(".{field}[{i}]"), key);
            }
        }
    }
}

fn plan_definition(walk: &mut Walk, m: &Map<String, Value>) {
    if let Some(name) = m.get("name").and_then(Value::as_str) {
        let b = name.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 255
            && b[0].is_ascii_uppercase()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !ok {
            violated_at(walk, ".name", "pdf-0");
        }
    }
}

fn observation(walk: &mut Walk, m: &Map<String, Value>) {
    let has_value = has_prefix(m, "value");
    if m.contains_key("dataAbsentReason") && has_value {
        violated(walk, "obs-6");
    }
    if has_value {
        let codes = codings(m.get("code"));
        if let Some(components) = m.get("component").and_then(Value::as_array) {
            let len = walk.path.len();
            for (i, c) in components.iter().enumerate() {
                let same = codings(c.get("code")).iter().any(|x| codes.contains(x));
                if same {
                    let _ = write!(walk.path, ".component[{i}]");
                    violated(walk, "obs-7");
                    walk.path.truncate(len);
                }
            }
        }
    }
    for (i, c) in m
        .get("component")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(c) = c.as_object() {
            if c.contains_key("dataAbsentReason") && has_prefix(c, "value") {
                violated_at(walk, &format!(".component[{i}]"), "obs-6");
            }
        }
    }
}

fn codings(cc: Option<&Value>) -> Vec<(String, String)> {
    cc.and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| {
                    let s = c
                        .get("system")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let k = c
                        .get("code")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    (s, k)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn bundle(walk: &mut Walk, m: &Map<String, Value>) {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
    if m.contains_key("total") && !matches!(ty, "searchset" | "history") {
        violated_at(walk, ".total", "bdl-1");
    }
    let len = walk.path.len();
    let mut relations: Vec<&str> = Vec::new();
    for (i, link) in m
        .get("link")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(rel) = link.get("relation").and_then(Value::as_str) {
            if matches!(
                rel,
                "self" | "first" | "previous" | "prev" | "next" | "last"
            ) && relations.contains(&rel)
            {
                let _ = write!(walk.path, ".link[{i}]");
                walk.error(
                    IssueType::Invalid,
                    format!("the link relation '{rel}' may occur only once"),
                );
                walk.path.truncate(len);
            }
            relations.push(rel);
        }
    }
    let entries = entries(m);
    let needs_request = matches!(ty, "batch" | "transaction" | "history");
    let needs_response = matches!(ty, "batch-response" | "transaction-response" | "history");
    let mut seen: Vec<(&str, Option<&str>)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(e) = e.as_object() else { continue };
        let _ = write!(walk.path, ".entry[{i}]");
        if e.contains_key("search") && ty != "searchset" {
            violated(walk, "bdl-2");
        }
        if e.contains_key("request") != needs_request {
            violated(walk, "bdl-3");
        }
        if e.contains_key("response") != needs_response {
            violated(walk, "bdl-4");
        }
        let resource = e.get("resource").and_then(Value::as_object);
        let full = e.get("fullUrl").and_then(Value::as_str);
        if let (Some(full), Some(r)) = (full, resource) {
            if !full.contains(':') {
                walk.error_at(
                    "fullUrl",
                    IssueType::Value,
                    format!("fullUrl '{full}' is not an absolute URL"),
                );
            } else if !full.starts_with("urn:") {
                if let (Some(t), Some(id)) = (
                    r.get("resourceType").and_then(Value::as_str),
                    r.get("id").and_then(Value::as_str),
                ) {
                    let tail = format!("/{t}/{id}");
                    if !full.ends_with(&tail) {
                        walk.error_at("fullUrl", IssueType::Invalid, format!("fullUrl '{full}' does not match the resource's type and id ({t}/{id})"));
                    }
                }
            }
            if ty != "history" {
                let version = r
                    .get("meta")
                    .and_then(|m| m.get("versionId"))
                    .and_then(Value::as_str);
                if seen.iter().any(|(u, v)| *u == full && *v == version) {
                    violated(walk, "bdl-7");
                }
                seen.push((full, version));
            }
        }
        if ty == "searchset" {
            if let Some(r) = resource {
                let outcome = e
                    .get("search")
                    .and_then(|s| s.get("mode"))
                    .and_then(Value::as_str)
                    == Some("outcome");
                let is_oo =
                    r.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome");
                if outcome && !is_oo {
                    walk.error_at(
                        "search.mode",
                        IssueType::Invalid,
                        "search.mode 'outcome' is only for an OperationOutcome",
                    );
                } else if !is_oo && !r.contains_key("id") {
                    walk.error_at(
                        "resource",
                        IssueType::Required,
                        "a resource in a search result needs an id",
                    );
                }
            }
        }
        walk.path.truncate(len);
    }
    let first = entries
        .first()
        .and_then(|e| e.get("resource"))
        .and_then(|r| r.get("resourceType"))
        .and_then(Value::as_str);
    match ty {
        "document" => {
            let ident = m.get("identifier");
            if ident.and_then(|i| i.get("system")).is_none()
                || ident.and_then(|i| i.get("value")).is_none()
            {
                violated(walk, "bdl-9");
            }
            if !m.contains_key("timestamp") {
                violated(walk, "bdl-10");
            }
            if first != Some("Composition") {
                violated(walk, "bdl-11");
            }
        }
        "message" if first != Some("MessageHeader") => {
            violated(walk, "bdl-12");
        }
        _ => {}
    }
}
