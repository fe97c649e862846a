//! HL7 v2 to FHIR R4, following the HL7 v2-to-FHIR IG for the segments the trial uses: PID to
//! Patient facts, PV1 to Encounter, OBX to Observation (value type by OBX-2, status by table
//! 0085), PR1 to Procedure, DG1 to Condition, MRG for merges. The result is site-side FHIR
//! (codes as sent); pseudonymisation and code translation come after (`pseudonym`).
//!
//! A message is read as patient groups: each PID starts a group, and every segment after it,
//! up to the next PID, belongs to that patient (an ORU^R01 may carry the results of several
//! patients, an A40 several PID/MRG pairs). A clinical segment before any PID belongs to
//! nobody and is an error. So a result is always attributed to the PID it follows, never to
//! the message's first patient.

use serde_json::{json, Map, Value};

use crate::identity::PatientId;
use trialbridge_hl7v2::ack::AckError;
use trialbridge_hl7v2::{Field, Message, Segment};

/// What a message is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// ADT A01/A04/A08: the patient and the visit.
    Visit,
    /// ADT A03: the visit ended.
    Discharge,
    /// ADT A40: the MRG identifiers of each group now belong to the patient of its PID.
    Merge,
    /// ORU R01: results.
    Results,
}

/// The patient facts of a PID, site-side only (never forwarded as such).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatientFacts {
    /// PID-3 repetitions.
    pub identifiers: Vec<PatientId>,
    /// PID-8 as a FHIR gender code.
    pub gender: Option<&'static str>,
    /// PID-7 as a FHIR date (`1988-04-12`).
    pub birth_date: Option<String>,
}

/// One patient of a message and what the message says about them.
#[derive(Debug, Clone, Default)]
pub struct PatientGroup {
    /// The patient (its PID).
    pub patient: PatientFacts,
    /// Encounter, Observations, Procedures and Conditions, site-side, each with a `key` (the
    /// segment it came from) in `id` for deterministic ids later.
    pub resources: Vec<Value>,
    /// For a merge: the identifiers of MRG-1 that now belong to this patient.
    pub prior: Vec<PatientId>,
}

/// A mapped message.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// Message kind.
    pub event: Event,
    /// The patients, in message order (at least one).
    pub groups: Vec<PatientGroup>,
}

/// The message types the gateway takes (MSH-9.1, MSH-9.2).
pub fn supported(ty: &str, trigger: &str) -> bool {
    matches!(
        (ty, trigger),
        ("ADT", "A01" | "A03" | "A04" | "A08" | "A40") | ("ORU", "R01")
    )
}

/// A v2 coding system name (CWE-3) as a FHIR system URI; unknown names are site-local.
pub fn system_uri(v2: &str, site: &str) -> String {
    match v2.to_ascii_uppercase().as_str() {
        "LN" | "LOINC" => "http://loinc.org".into(),
        "SCT" | "SNM" | "SNOMED" | "SNOMEDCT" => "http://snomed.info/sct".into(),
        "I10" | "I10GM" | "ICD10GM" | "ICD-10-GM" | "I10-GM" => {
            "http://fhir.de/CodeSystem/bfarm/icd-10-gm".into()
        }
        "OPS" | "O" | "OPS301" => "http://fhir.de/CodeSystem/bfarm/ops".into(),
        "UCUM" => "http://unitsofmeasure.org".into(),
        "HL70078" => "http://terminology.hl7.org/CodeSystem/v2-0078".into(),
        _ => format!("urn:mesemcart:{site}:local"),
    }
}

