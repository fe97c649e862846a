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

/// A v2 coding system name (CWE-3) as a FHIR system URI, by HL7 table 0396 (and the local
/// spellings real feeds use for its entries: `ICD9`, `I9C`, `LOINC`); a name the table does
/// not know is the site's own (`99zzz`, `L`, a lab's short name) and becomes site-local.
pub fn system_uri(v2: &str, site: &str) -> String {
    standard_system(v2)
        .map(String::from)
        .unwrap_or_else(|| local_system(site))
}

/// The system URI of a site's own codes.
pub fn local_system(site: &str) -> String {
    format!("urn:mesemcart:{site}:local")
}

/// The FHIR system of a table 0396 coding system name (case-insensitive).
pub fn standard_system(v2: &str) -> Option<&'static str> {
    let name = v2.trim().to_ascii_uppercase();
    if let Some(table) = name.strip_prefix("HL7") {
        // HL7nnnn: a v2 table (HL70078 is table 0078).
        return V2_TABLES
            .iter()
            .find(|(t, _)| *t == table)
            .map(|(_, uri)| *uri);
    }
    Some(match name.as_str() {
        "LN" | "LOINC" => "http://loinc.org",
        "SCT" | "SNM" | "SNM3" | "SNOMED" | "SNOMEDCT" | "SNOMED-CT" => "http://snomed.info/sct",
        "I10" | "I10GM" | "ICD10GM" | "ICD-10-GM" | "I10-GM" => {
            "http://fhir.de/CodeSystem/bfarm/icd-10-gm"
        }
        "I10C" | "ICD10CM" | "ICD-10-CM" => "http://hl7.org/fhir/sid/icd-10-cm",
        "ICD10" | "ICD-10" | "I10WHO" => "http://hl7.org/fhir/sid/icd-10",
        "I9" | "I9C" | "I9CDX" | "ICD9" | "ICD-9" | "ICD9CM" | "ICD-9-CM" => {
            "http://hl7.org/fhir/sid/icd-9-cm"
        }
        "I10P" | "ICD10PCS" => "http://www.cms.gov/Medicare/Coding/ICD10",
        "OPS" | "O301" | "OPS301" => "http://fhir.de/CodeSystem/bfarm/ops",
        "CPT" | "C4" | "CPT4" | "CPT-4" => "http://www.ama-assn.org/go/cpt",
        "HCPCS" | "HCPT" => "urn:oid:2.16.840.1.113883.6.285",
        "UCUM" => "http://unitsofmeasure.org",
        "NDC" => "http://hl7.org/fhir/sid/ndc",
        "RXNORM" | "RXN" => "http://www.nlm.nih.gov/research/umls/rxnorm",
        "CVX" => "http://hl7.org/fhir/sid/cvx",
        "ATC" | "WC" => "http://www.whocc.no/atc",
        "PZN" => "http://fhir.de/CodeSystem/ifa/pzn",
        "ISO3166_1" => "urn:iso:std:iso:3166",
        _ => return None,
    })
}

/// The v2 tables (`HL7nnnn`) a feed may name as a coding system.
const V2_TABLES: &[(&str, &str)] = &[
    ("0078", "http://terminology.hl7.org/CodeSystem/v2-0078"),
    ("0085", "http://terminology.hl7.org/CodeSystem/v2-0085"),
    ("0136", "http://terminology.hl7.org/CodeSystem/v2-0136"),
    ("0203", "http://terminology.hl7.org/CodeSystem/v2-0203"),
];

/// The zone of the German sites, built into the binary with the tz database.
pub fn berlin() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get("Europe/Berlin").expect("the bundled tz database has Europe/Berlin")
}

