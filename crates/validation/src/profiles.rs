//! Layer 5, core part: the R4 vital-signs profiles an Observation claims in `meta.profile`.
//! The facts (LOINC codes, UCUM units, component slices) come from the generated table of
//! the profiles' differentials; the rules of the base profile are written out here.

use serde_json::{Map, Value};
use std::fmt::Write;
use trialbridge_fhir::structure::{VitalSignsProfile, VITAL_SIGNS_PROFILES};
use trialbridge_fhir::IssueType;

use crate::walk::Walk;

const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

/// The vital-signs profiles that apply to an Observation: those it claims, and the one its
/// code makes mandatory (a specific one implies the base profile).
pub(crate) fn claimed(m: &Map<String, Value>) -> Vec<&'static VitalSignsProfile> {
    let mut out: Vec<&'static VitalSignsProfile> = Vec::new();
    let claims = m
        .get("meta")
        .and_then(|x| x.get("profile"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    let mut add = |p: &'static VitalSignsProfile| {
        if out.is_empty() && p.loinc.is_some() {
            out.push(&VITAL_SIGNS_PROFILES[0]);
        }
        if !out.iter().any(|q| q.url == p.url) {
            out.push(p);
        }
    };
    for url in claims {
        let url = url.split('|').next().unwrap_or(url);
        if let Some(p) = VITAL_SIGNS_PROFILES.iter().find(|p| p.url == url) {
            add(p);
        }
    }
    if let Some(p) = by_code(m) {
        add(p);
    }
    out
}

/// The vital-signs profile an Observation's code makes mandatory. R4 (Observation, "Vital
/// Signs"): an Observation that represents a vital sign SHALL conform to its profile; the
/// code is what says it does. An Observation entered in error is a record that the
/// observation did not stand, not a vital sign.
fn by_code(m: &Map<String, Value>) -> Option<&'static VitalSignsProfile> {
    if m.get("status").and_then(Value::as_str) == Some("entered-in-error") {
        return None;
    }
    VITAL_SIGNS_PROFILES
        .iter()
        .find(|p| codings(m.get("code")).any(|(s, c)| p.is_code(s, c)))
}

/// `(system, code)` of each coding of a CodeableConcept.
pub(crate) fn codings(cc: Option<&Value>) -> impl Iterator<Item = (&str, &str)> {
    cc.and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("system")?.as_str()?, c.get("code")?.as_str()?)))
}

fn has_loinc(cc: Option<&Value>, code: &str) -> bool {
    codings(cc).any(|(s, c)| s == LOINC && c == code)
}

/// Checks an Observation against the vital-signs profiles that apply to it.
pub(crate) fn vital_signs(walk: &mut Walk, m: &Map<String, Value>) {
    for p in claimed(m) {
        let name = p.name;
        if p.loinc.is_none() {
            if !m
                .get("category")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| codings(Some(c)).any(|(s, k)| s == CATEGORY_SYSTEM && k == "vital-signs"))
            {
                walk.error_at("category", IssueType::Required, format!("{name}: a category coding {CATEGORY_SYSTEM}#vital-signs is required (slice VSCat)"));
            }
            if !m.contains_key("subject") {
                walk.error_at(
                    "subject",
                    IssueType::Required,
                    format!("{name}: subject is required"),
                );
            }
            if !m.contains_key("effectiveDateTime") && !m.contains_key("effectivePeriod") {
                walk.error_at(
                    "effective",
                    IssueType::Required,
                    format!("{name}: effective[x] is required, as a dateTime or a Period"),
                );
            }
            let has_value = m.keys().any(|k| k.starts_with("value"));
            if !m.contains_key("component")
                && !m.contains_key("hasMember")
                && !has_value
                && !m.contains_key("dataAbsentReason")
            {
                walk.error(IssueType::Invariant, format!("vs-2: {name}: without components or members, a value or a dataAbsentReason is required"));
            }
        }
        if let Some(code) = p.loinc {
            if !has_loinc(m.get("code"), code) {
                walk.error_at(
                    "code",
                    IssueType::Required,
                    format!("{name}: the code must include the LOINC code {code}"),
                );
            }
        }
        if p.value_prohibited && m.contains_key("valueQuantity") {
            walk.error_at(
                "value.ofType(Quantity)",
                IssueType::Structure,
                format!("{name}: valueQuantity is not allowed; the values are in the components"),
            );
        }
        if let Some(q) = m.get("valueQuantity").and_then(Value::as_object) {
            quantity(walk, "value.ofType(Quantity)", q, p.units, name);
        }
        let components = m
            .get("component")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for slice in p.components {
            match components
                .iter()
                .position(|c| has_loinc(c.get("code"), slice.code))
            {
                None => walk.error_at(
                    "component",
                    IssueType::Required,
                    format!(
                        "{name}: a component with LOINC code {} is required",
                        slice.code
                    ),
                ),
                Some(i) => {
                    if let Some(q) = components[i]
                        .get("valueQuantity")
                        .and_then(Value::as_object)
                    {
                        quantity(
                            walk,
                            &format!("component[{i}].value.ofType(Quantity)"),
                            q,
                            slice.units,
                            name,
                        );
                    }
                }
            }
        }
        if p.loinc.is_none() {
            let len = walk.path.len();
            for (i, c) in components.iter().enumerate() {
                let Some(c) = c.as_object() else { continue };
                if !c.keys().any(|k| k.starts_with("value")) && !c.contains_key("dataAbsentReason")
                {
                    let _ = write!(walk.path, ".component[{i}]");
                    walk.error(
                        IssueType::Invariant,
                        format!("vs-3: {name}: a component needs a value or a dataAbsentReason"),
                    );
                    walk.path.truncate(len);
                }
            }
        }
    }
}

fn quantity(walk: &mut Walk, at: &str, q: &Map<String, Value>, units: &[&str], name: &str) {
    for k in ["value", "unit", "system", "code"] {
        if !q.contains_key(k) {
            walk.error_at(
                &format!("{at}.{k}"),
                IssueType::Required,
                format!("{name}: the quantity needs its {k}"),
            );
        }
    }
    if let Some(s) = q.get("system").and_then(Value::as_str) {
        if s != UCUM {
            walk.error_at(
                &format!("{at}.system"),
                IssueType::Value,
                format!("{name}: the unit system must be UCUM ({UCUM})"),
            );
        }
    }
    if let Some(code) = q.get("code").and_then(Value::as_str) {
        if !units.is_empty() && !units.contains(&code) {
            walk.error_at(
                &format!("{at}.code"),
                IssueType::CodeInvalid,
                format!(
                    "{name}: the unit '{code}' is not one of {}",
                    units.join(", ")
                ),
            );
        }
    }
}