/// HL7 DTM/TS (`YYYY[MM[DD[HH[MM[SS[.S]]]]]][+-ZZZZ]`) as a FHIR dateTime; a time without a zone
/// takes `default_offset` (`+01:00`). `None` when malformed.
pub fn date_time(ts: &str, default_offset: &str) -> Option<String> {
    let ts = ts.trim();
    let (body, zone) = match ts.find(['+', '-']) {
        Some(i) if i >= 4 => (&ts[..i], Some(&ts[i..])),
        _ => (ts, None),
    };
    let (digits, frac) = match body.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (body, None),
    };
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14)
    {
        return None;
    }
    if frac.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits[r].parse::<u32>().ok();
    let mut out = digits[0..4].to_string();
    if digits.len() >= 6 {
        let m = n(4..6)?;
        if !(1..=12).contains(&m) {
            return None;
        }
        out.push_str(&format!("-{:02}", m));
    }
    if digits.len() >= 8 {
        let d = n(6..8)?;
        if !(1..=31).contains(&d) {
            return None;
        }
        out.push_str(&format!("-{:02}", d));
    }
    if digits.len() >= 10 {
        let h = n(8..10)?;
        let mi = if digits.len() >= 12 { n(10..12)? } else { 0 };
        let s = if digits.len() >= 14 { n(12..14)? } else { 0 };
        if h > 23 || mi > 59 || s > 59 {
            return None;
        }
        out.push_str(&format!("T{h:02}:{mi:02}:{s:02}"));
        if let Some(f) = frac {
            out.push('.');
            out.push_str(f);
        }
        let zone = match zone {
            Some(z) if z.len() == 5 && z[1..].bytes().all(|b| b.is_ascii_digit()) => {
                format!("{}:{}", &z[..3], &z[3..])
            }
            Some(_) => return None,
            None => default_offset.to_string(),
        };
        out.push_str(&zone);
    }
    // Only a real calendar date passes (20260231 does not).
    trialbridge_validation::primitive::check("dateTime", &out).ok()?;
    Some(out)
}

fn coding(f: &Field<'_>, site: &str) -> Option<Value> {
    let code = f.component(1);
    if code.is_empty() {
        return None;
    }
    let mut c = Map::new();
    let sys = f.component(3);
    c.insert("system".into(), json!(system_uri(&sys, site)));
    c.insert("code".into(), json!(code));
    let display = f.component(2);
    if !display.is_empty() {
        c.insert("display".into(), json!(display));
    }
    Some(Value::Object(c))
}

fn concept(f: &Field<'_>, site: &str) -> Option<Value> {
    let mut codings = Vec::new();
    codings.extend(coding(f, site));
    // CWE 4-6: the alternate code.
    let alt = f.component(4);
    if !alt.is_empty() {
        let mut c = json!({"system": system_uri(&f.component(6), site), "code": alt});
        let d = f.component(5);
        if !d.is_empty() {
            c["display"] = json!(d);
        }
        codings.push(c);
    }
    let text = f.component(2);
    if codings.is_empty() && text.is_empty() {
        return None;
    }
    let mut cc = json!({"coding": codings});
    if codings.is_empty() {
        cc = json!({"text": text});
    }
    Some(cc)
}

struct Ctx<'a> {
    site: &'a str,
    offset: &'a str,
    errors: Vec<AckError>,
}

impl Ctx<'_> {
    fn required<'f>(
        &mut self,
        seg: &Segment<'f>,
        seq: usize,
        n: usize,
        what: &str,
    ) -> Option<Field<'f>> {
        let f = seg.field(n);
        if f.is_empty() {
            self.errors.push(AckError::at(
                seg.id(),
                seq,
                n,
                "101",
                format!("{}-{n} ({what}) is required", seg.id()),
            ));
            None
        } else {
            Some(f)
        }
    }

    fn time(&mut self, seg: &Segment<'_>, seq: usize, n: usize) -> Option<String> {
        let raw = seg.field(n).component(1);
        if raw.is_empty() {
            return None;
        }
        match date_time(&raw, self.offset) {
            Some(t) => Some(t),
            None => {
                self.errors.push(AckError::at(
                    seg.id(),
                    seq,
                    n,
                    "102",
                    format!(
                        "{}-{n} '{raw}' is not an HL7 date/time (YYYYMMDDHHMMSS+ZZZZ)",
                        seg.id()
                    ),
                ));
                None
            }
        }
    }
}

/// A CX (PID-3, PID-2, MRG-1 repetition) as a patient identifier; `None` without a number.
fn patient_id(rep: &Field<'_>) -> Option<PatientId> {
    let value = rep.component(1).trim().to_string();
    if value.is_empty() || rep.is_empty() {
        return None;
    }
    let auth = rep.component_part(4);
    let authorities = [auth.subcomponent(1), auth.subcomponent(2)]
        .into_iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    Some(PatientId { value, authorities })
}