/// HL7 DT/DTM/TS (`YYYY[MM[DD[HH[MM[SS[.S]]]]]][+-ZZZZ]`) as a FHIR date or dateTime. A time
/// without an offset is a wall-clock time of the site's zone, with daylight-saving time: the
/// offset in force then. In the repeated autumn hour the earlier offset is taken (summer time,
/// the first pass); a time inside the spring gap (a clock not yet put forward) takes the offset
/// before the gap. `None` when malformed.
pub fn date_time(ts: &str, zone: &jiff::tz::TimeZone) -> Option<String> {
    let ts = ts.trim();
    let (body, offset) = match ts.find(['+', '-']) {
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
        let sec = if digits.len() >= 14 { n(12..14)? } else { 0 };
        if h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        out.push_str(&format!("T{h:02}:{mi:02}:{sec:02}"));
        if let Some(f) = frac {
            out.push('.');
            out.push_str(f);
        }
        let offset = match offset {
            Some(z) if z.len() == 5 && z[1..].bytes().all(|b| b.is_ascii_digit()) => {
                format!("{}:{}", &z[..3], &z[3..])
            }
            Some(_) => return None,
            None => {
                let civil = jiff::civil::DateTime::new(
                    i16::try_from(n(0..4)?).ok()?,
                    i8::try_from(n(4..6)?).ok()?,
                    i8::try_from(n(6..8)?).ok()?,
                    i8::try_from(h).ok()?,
                    i8::try_from(mi).ok()?,
                    i8::try_from(sec).ok()?,
                    0,
                )
                .ok()?;
                let offset = match zone.to_ambiguous_timestamp(civil).offset() {
                    jiff::tz::AmbiguousOffset::Unambiguous { offset } => offset,
                    jiff::tz::AmbiguousOffset::Gap { before, .. }
                    | jiff::tz::AmbiguousOffset::Fold { before, .. } => before,
                };
                let secs = offset.seconds();
                let sign = if secs < 0 { '-' } else { '+' };
                let secs = secs.unsigned_abs();
                format!("{sign}{:02}:{:02}", secs / 3600, secs % 3600 / 60)
            }
        };
        out.push_str(&offset);
    }
    // Only a real calendar date passes (20260231 does not).
    trialbridge_validation::primitive::check("dateTime", &out).ok()?;
    Some(out)
}

/// An HL7 NM value (`[+|-]digits[.digits]`, leading zeros, a leading or trailing point) as a
/// FHIR decimal (`0.5`, `72`, `-0.5`); the digits after the point are kept, as they carry the
/// precision. `None` when it is not a number.
pub fn decimal(nm: &str) -> Option<serde_json::Number> {
    let t = nm.trim();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || int.len() + frac.len() > 30
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    serde_json::from_str(&out).ok()
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

/// A Quantity of `value` in the unit of a CWE (OBX-6): UCUM when the unit names no system or
/// names UCUM, otherwise the unit's text only.
fn quantity(value: serde_json::Number, unit: &Field<'_>) -> Value {
    let mut q = json!({"value": value});
    let ucode = unit.component(1);
    if !ucode.trim().is_empty() {
        let text = unit.component(2);
        q["unit"] = json!(if text.is_empty() { ucode.clone() } else { text });
        let usys = unit.component(3);
        if usys.eq_ignore_ascii_case("UCUM") || usys.is_empty() {
            q["system"] = json!("http://unitsofmeasure.org");
            q["code"] = json!(ucode);
        }
    }
    q
}

/// OBX-7 as a FHIR referenceRange when it is made of numbers: `low-high`, `<high`, `<=high`,
/// `>low`, `>=low` (units from OBX-6). Anything else is text and stays at the site.
fn reference_range(text: &str, unit: &Field<'_>) -> Option<Value> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let q = |s: &str| decimal(s).map(|n| quantity(n, unit));
    for (prefix, side) in [("<=", "high"), (">=", "low"), ("<", "high"), (">", "low")] {
        if let Some(rest) = t.strip_prefix(prefix) {
            return Some(json!({side: q(rest)?}));
        }
    }
    // `low-high`; the first character may be a sign of the low end.
    let cut = t
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '-')
        .map(|(i, _)| i)?;
    let (low, high) = (&t[..cut], &t[cut + 1..]);
    Some(json!({"low": q(low)?, "high": q(high)?}))
}

