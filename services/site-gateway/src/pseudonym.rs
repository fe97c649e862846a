//! From site-side FHIR to what may leave the hospital: the enrolled subject's pseudonymous
//! Patient (gender, birth year), the message's clinical resources pointing at it, tagged with
//! the site study and translated to the study's codes, one Provenance per message. Names,
//! addresses, telecom, MRNs, insurance numbers and full birth dates never appear; results
//! outside the trial's dataset are dropped (counted), local codes without a translation send
//! the message to the dead-letter queue.

use serde_json::{json, Value};
use trialbridge_study::site_namespace;
use trialbridge_validation::Options;

use crate::identity::Enrolment;
use crate::mapping::{Event, PatientGroup};

/// Where a message came from (for ids and Provenance).
#[derive(Debug, Clone)]
pub struct Origin {
    /// MSH-3^MSH-4.
    pub sender: String,
    /// MSH-10.
    pub control_id: String,
    /// The message's content fingerprint (empty where the control id is unique by itself):
    /// part of every id, so that a reused control id never overwrites another message's
    /// resources.
    pub fingerprint: String,
    /// When the gateway received it (FHIR instant).
    pub received: String,
    /// The site (`site-01`).
    pub site: String,
}

/// What pseudonymisation made of a message.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A transaction Bundle for the trial store.
    Bundle(Value),
    /// Nothing of the trial's dataset (results outside it, or a merge): acknowledged, not sent.
    Nothing,
    /// Cannot go out as is: the reason for the dead-letter queue.
    Dead(String),
}

const STUDY_EXT: &str = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy";

/// A short stable hash for deterministic ids (FNV-1a, 64 bit).
pub fn stable_id(prefix: &str, parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0x1f]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{prefix}-{h:016x}")
}

fn in_study_value_set(coding: &Value) -> bool {
    match (
        coding.get("system").and_then(Value::as_str),
        coding.get("code").and_then(Value::as_str),
    ) {
        (Some(s), Some(c)) => trialbridge_study::in_value_set("mesemcart-observation-codes", s, c),
        _ => false,
    }
}

/// Removes a CodeableConcept's text and its codings' displays; a coding of one of the study's
/// ValueSets gets the display the study gives it.
fn without_free_text(cc: &mut Value) {
    let Some(o) = cc.as_object_mut() else {
        return;
    };
    o.remove("text");
    for c in o
        .get_mut("coding")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(c) = c.as_object_mut() else {
            continue;
        };
        c.remove("display");
        let (Some(system), Some(code)) = (
            c.get("system").and_then(Value::as_str),
            c.get("code").and_then(Value::as_str),
        ) else {
            continue;
        };
        if let Some(d) = trialbridge_study::display(system, code) {
            c.insert("display".into(), json!(d));
        }
    }
}

/// Translates the site-local codings of a CodeableConcept with the site code map `codes`;
/// `Err` names the first local code that has no translation (and no standard coding beside it).
fn translate(cc: &mut Value, site: &str, codes: &Value) -> Result<(), String> {
    let local = crate::mapping::local_system(site);
    let Some(codings) = cc.get_mut("coding").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let mut out = Vec::new();
    let mut untranslated = None;
    for c in codings.iter() {
        let system = c.get("system").and_then(Value::as_str).unwrap_or("");
        let code = c.get("code").and_then(Value::as_str).unwrap_or("");
        if system == local {
            match trialbridge_study::translate_in(codes, &local, code) {
                Some((s, k, d)) => {
                    let mut t = json!({"system": s, "code": k});
                    if let Some(d) = d {
                        t["display"] = json!(d);
                    }
                    out.push(t);
                }
                None => untranslated = Some(code.to_string()),
            }
        } else {
            out.push(c.clone());
        }
    }
    if out.is_empty() {
        if let Some(code) = untranslated {
            let version = codes
                .pointer("/meta/versionId")
                .and_then(Value::as_str)
                .map_or_else(|| "built in".to_string(), |v| format!("version {v}"));
            let map = codes.get("id").and_then(Value::as_str).unwrap_or("?");
            return Err(format!(
                "the local code '{code}' of {site} has no entry in ConceptMap {map} ({version})"
            ));
        }
    }
    *codings = out;
    Ok(())
}