fn patient(pid: &Segment<'_>, seq: usize, cx: &mut Ctx<'_>) -> PatientFacts {
    let mut p = PatientFacts::default();
    p.identifiers
        .extend(pid.field(3).repetitions().filter_map(|r| patient_id(&r)));
    if p.identifiers.is_empty() {
        // v2.3 messages may carry the id in PID-2 (external id) only.
        p.identifiers
            .extend(patient_id(&pid.field(2).repetition(1)));
    }
    if p.identifiers.is_empty() {
        cx.errors.push(AckError::at(
            "PID",
            seq,
            3,
            "101",
            "PID-3 (patient identifier list) is required",
        ));
    }
    p.gender = match pid.field(8).component(1).as_ref() {
        "M" => Some("male"),
        "F" => Some("female"),
        "O" | "A" | "N" => Some("other"),
        "U" => Some("unknown"),
        _ => None,
    };
    let dob = pid.field(7).component(1);
    if !dob.is_empty() && !pid.field(7).is_empty() {
        match date_time(&dob, cx.offset) {
            Some(d) => p.birth_date = Some(d.chars().take(10).collect()),
            None => cx.errors.push(AckError::at(
                "PID",
                seq,
                7,
                "102",
                format!("PID-7 '{dob}' is not a date of birth (YYYYMMDD)"),
            )),
        }
    }
    p
}

/// OBX-11 (table 0085) to Observation.status, as the v2-to-FHIR IG's ConceptMap has it (A, C,
/// D, F, I, P, S, W), plus X (cannot be obtained) as cancelled and U (changed to final without
/// retransmission) as final; the codes the IG leaves unmapped (B, N, O, R, V) are unknown.
fn observation_status(code: &str) -> Option<&'static str> {
    Some(match code {
        "F" | "U" => "final",
        "P" | "S" => "preliminary",
        "C" => "corrected",
        "A" => "amended",
        "D" | "W" => "entered-in-error",
        "X" => "cancelled",
        "I" => "registered",
        "B" | "N" | "O" | "R" | "V" => "unknown",
        _ => return None,
    })
}