struct Ctx<'a> {
    site: &'a str,
    zone: &'a jiff::tz::TimeZone,
    /// MSH-7, when the message was sent (never an observation time; it dates what the message
    /// reports as done).
    sent: Option<String>,
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
        match date_time(&raw, self.zone) {
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
        match date_time(&dob, cx.zone) {
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
    match value_type.as_str() {
        // Text repeats into one string, a line per repetition.
        "ST" | "TX" | "FT" if !v.is_empty() => {
            o["valueString"] = json!(v
                .repetitions()
                .map(|r| r.value().into_owned())
                .collect::<Vec<_>>()
                .join("\n"));
        }
        _ => {
            // Any other value repeats into components of the same code, one per value, as
            // the v2-to-FHIR IG (and FHIR-Converter) map it: no value is dropped.
            let mut values = Vec::new();
            for (i, rep) in v.repetitions().enumerate() {
                if rep.is_empty() {
                    continue;
                }
                match observation_value(&rep, &value_type, seg, seq, i + 1, cx) {
                    Ok(Some(kv)) => values.push(kv),
                    Ok(None) => {}
                    Err(()) => return None,
                }
            }
            if values.len() == 1 {
                let (k, val) = values.remove(0);
                o[k] = val;
            } else if !values.is_empty() {
                o["component"] = Value::Array(
                    values
                        .into_iter()
                        .map(|(k, val)| {
                            let mut c = json!({"code": o["code"].clone()});
                            c[k] = val;
                            c
                        })
                        .collect(),
                );
            }
        }
    }
    // The reference range from its numbers only (`18.5-25`, `<5`, `>=60`): its text may be
    // anything a person typed, and free text does not leave the site.
    if let Some(range) = reference_range(&seg.field(7).value(), &seg.field(6)) {
        o["referenceRange"] = json!([range]);
    }
    // Every repetition of OBX-8, in the v3 system R4 binds (its codes are table 0078's).
    let interpretations: Vec<Value> = seg
        .field(8)
        .repetitions()
        .map(|r| r.component(1).trim().to_string())
        .filter(|c| !c.is_empty())
        .map(|c| json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": c}]}))
        .collect();
    if !interpretations.is_empty() {
        o["interpretation"] = Value::Array(interpretations);
    }
    if let Some(t) = cx.time(seg, seq, 14).or_else(|| fallback_time.cloned()) {
        o["effectiveDateTime"] = json!(t)
    }
    Some(o)
}

/// One OBX-5 value (repetition `rep`) of type `value_type` as its `value[x]` element, `None`
/// for types without a FHIR value here (CQ, MO, NA, ...), `Err` after an ERR entry.
fn observation_value(
    v: &Field<'_>,
    value_type: &str,
    seg: &Segment<'_>,
    seq: usize,
    rep: usize,
    cx: &mut Ctx<'_>,
) -> Result<Option<(&'static str, Value)>, ()> {
    let refuse = |cx: &mut Ctx<'_>, text: String| {
        cx.errors
            .push(AckError::at("OBX", seq, 5, "102", text).in_repetition(rep));
        Err(())
    };
    Ok(Some(match value_type {
        "NM" => {
            let raw = v.component(1);
            let Some(num) = decimal(&raw) else {
                return refuse(cx, format!("OBX-5 '{raw}' is not a number (OBX-2 is NM)"));
            };
            ("valueQuantity", quantity(num, &seg.field(6)))
        }
        "CE" | "CWE" | "CNE" => match concept(v, cx.site) {
            Some(cc) => ("valueCodeableConcept", cc),
            None => return Ok(None),
        },
        "SN" => {
            let comparator = v.component(1);
            let n1 = v.component(2);
            let sep = v.component(3);
            let n2 = v.component(4);
            // SN: comparator ^ num1 ^ separator/suffix ^ num2; the unit is OBX-6.
            let unit = seg.field(6);
            let valid_comparator = matches!(
                comparator.as_ref(),
                "" | "<" | "<=" | ">" | ">=" | "=" | "<>"
            );
            match (valid_comparator, sep.as_ref(), decimal(&n1), decimal(&n2)) {
                (true, "" | "+", Some(a), None) if n2.trim().is_empty() => {
                    let mut q = quantity(a, &unit);
                    if matches!(comparator.as_ref(), "<" | "<=" | ">" | ">=") {
                        q["comparator"] = json!(comparator);
                    }
                    ("valueQuantity", q)
                }
                (true, "-", Some(a), Some(b)) if comparator.is_empty() => (
                    "valueRange",
                    json!({"low": quantity(a, &unit), "high": quantity(b, &unit)}),
                ),
                (true, ":" | "/", Some(a), Some(b)) if comparator.is_empty() => (
                    "valueRatio",
                    json!({"numerator": {"value": a}, "denominator": {"value": b}}),
                ),
                _ => {
                    return refuse(
                        cx,
                        format!("OBX-5 '{}' is not a structured numeric", v.raw()),
                    )
                }
            }
        }
        "DT" | "TS" | "DTM" => match date_time(&v.component(1), cx.zone) {
            Some(t) => ("valueDateTime", json!(t)),
            None => return refuse(cx, format!("OBX-5 '{}' is not a date/time", v.raw())),
        },
        _ => return Ok(None),
    }))
}

/// Maps a parsed message; content errors come back as ERR entries for an AE.
pub fn map(m: &Message, site: &str, zone: &jiff::tz::TimeZone) -> Result<Mapped, Vec<AckError>> {
    let (ty, trigger, _) = m.message_type();
    let sent = m
        .segments()
        .next()
        .and_then(|msh| date_time(&msh.field(7).component(1), zone));
    let mut cx = Ctx {
        site,
        zone,
        sent,
        errors: Vec::new(),
    };
    let event = match (ty.as_str(), trigger.as_str()) {
        ("ADT", "A03") => Event::Discharge,
        ("ADT", "A40") => Event::Merge,
        ("ORU", _) => Event::Results,
        _ => Event::Visit,
    };
    let mut groups: Vec<PatientGroup> = Vec::new();
    let (mut pid_seq, mut obx_seq, mut pr1_seq, mut dg1_seq, mut mrg_seq) = (0, 0, 0, 0, 0);
    let mut obr_time: Option<String> = None;
    let mut has_pv1 = false;
    // The group's visit number (PV1-19): diagnoses and procedures of a visit are keyed on it,
    // so the A01, A08 and A03 of one visit update one Condition, not one each.
    let mut visit: Option<String> = None;
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
            visit = None;
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
                let number = seg.field(19).component(1).trim().to_string();
                visit = (!number.is_empty()).then_some(number);
                if let Some(e) = encounter(&seg, &event, &mut cx) {
                    group.resources.push(e);
                }
            }
            "OBR" => obr_time = cx.time(&seg, 1, 7),
            "OBX" => {
                // OBX-14, else OBR-7: when the observation was made. MSH-7 is when the message
                // was sent, never an observation time.
                if let Some(o) = observation(&seg, seq, obr_time.as_ref(), &mut cx) {
                    group.resources.push(o);
                }
            }
            "PR1" => group.resources.extend(
                procedure(&seg, seq, &mut cx)
                    .map(|r| keyed_on_visit(r, visit.as_deref(), "pr1", &seg)),
            ),
            "DG1" => group.resources.extend(
                condition(&seg, seq, &mut cx)
                    .map(|r| keyed_on_visit(r, visit.as_deref(), "dg1", &seg)),
            ),
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

/// A diagnosis or procedure of a visit keyed on the visit and the segment's identity (set id
/// and code): the same DG1 repeated in the visit's A01, A08 and A03 is one resource.
fn keyed_on_visit(mut r: Value, visit: Option<&str>, kind: &str, seg: &Segment<'_>) -> Value {
    if let Some(v) = visit {
        let set_id = seg.field(1).component(1);
        let code = seg.field(3).component(1);
        r["id"] = json!(format!(
            "visit:{v}:{kind}:{}:{}",
            set_id.trim(),
            code.trim()
        ));
    }
    r
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
    // A discharge (A03) or a discharge time (PV1-45, in any trigger) ends the visit.
    let discharged = *event == Event::Discharge || !pv1.field(45).is_empty();
    let mut e = json!({"resourceType": "Encounter", "id": key,
        "status": if discharged { "finished" } else { "in-progress" },
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display}});
    let mut p = Map::new();
    for (n, element) in [(44, "start"), (45, "end")] {
        if pv1.field(n).is_null() {
            // HL7's `""`: the sender deleted the time; the visit merge removes what was known.
            p.insert(format!("_{element}"), cleared());
        } else if let Some(t) = cx.time(pv1, 1, n) {
            p.insert(element.into(), json!(t));
        }
    }
    if !p.is_empty() {
        e["period"] = Value::Object(p);
    }
    Some(e)
}