/// R4 requires an Observation that is a vital sign (its code is one of the vital-signs
/// profiles') to carry the category `vital-signs`; HL7 v2 has no such field, so the gateway
/// adds it to the results whose translated code says so.
fn add_vital_signs_category(o: &mut Value) {
    const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
    let vital = o
        .pointer("/code/coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("system")?.as_str()?, c.get("code")?.as_str()?)))
        .any(|(system, code)| {
            trialbridge_fhir::structure::VITAL_SIGNS_PROFILES
                .iter()
                .any(|p| p.is_code(system, code))
        });
    if !vital {
        return;
    }
    let category =
        json!({"coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]});
    match o.get_mut("category").and_then(Value::as_array_mut) {
        Some(list) => {
            let present = list.iter().any(|c| {
                c.pointer("/coding/0/code").and_then(Value::as_str) == Some("vital-signs")
            });
            if !present {
                list.push(category);
            }
        }
        None => o["category"] = json!([category]),
    }
}

/// The resources of one patient group, pointing at its subject; `Err` for a local code
/// without a translation.
fn group_entries(
    event: &Event,
    group: &PatientGroup,
    who: &Enrolment,
    origin: &Origin,
    codes: &Value,
) -> Result<(Vec<Value>, usize), String> {
    let patient_ref = format!("Patient/{}", who.patient_id);
    let study = json!([{"url": STUDY_EXT, "valueReference": {"reference": format!("ResearchStudy/{}", who.site_study)}}]);
    let mut entries: Vec<Value> = Vec::new();
    let mut dropped = 0;
    let facts = &group.patient;
    // The pseudonymous Patient only when the message says something about it (the gateway's
    // writer merges it with what is known of the subject before it is queued).
    if *event == Event::Visit && (facts.gender.is_some() || facts.birth_date.is_some()) {
        let mut p = json!({"resourceType": "Patient", "id": who.patient_id});
        if let Some(g) = facts.gender {
            p["gender"] = json!(g);
        }
        if let Some(b) = &facts.birth_date {
            p["birthDate"] = json!(&b[..4]);
        }
        entries.push(p);
    }
    for r in &group.resources {
        let mut r = r.clone();
        let key = r
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ty = r
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        // Translation never fails for a result that also has a standard code (LOINC, ...):
        // the standard code decides below whether it is of the trial's dataset; only a result
        // known by a local code alone waits for its translation (a dead letter until the
        // site's ConceptMap has it).
        if let Some(code) = r.get_mut("code") {
            translate(code, &origin.site, codes)?;
        }
        if let Some(v) = r.get_mut("valueCodeableConcept") {
            translate(v, &origin.site, codes)?;
        }
        // Displays and texts are what a person typed at the site (a name, a phone number in a
        // code's display): none leaves it. A code of the study gets the study's display.
        for element in ["code", "valueCodeableConcept"] {
            if let Some(cc) = r.get_mut(element) {
                without_free_text(cc);
            }
        }
        let prefix = match ty.as_str() {
            "Observation" => {
                let in_study = r
                    .pointer("/code/coding")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| cs.iter().any(in_study_value_set));
                if !in_study {
                    dropped += 1;
                    continue;
                }
                add_vital_signs_category(&mut r);
                "obs"
            }
            "Procedure" => "proc",
            "Condition" => "cond",
            "Encounter" => "enc",
            _ => continue,
        };
        // Ids begin with the site's namespace (`mc-01-`): the trial store lets a site choose
        // only ids of its own, so no site can name (or probe) another site's resources.
        let prefix = format!("{}{prefix}", site_namespace(&origin.site));
        r["id"] = json!(if key.starts_with("visit:") {
            // One Encounter per visit number; one Condition or Procedure per visit and segment.
            stable_id(&prefix, &[&origin.sender, &who.patient_id, &key])
        } else {
            stable_id(
                &prefix,
                &[
                    &origin.sender,
                    &origin.control_id,
                    &origin.fingerprint,
                    &who.patient_id,
                    &key,
                ],
            )
        });
        r["subject"] = json!({"reference": patient_ref});
        // The study link where the trial profiles look for it (results and procedures).
        if matches!(ty.as_str(), "Observation" | "Procedure") {
            r["extension"] = study.clone();
        }
        entries.push(r);
    }
    Ok((entries, dropped))
}

/// Builds what leaves the site for one message: the groups of its enrolled patients, each
/// with the subject it belongs to, local codes translated with the site code map `codes`.
/// Everything of a group points at that group's subject only.
pub fn outgoing(
    event: &Event,
    groups: &[(&PatientGroup, &Enrolment)],
    origin: &Origin,
    codes: &Value,
    validation: &Options,
) -> (Outgoing, usize) {
    if *event == Event::Merge {
        return (Outgoing::Nothing, 0);
    }
    let mut entries: Vec<Value> = Vec::new();
    let mut dropped = 0;
    for (group, who) in groups {
        match group_entries(event, group, who, origin, codes) {
            Ok((mut e, d)) => {
                entries.append(&mut e);
                dropped += d;
            }
            Err(why) => return (Outgoing::Dead(why), 0),
        }
    }
    // Two PIDs of one subject in a message name the same Patient (and visit): once is enough.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert((e["resourceType"].to_string(), e["id"].to_string())));
    if entries.is_empty() {
        return (Outgoing::Nothing, dropped);
    }
    let targets: Vec<Value> = entries
        .iter()
        .map(|e| json!({"reference": format!("{}/{}", e["resourceType"].as_str().unwrap_or(""), e["id"].as_str().unwrap_or(""))}))
        .collect();
    entries.push(json!({
        "resourceType": "Provenance",
        "id": stable_id(&format!("{}prov", site_namespace(&origin.site)), &[&origin.sender, &origin.control_id, &origin.fingerprint]),
        "target": targets,
        "recorded": origin.received,
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}]},
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler"}]},
                   "who": {"display": format!("trialbridge site gateway, {}", origin.site)}}],
        "entity": [{"role": "source", "what": {"identifier": {"system": format!("urn:mesemcart:{}:hl7v2-message", origin.site), "value": format!("{}|{}", origin.sender, origin.control_id)}, "display": "HL7 v2 message"}}],
    }));
    for e in &entries {
        let report = trialbridge_validation::validate_resource(e, validation);
        if report.has_errors() {
            let why: Vec<String> = report
                .errors()
                .map(|i| format!("{}: {}", i.expression.join(", "), i.diagnostics))
                .collect();
            return (
                Outgoing::Dead(format!(
                    "{} would be refused by the trial store: {}",
                    e["resourceType"].as_str().unwrap_or(""),
                    why.join("; ")
                )),
                dropped,
            );
        }
    }
    // The resources move into the Bundle: `json!` would serialise each one again (a deep
    // copy per resource and one of the whole entry list, 6 % of the gateway's CPU per message).
    let bundle_entries: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            let url = format!("{}/{}", e["resourceType"].as_str().unwrap_or(""), e["id"].as_str().unwrap_or(""));
            let mut entry = json!({"fullUrl": format!("urn:trialbridge:{url}"), "request": {"method": "PUT", "url": url}});
            entry["resource"] = e;
            entry
        })
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "transaction"});
    bundle["entry"] = Value::Array(bundle_entries);
    (Outgoing::Bundle(bundle), dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vital_sign_gets_its_category_once_and_other_results_none() {
        let mut bmi = json!({"resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}]}});
        add_vital_signs_category(&mut bmi);
        add_vital_signs_category(&mut bmi);
        assert_eq!(bmi["category"].as_array().unwrap().len(), 1);
        assert_eq!(bmi["category"][0]["coding"][0]["code"], "vital-signs");
        let mut koos = json!({"resourceType": "Observation",
            "code": {"coding": [{"system": "http://loinc.org", "code": "72095-5"}]}});
        add_vital_signs_category(&mut koos);
        assert!(koos.get("category").is_none());
    }
}