fn observation(
    seg: &Segment<'_>,
    seq: usize,
    fallback_time: Option<&String>,
    cx: &mut Ctx<'_>,
) -> Option<Value> {
    let value_type = seg.field(2).component(1).into_owned();
    // Encapsulated data and reference pointers carry documents, not trial values: not mapped.
    if matches!(value_type.as_str(), "ED" | "RP") {
        return None;
    }
    let code_field = cx.required(seg, seq, 3, "observation identifier")?;
    let Some(code) = concept(&code_field, cx.site) else {
        cx.errors
            .push(AckError::at("OBX", seq, 3, "101", "OBX-3 has no code"));
        return None;
    };
    let status_raw = seg.field(11).component(1);
    // A missing OBX-11 is common in real feeds: the status is then unknown (and such a result
    // cannot pass the trial profile, so it waits in the dead-letter queue, not in the store).
    let status = if status_raw.is_empty() {
        "unknown"
    } else if let Some(s) = observation_status(&status_raw) {
        s
    } else {
        cx.errors.push(AckError::at("OBX", seq, 11, "103", format!("OBX-11 '{status_raw}' is not an observation result status (table 0085: F, P, C, A, D, W, X, ...)")));
        return None;
    };
    let mut o = json!({"resourceType": "Observation", "id": format!("obx-{seq}"), "status": status, "code": code});
    let v = seg.field(5);
    if !v.is_empty() {
        match value_type.as_str() {
            "NM" => {
                let raw = v.component(1);
                let n = raw.trim();
                let ok = !n.is_empty()
                    && n.parse::<f64>().is_ok()
                    && !n.contains(['e', 'E'])
                    && n.parse::<f64>().is_ok_and(f64::is_finite);
                if !ok {
                    cx.errors.push(AckError::at(
                        "OBX",
                        seq,
                        5,
                        "102",
                        format!("OBX-5 '{raw}' is not a number (OBX-2 is NM)"),
                    ));
                    return None;
                }
                let num: serde_json::Number =
                    serde_json::from_str(n.trim_start_matches('+')).ok()?;
                let mut q = json!({"value": num});
                let unit = seg.field(6);
                let ucode = unit.component(1);
                if !ucode.is_empty() {
                    let text = unit.component(2);
                    q["unit"] = json!(if text.is_empty() { ucode.clone() } else { text });
                    let usys = unit.component(3);
                    if usys.eq_ignore_ascii_case("UCUM") || usys.is_empty() {
                        q["system"] = json!("http://unitsofmeasure.org");
                        q["code"] = json!(ucode);
                    }
                }
                o["valueQuantity"] = q;
            }
            "ST" | "TX" | "FT" => {
                o["valueString"] = json!(v
                    .repetitions()
                    .map(|r| r.value().into_owned())
                    .collect::<Vec<_>>()
                    .join("\n"));
            }
            "CE" | "CWE" | "CNE" => {
                if let Some(cc) = concept(&v, cx.site) {
                    o["valueCodeableConcept"] = cc;
                }
            }
            "SN" => {
                let comparator = v.component(1);
                let n1 = v.component(2);
                let sep = v.component(3);
                let n2 = v.component(4);
                let num = |s: &str| serde_json::from_str::<serde_json::Number>(s.trim()).ok();
                match (sep.as_ref(), num(&n1), num(&n2)) {
                    ("" | "+", Some(a), None) if n2.is_empty() => {
                        let mut q = json!({"value": a});
                        if matches!(comparator.as_ref(), "<" | "<=" | ">" | ">=") {
                            q["comparator"] = json!(comparator);
                        }
                        o["valueQuantity"] = q;
                    }
                    ("-", Some(a), Some(b)) => {
                        o["valueRange"] = json!({"low": {"value": a}, "high": {"value": b}})
                    }
                    (":" | "/", Some(a), Some(b)) => {
                        o["valueRatio"] =
                            json!({"numerator": {"value": a}, "denominator": {"value": b}})
                    }
                    _ => {
                        cx.errors.push(AckError::at(
                            "OBX",
                            seq,
                            5,
                            "102",
                            format!("OBX-5 '{}' is not a structured numeric", v.raw()),
                        ));
                        return None;
                    }
                }
            }
            "DT" | "TS" | "DTM" => match date_time(&v.component(1), cx.offset) {
                Some(t) => o["valueDateTime"] = json!(t),
                None => {
                    cx.errors.push(AckError::at(
                        "OBX",
                        seq,
                        5,
                        "102",
                        format!("OBX-5 '{}' is not a date/time", v.raw()),
                    ));
                    return None;
                }
            },
            // Other value types (CQ, MO, NA, ...) are kept without a value.
            _ => {}
        }
    }
    let range = seg.field(7).value();
    if !range.is_empty() {
        o["referenceRange"] = json!([{"text": range}]);
    }
    let interp = seg.field(8).component(1);
    if !interp.is_empty() {
        o["interpretation"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": interp}]}]);
    }
    if let Some(t) = cx.time(seg, seq, 14).or_else(|| fallback_time.cloned()) {
        o["effectiveDateTime"] = json!(t)
    }
    Some(o)
}

/// Maps a parsed message; content errors come back as ERR entries for an AE.
pub fn map(m: &Message, site: &str, default_offset: &str) -> Result<Mapped, Vec<AckError>> {
    let (ty, trigger, _) = m.message_type();
    let mut cx = Ctx {
        site,
        offset: default_offset,
        errors: Vec::new(),
    };
    let event = match (ty.as_str(), trigger.as_str()) {
        ("ADT", "A03") => Event::Discharge,
        ("ADT", "A40") => Event::Merge,
        ("ORU", _) => Event::Results,
        _ => Event::Visit,
    };
    let msh_time = cx.time(
        &m.segment("MSH").expect("parsed messages start with MSH"),
        1,
        7,
    );
    let mut groups: Vec<PatientGroup> = Vec::new();
    let (mut pid_seq, mut obx_seq, mut pr1_seq, mut dg1_seq, mut mrg_seq) = (0, 0, 0, 0, 0);
    let mut obr_time: Option<String> = None;
    let mut has_pv1 = false;
    for seg in m.segments() {
        let id = seg.id();
        if id == "PID" {
            pid_seq += 1;
            groups.push(PatientGroup {
                patient: patient(&seg, pid_seq, &mut cx),
                ..Default::default()
            });
            obr_time = None;
            has_pv1 = false;
            continue;
        }
        if !matches!(id, "PV1" | "OBR" | "OBX" | "PR1" | "DG1" | "MRG") {
            continue;
        }
        let seq = match id {
            "OBX" => {
                obx_seq += 1;
                obx_seq
            }
            "PR1" => {
                pr1_seq += 1;
                pr1_seq
            }
            "DG1" => {
                dg1_seq += 1;
                dg1_seq
            }
            "MRG" => {
                mrg_seq += 1;
                mrg_seq
            }
            _ => 1,
        };
        let Some(group) = groups.last_mut() else {
            cx.errors.push(AckError::at(
                id,
                seq,
                1,
                "100",
                format!("{id} comes before any PID: it cannot be attributed to a patient"),
            ));
            continue;
        };
        match id {
            "PV1" if !has_pv1 => {
                has_pv1 = true;
                if let Some(e) = encounter(&seg, &event, &mut cx) {
                    group.resources.push(e);
                }
            }
            "OBR" => obr_time = cx.time(&seg, 1, 7),
            "OBX" => {
                let fallback = obr_time.clone().or_else(|| msh_time.clone());
                if let Some(o) = observation(&seg, seq, fallback.as_ref(), &mut cx) {
                    group.resources.push(o);
                }
            }
            "PR1" => group.resources.extend(procedure(&seg, seq, &mut cx)),
            "DG1" => group.resources.extend(condition(&seg, seq, &mut cx)),
            "MRG" if event == Event::Merge => {
                group
                    .prior
                    .extend(seg.field(1).repetitions().filter_map(|r| patient_id(&r)));
            }
            _ => {}
        }
    }
    if groups.is_empty() {
        cx.errors
            .push(AckError::message("100", "the message has no PID segment"));
    }
    if event == Event::Merge {
        for (i, g) in groups.iter().enumerate() {
            if g.prior.is_empty() {
                cx.errors.push(AckError::at(
                    "MRG",
                    i + 1,
                    1,
                    "101",
                    format!(
                        "MRG-1 (prior patient identifier) is required after PID {} of a merge",
                        i + 1
                    ),
                ));
            }
        }
    }
    if cx.errors.is_empty() {
        Ok(Mapped { event, groups })
    } else {
        Err(cx.errors)
    }
}

fn encounter(pv1: &Segment<'_>, event: &Event, cx: &mut Ctx<'_>) -> Option<Value> {
    let (code, display) = match pv1.field(2).component(1).as_ref() {
        "I" => ("IMP", "inpatient encounter"),
        "O" => ("AMB", "ambulatory"),
        "E" => ("EMER", "emergency"),
        "P" => ("PRENC", "pre-admission"),
        _ => return None,
    };
    // The visit number (PV1-19) keys the visit, so that A08 corrections and the A03
    // discharge update the Encounter the A01/A04 created.
    let visit = pv1.field(19).component(1);
    let key = if visit.is_empty() {
        "pv1".to_string()
    } else {
        format!("visit:{visit}")
    };
    let mut e = json!({"resourceType": "Encounter", "id": key,
        "status": if *event == Event::Discharge { "finished" } else { "in-progress" },
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display}});
    let start = cx.time(pv1, 1, 44);
    let end = cx.time(pv1, 1, 45);
    if start.is_some() || end.is_some() {
        let mut p = Map::new();
        if let Some(s) = start {
            p.insert("start".into(), json!(s));
        }
        if let Some(s) = end {
            p.insert("end".into(), json!(s));
        }
        e["period"] = Value::Object(p);
    }
    Some(e)
}