/// The site-side mark of a primitive the sender cleared with HL7's `""` (valid FHIR: a value
/// absent for a reason). The gateway's visit merge removes the element and the mark, so
/// neither leaves the site.
pub fn cleared() -> Value {
    json!({"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]})
}

/// Whether `v` is the mark [`cleared`] puts on a primitive.
pub fn is_cleared(v: &Value) -> bool {
    v.pointer("/extension/0/url").and_then(Value::as_str) == Some(DATA_ABSENT_REASON)
}

const DATA_ABSENT_REASON: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

fn procedure(pr1: &Segment<'_>, seq: usize, cx: &mut Ctx<'_>) -> Option<Value> {
    let code_field = cx.required(pr1, seq, 3, "procedure code")?;
    let code = concept(&code_field, cx.site)?;
    let performed = cx.time(pr1, seq, 5);
    let status = procedure_status(
        &pr1.field(20).component(1),
        performed.as_deref(),
        cx.sent.as_deref(),
    );
    let mut p = json!({"resourceType": "Procedure", "id": format!("pr1-{seq}"), "status": status, "code": code});
    if let Some(t) = performed {
        p["performedDateTime"] = json!(t);
    }
    Some(p)
}

/// Procedure.status from the message. The v2-to-FHIR IG leaves it to the message context
/// ("if not clear, use unknown"); here: PR1-20 (procedure action code, table 0206) `D`
/// withdraws the procedure (entered-in-error); a procedure time (PR1-5) at or before the
/// message time (MSH-7) reports a procedure done (completed); a later time (a planned
/// procedure) or none is not clear (unknown).
fn procedure_status(action: &str, performed: Option<&str>, sent: Option<&str>) -> &'static str {
    if action.trim() == "D" {
        return "entered-in-error";
    }
    match (performed, sent) {
        (Some(p), Some(s)) if not_after(p, s) => "completed",
        _ => "unknown",
    }
}

/// Whether FHIR dateTime `a` is at or before `b` (instants compared as instants; a partial
/// date compared on the precision both have).
fn not_after(a: &str, b: &str) -> bool {
    match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
        (Ok(x), Ok(y)) => x <= y,
        _ => {
            let n = a.len().min(b.len()).min(10);
            a[..n] <= b[..n]
        }
    }
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
    // As the v2-to-FHIR IG maps them: DG1-5 (diagnosis date/time) is the onset, DG1-19
    // (attestation date/time) the recorded date.
    if let Some(t) = cx.time(dg1, seq, 5) {
        c["onsetDateTime"] = json!(t);
    }
    if let Some(t) = cx.time(dg1, seq, 19) {
        c["recordedDate"] = json!(t);
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z() -> jiff::tz::TimeZone {
        berlin()
    }

    #[test]
    fn hl7_times() {
        assert_eq!(date_time("20260316", &z()).unwrap(), "2026-03-16");
        assert_eq!(date_time("2026", &z()).unwrap(), "2026");
        assert_eq!(
            date_time("20260316101530.25-0500", &z()).unwrap(),
            "2026-03-16T10:15:30.25-05:00"
        );
        assert!(date_time("20261345", &z()).is_none());
        assert!(date_time("20260231", &z()).is_none());
        assert!(date_time("2026031", &z()).is_none());
        assert!(date_time("20260316101530+01", &z()).is_none());
    }

    #[test]
    fn zone_less_times_take_the_sites_offset_of_that_day() {
        // Winter and summer.
        assert_eq!(
            date_time("202601151015", &z()).unwrap(),
            "2026-01-15T10:15:00+01:00"
        );
        assert_eq!(
            date_time("20260715093000", &z()).unwrap(),
            "2026-07-15T09:30:00+02:00"
        );
        // 29 March 2026: 02:00 CET becomes 03:00 CEST.
        assert_eq!(
            date_time("202603290159", &z()).unwrap(),
            "2026-03-29T01:59:00+01:00"
        );
        assert_eq!(
            date_time("202603290300", &z()).unwrap(),
            "2026-03-29T03:00:00+02:00"
        );
        // Inside the gap: a clock not yet put forward, read with the offset before the gap.
        assert_eq!(
            date_time("202603290230", &z()).unwrap(),
            "2026-03-29T02:30:00+01:00"
        );
        // 25 October 2026: 03:00 CEST becomes 02:00 CET; the repeated hour takes the
        // earlier offset (the first pass, summer time).
        assert_eq!(
            date_time("202610250230", &z()).unwrap(),
            "2026-10-25T02:30:00+02:00"
        );
        assert_eq!(
            date_time("202610250300", &z()).unwrap(),
            "2026-10-25T03:00:00+01:00"
        );
        // Another site's zone.
        let lisbon = jiff::tz::TimeZone::get("Europe/Lisbon").unwrap();
        assert_eq!(
            date_time("20260715093000", &lisbon).unwrap(),
            "2026-07-15T09:30:00+01:00"
        );
    }

    #[test]
    fn hl7_numbers_as_fhir_decimals() {
        for (nm, fhir) in [
            (".5", "0.5"),
            ("072", "72"),
            ("72.", "72"),
            ("+72", "72"),
            ("-.5", "-0.5"),
            ("0072.50", "72.50"),
            ("0", "0"),
            (" 27.4 ", "27.4"),
        ] {
            assert_eq!(
                decimal(nm).map(|n| n.to_string()).as_deref(),
                Some(fhir),
                "{nm}"
            );
        }
        for bad in [
            "", ".", "+", "-", "1e5", "1.2.3", "abc", "1,5", "--1", "NaN", "inf",
        ] {
            assert!(decimal(bad).is_none(), "{bad}");
        }
    }

    fn oru(obx: &str) -> Mapped {
        let text = format!("MSH|^~\\&|LAB|KH|TB|SP|20260316101500+0100||ORU^R01^ORU_R01|M1|P|2.5.1\rPID|1||4711^^^KH^MR||Muster^Erika||19880412|F\rOBR|1|||x|||20260316090000+0100\r{obx}\r");
        map(&Message::parse(text.as_bytes()).unwrap(), "site-01", &z()).unwrap()
    }

    #[test]
    fn nm_and_sn_values_keep_their_number_and_unit() {
        for (v, value) in [(".5", "0.5"), ("072", "72"), ("72.", "72")] {
            let m = oru(&format!("OBX|1|NM|29463-7^W^LN||{v}|kg^^UCUM|||||F"));
            let q = &m.groups[0].resources[0]["valueQuantity"];
            assert_eq!(q["value"].to_string(), value);
            assert_eq!(q["code"], "kg");
        }
        let m = oru("OBX|1|SN|29463-7^W^LN||<^5|mm^^UCUM|||||F");
        let q = &m.groups[0].resources[0]["valueQuantity"];
        assert_eq!(
            (
                q["comparator"].as_str(),
                q["value"].to_string().as_str(),
                q["code"].as_str()
            ),
            (Some("<"), "5", Some("mm"))
        );
        assert_eq!(q["system"], "http://unitsofmeasure.org");
        let m = oru("OBX|1|SN|29463-7^W^LN||^72|kg^^UCUM|||||F");
        let q = &m.groups[0].resources[0]["valueQuantity"];
        assert_eq!(
            (q["value"].to_string().as_str(), q["code"].as_str()),
            ("72", Some("kg"))
        );
        assert!(q.get("comparator").is_none());
        let m = oru("OBX|1|SN|29463-7^W^LN||^60^-^.75|kg^^UCUM|||||F");
        let r = &m.groups[0].resources[0]["valueRange"];
        assert_eq!(
            (
                r["low"]["value"].to_string(),
                r["high"]["value"].to_string()
            ),
            ("60".into(), "0.75".into())
        );
        assert_eq!(r["high"]["code"], "kg");
    }

    #[test]
    fn the_hl7_null_is_an_empty_value_never_an_error() {
        let m = oru("OBX|1|NM|29463-7^W^LN||70|kg^^UCUM|\"\"|\"\"|||F|||\"\"");
        let o = &m.groups[0].resources[0];
        assert_eq!(
            o["effectiveDateTime"], "2026-03-16T09:00:00+01:00",
            "OBR-7 then"
        );
        assert!(o.get("referenceRange").is_none() && o.get("interpretation").is_none());
        let adt = "MSH|^~\\&|KIS|KH|TB|SP|20260316101500||ADT^A01|M1|P|2.5\rPID|1||4711^^^KH^MR||X||\"\"|F\rPV1|1|I|||||||||||||||||V1|||||||||||||||||||||||||20260316101500|\"\"\rDG1|1||M94.26^^I10|||F\rDG1|2||M94.26^^I10||\"\"|F\r";
        let m = map(&Message::parse(adt.as_bytes()).unwrap(), "site-01", &z()).unwrap();
        let g = &m.groups[0];
        assert_eq!(g.patient.birth_date, None);
        let enc = &g.resources[0];
        assert_eq!(enc["period"]["start"], "2026-03-16T10:15:00+01:00");
        assert!(enc["period"].get("end").is_none());
    }

    #[test]
    fn a_repeated_value_becomes_components_and_a_bad_one_is_refused_where_it_is() {
        let oru = |obx5: &str| {
            let text = format!("MSH|^~\\&|LAB|KH|TB|SP|20260316101500+0100||ORU^R01|M1|P|2.5.1\rPID|1||4711^^^KH^MR\rOBR|1|||x|||20260316090000\rOBX|1|NM|29463-7^W^LN||{obx5}|kg^^UCUM|||||F\r");
            map(&Message::parse(text.as_bytes()).unwrap(), "site-01", &z())
        };
        let m = oru("70~71").unwrap();
        let o = &m.groups[0].resources[0];
        assert!(o.get("valueQuantity").is_none());
        let values: Vec<&Value> = o["component"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["valueQuantity"]["value"])
            .collect();
        assert_eq!(values, [&json!(70), &json!(71)]);
        assert_eq!(o["component"][1]["code"], o["code"]);
        let errors = oru("70~x").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].field, errors[0].repetition), (Some(5), Some(2)));
        assert!(errors[0].text.contains("'x'"), "{}", errors[0].text);
    }

    #[test]
    fn procedure_status_comes_from_the_message() {
        let adt = |pr1: &str| {
            let text = format!("MSH|^~\\&|KIS|KH|TB|SP|20260316101500||ADT^A08|M1|P|2.6\rPID|1||4711^^^KH^MR\rPV1|1|I|||||||||||||||||V1\r{pr1}\r");
            let m = map(&Message::parse(text.as_bytes()).unwrap(), "site-01", &z()).unwrap();
            m.groups[0]
                .resources
                .iter()
                .find(|r| r["resourceType"] == "Procedure")
                .unwrap()["status"]
                .clone()
        };
        // Done before the message was sent; planned after it; no time; withdrawn (PR1-20 D).
        assert_eq!(
            adt("PR1|1||5-812.5^Knorpel^OPS||20260316080000"),
            "completed"
        );
        assert_eq!(adt("PR1|1||5-812.5^Knorpel^OPS||20260316"), "completed");
        assert_eq!(adt("PR1|1||5-812.5^Knorpel^OPS||20260320080000"), "unknown");
        assert_eq!(adt("PR1|1||5-812.5^Knorpel^OPS"), "unknown");
        assert_eq!(
            adt("PR1|1||5-812.5^Knorpel^OPS||20260316080000|||||||||||||||D"),
            "entered-in-error"
        );
        // An offset given in the message is compared as an instant: 09:30 UTC is after 10:15
        // Berlin winter time (09:15 UTC).
        assert_eq!(
            adt("PR1|1||5-812.5^Knorpel^OPS||20260316093000+0000"),
            "unknown"
        );
    }

    #[test]
    fn a_result_without_an_observation_time_has_no_effective_time() {
        let text = "MSH|^~\\&|LAB|KH|TB|SP|20260316101500+0100||ORU^R01|M1|P|2.5.1\rPID|1||4711^^^KH^MR\rOBR|1|||x\rOBX|1|NM|29463-7^W^LN||70|kg^^UCUM|||||F\r";
        let m = map(&Message::parse(text.as_bytes()).unwrap(), "site-01", &z()).unwrap();
        assert!(m.groups[0].resources[0].get("effectiveDateTime").is_none());
    }

    #[test]
    fn reference_ranges_from_numbers_only_and_every_interpretation() {
        let m = oru("OBX|1|NM|29463-7^W^LN||70|kg^^UCUM|50-90|H~A|||F");
        let o = &m.groups[0].resources[0];
        assert_eq!(o["referenceRange"][0]["low"]["value"].to_string(), "50");
        assert_eq!(o["referenceRange"][0]["high"]["code"], "kg");
        let codes: Vec<&str> = o["interpretation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["H", "A"]);
        assert_eq!(
            o["interpretation"][0]["coding"][0]["system"],
            "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
        );
        let m = oru("OBX|1|NM|29463-7^W^LN||70|kg^^UCUM|<=5|||||F");
        assert_eq!(
            m.groups[0].resources[0]["referenceRange"][0]["high"]["value"].to_string(),
            "5"
        );
        for text in ["normal for Erika Muster, 030 1234567", "negativ", "5-", "-"] {
            let m = oru(&format!("OBX|1|NM|29463-7^W^LN||70|kg^^UCUM|{text}|||||F"));
            assert!(
                m.groups[0].resources[0].get("referenceRange").is_none(),
                "{text}"
            );
        }
    }

    #[test]
    fn table_0396_names_are_standard_systems() {
        assert_eq!(
            system_uri("I9", "site-01"),
            "http://hl7.org/fhir/sid/icd-9-cm"
        );
        assert_eq!(
            system_uri("icd9", "site-01"),
            "http://hl7.org/fhir/sid/icd-9-cm"
        );
        assert_eq!(
            system_uri("I9C", "site-01"),
            "http://hl7.org/fhir/sid/icd-9-cm"
        );
        assert_eq!(
            system_uri("CPT", "site-01"),
            "http://www.ama-assn.org/go/cpt"
        );
        assert_eq!(system_uri("LN", "site-01"), "http://loinc.org");
        assert_eq!(
            system_uri("HL70078", "site-01"),
            "http://terminology.hl7.org/CodeSystem/v2-0078"
        );
        for local in ["99zzz", "L", "BMI", "HL79999", ""] {
            assert_eq!(
                system_uri(local, "site-01"),
                "urn:mesemcart:site-01:local",
                "{local}"
            );
        }
    }

    #[test]
    fn oru_to_observations() {
        let m = Message::parse(b"MSH|^~\\&|LAB|KH|TB|SP|20260316101500+0100||ORU^R01^ORU_R01|M1|P|2.5.1\rPID|1||4711^^^KH^MR||Muster^Erika||19880412|F\rOBR|1|||x|||20260316090000+0100\rOBX|1|NM|39156-5^BMI^LN||27.4|kg/m2^^UCUM|18.5-25|H|||F\rOBX|2|NM|BMI^BMI^L||abc|kg/m2|||||F\r").unwrap();
        let errors = map(&m, "site-01", &berlin()).unwrap_err();
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
        let mapped = map(&m, "site-01", &berlin()).unwrap();
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
        let mapped = map(&m, "site-01", &berlin()).unwrap();
        assert_eq!(mapped.groups.len(), 2);
        for (g, (mrn, kg)) in mapped.groups.iter().zip([("A", "70"), ("B", "80")]) {
            assert_eq!(g.patient.identifiers[0].value, mrn);
            assert_eq!(g.resources.len(), 1);
            assert_eq!(g.resources[0]["valueQuantity"]["value"].to_string(), kg);
        }
        // A result before any PID belongs to nobody.
        let m = Message::parse(b"MSH|^~\\&|LAB|KH|TB|SP|20260316101500||ORU^R01|M2|P|2.5.1\rOBX|1|NM|29463-7^W^LN||70|kg|||||F\rPID|1||A^^^KH\r").unwrap();
        let errors = map(&m, "site-01", &berlin()).unwrap_err();
        assert_eq!(errors[0].segment, "OBX");
    }

    #[test]
    fn a_merge_pairs_each_mrg_with_its_pid() {
        let m = Message::parse(b"MSH|^~\\&|KIS|KH|TB|SP|20260316101500||ADT^A40|M3|P|2.5\rEVN|A40|20260316101500\rPID|1||12345^^^KH^MR\rMRG|999^^^KH^MR\rPID|2||145^^^KH^MR\rMRG|146^^^KH^MR\r").unwrap();
        let mapped = map(&m, "site-01", &berlin()).unwrap();
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