fn procedure(pr1: &Segment<'_>, seq: usize, cx: &mut Ctx<'_>) -> Option<Value> {
    let code_field = cx.required(pr1, seq, 3, "procedure code")?;
    let code = concept(&code_field, cx.site)?;
    let mut p = json!({"resourceType": "Procedure", "id": format!("pr1-{seq}"), "status": "completed", "code": code});
    if let Some(t) = cx.time(pr1, seq, 5) {
        p["performedDateTime"] = json!(t);
    }
    Some(p)
}

fn condition(dg1: &Segment<'_>, seq: usize, cx: &mut Ctx<'_>) -> Option<Value> {
    let code_field = cx.required(dg1, seq, 3, "diagnosis code")?;
    let code = concept(&code_field, cx.site)?;
    let verification = if dg1.field(6).component(1).as_ref() == "F" {
        "confirmed"
    } else {
        "provisional"
    };
    let mut c = json!({"resourceType": "Condition", "id": format!("dg1-{seq}"),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]},
        "code": code});
    if let Some(t) = cx.time(dg1, seq, 5) {
        c["recordedDate"] = json!(t);
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl7_times() {
        assert_eq!(date_time("20260316", "+01:00").unwrap(), "2026-03-16");
        assert_eq!(
            date_time("202603161015", "+01:00").unwrap(),
            "2026-03-16T10:15:00+01:00"
        );
        assert_eq!(
            date_time("20260316101530.25-0500", "+01:00").unwrap(),
            "2026-03-16T10:15:30.25-05:00"
        );
        assert!(date_time("20261345", "+01:00").is_none());
        assert!(date_time("20260231", "+01:00").is_none());
        assert!(date_time("2026031", "+01:00").is_none());
    }

    #[test]
    fn oru_to_observations() {
        let m = Message::parse(b"MSH|^~\\&|LAB|KH|TB|SP|20260316101500+0100||ORU^R01^ORU_R01|M1|P|2.5.1\rPID|1||4711^^^KH^MR||Muster^Erika||19880412|F\rOBR|1|||x|||20260316090000+0100\rOBX|1|NM|39156-5^BMI^LN||27.4|kg/m2^^UCUM|18.5-25|H|||F\rOBX|2|NM|BMI^BMI^L||abc|kg/m2|||||F\r").unwrap();
        let errors = map(&m, "site-01", "+01:00").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (
                errors[0].segment.as_str(),
                errors[0].sequence,
                errors[0].field,
                errors[0].code
            ),
            ("OBX", 2, Some(5), "102")
        );
        let m = Message::parse(b"MSH|^~\\&|LAB|KH|TB|SP|20260316101500+0100||ORU^R01^ORU_R01|M1|P|2.5.1\rPID|1||4711^^^KH^MR||Muster^Erika||19880412|F\rOBR|1|||x|||20260316090000+0100\rOBX|1|NM|39156-5^BMI^LN||27.4|kg/m2^^UCUM|18.5-25|H|||F\r").unwrap();
        let mapped = map(&m, "site-01", "+01:00").unwrap();
        assert_eq!(
            mapped.groups[0].patient.identifiers,
            [PatientId::new("KH", "4711")]
        );
        assert_eq!(
            mapped.groups[0].patient.birth_date.as_deref(),
            Some("1988-04-12")
        );
        let o = &mapped.groups[0].resources[0];
        assert_eq!(o["code"]["coding"][0]["system"], "http://loinc.org");
        assert_eq!(o["valueQuantity"]["value"].to_string(), "27.4");
        assert_eq!(o["valueQuantity"]["code"], "kg/m2");
        assert_eq!(o["effectiveDateTime"], "2026-03-16T09:00:00+01:00");
        assert_eq!(o["status"], "final");
    }

    #[test]
    fn results_belong_to_the_pid_they_follow() {
        let m = Message::parse(b"MSH|^~\\&|LAB|KH|TB|SP|20260316101500+0100||ORU^R01^ORU_R01|M1|P|2.5.1\rPID|1||A^^^KH^MR\rOBR|1|||x|||20260316090000+0100\rOBX|1|NM|29463-7^Weight^LN||70|kg^^UCUM|||||F\rPID|2||B^^^KH^MR\rOBR|1|||x|||20260316090000+0100\rOBX|1|NM|29463-7^Weight^LN||80|kg^^UCUM|||||F\r").unwrap();
        let mapped = map(&m, "site-01", "+01:00").unwrap();
        assert_eq!(mapped.groups.len(), 2);
        for (g, (mrn, kg)) in mapped.groups.iter().zip([("A", "70"), ("B", "80")]) {
            assert_eq!(g.patient.identifiers[0].value, mrn);
            assert_eq!(g.resources.len(), 1);
            assert_eq!(g.resources[0]["valueQuantity"]["value"].to_string(), kg);
        }
        // A result before any PID belongs to nobody.
        let m = Message::parse(b"MSH|^~\\&|LAB|KH|TB|SP|20260316101500||ORU^R01|M2|P|2.5.1\rOBX|1|NM|29463-7^W^LN||70|kg|||||F\rPID|1||A^^^KH\r").unwrap();
        let errors = map(&m, "site-01", "+01:00").unwrap_err();
        assert_eq!(errors[0].segment, "OBX");
    }

    #[test]
    fn a_merge_pairs_each_mrg_with_its_pid() {
        let m = Message::parse(b"MSH|^~\\&|KIS|KH|TB|SP|20260316101500||ADT^A40|M3|P|2.5\rEVN|A40|20260316101500\rPID|1||12345^^^KH^MR\rMRG|999^^^KH^MR\rPID|2||145^^^KH^MR\rMRG|146^^^KH^MR\r").unwrap();
        let mapped = map(&m, "site-01", "+01:00").unwrap();
        assert_eq!(mapped.event, Event::Merge);
        let pairs: Vec<(String, String)> = mapped
            .groups
            .iter()
            .map(|g| {
                (
                    g.patient.identifiers[0].value.clone(),
                    g.prior[0].value.clone(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [("12345".into(), "999".into()), ("145".into(), "146".into())]
        );
    }
}
