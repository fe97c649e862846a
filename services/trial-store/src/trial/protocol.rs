//! The protocol rules on the write path: before a MesemCart resource is stored, the facts each
//! rule needs are looked up in the same write transaction (so a transaction that records the
//! BMI and enrols the subject sees its own BMI) and the pure rules of
//! `trialbridge_validation::protocol` decide. A visit outside its window is not refused: it is
//! recorded as a DetectedIssue beside the Observation.

use serde_json::{json, Value};
use trialbridge_fhir::{IssueType, OperationOutcome, OutcomeIssue};
use trialbridge_storage::{AccessContext, WriteTxn};
use trialbridge_validation::protocol::{
    age_range, EligibilityFacts, StudyRules, ENROLLED, VISIT_EXTENSION,
};
use trialbridge_validation::trial;

use crate::error::{Status, StoreError};
use crate::fhir::{Incoming, WriteRules};
use crate::security::Caller;

const LOINC: &str = "http://loinc.org";
const MEASURES: &str = "https://fhir.mesemcart-sponsor.example/CodeSystem/mesemcart-measures";

fn rejected(issues: Vec<OutcomeIssue>) -> StoreError {
    StoreError::Rejected {
        status: Status::Unprocessable,
        outcome: OperationOutcome { issues },
    }
}

async fn current_json(
    txn: &mut dyn WriteTxn,
    ctx: &AccessContext,
    rt: &str,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    // Facts of a site the caller does not see are unknown: they neither decide a rule nor
    // appear in a message.
    Ok(txn
        .current(rt, id)
        .await?
        .filter(|v| !v.deleted && ctx.sites.sees(v.site.as_deref()))
        .and_then(|v| v.body)
        .and_then(|b| serde_json::from_str(&b).ok()))
}

/// Current resources of `rt` matching `params` (at most 1,000).
async fn find(
    txn: &mut dyn WriteTxn,
    ctx: &AccessContext,
    rt: &str,
    params: &[(&str, String)],
) -> Result<Vec<Value>, StoreError> {
    let pairs: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let request = trialbridge_fhir::search::parse(rt, &pairs, true)
        .map_err(|issue| StoreError::from_issue(Status::InternalError, issue))?;
    let ids = txn.search_ids(ctx, rt, &request, 1000).await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(v) = current_json(txn, ctx, rt, &id).await? {
            out.push(v);
        }
    }
    Ok(out)
}

fn reference(v: &Value, field: &str) -> Option<String> {
    v.get(field)?.get("reference")?.as_str().map(String::from)
}

fn effective(v: &Value) -> String {
    v.get("effectiveDateTime")
        .or_else(|| v.pointer("/effectivePeriod/start"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn live(v: &Value) -> bool {
    !matches!(
        v.get("status").and_then(Value::as_str),
        Some("entered-in-error" | "cancelled" | "not-done")
    )
}

/// The latest value of an Observation code of a patient (by effective time).
async fn latest_quantity(
    txn: &mut dyn WriteTxn,
    ctx: &AccessContext,
    patient: &str,
    system: &str,
    code: &str,
) -> Result<Option<(f64, String)>, StoreError> {
    let mut obs = find(
        txn,
        ctx,
        "Observation",
        &[
            ("subject", patient.to_string()),
            ("code", format!("{system}|{code}")),
        ],
    )
    .await?;
    obs.retain(live);
    obs.sort_by_key(effective);
    Ok(obs.last().and_then(|o| {
        let value = o.pointer("/valueQuantity/value")?.as_f64()?;
        let unit = o
            .pointer("/valueQuantity/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Some((value, unit))
    }))
}

async fn eligibility_facts(
    txn: &mut dyn WriteTxn,
    ctx: &AccessContext,
    subject: &Value,
    patient: &str,
) -> Result<EligibilityFacts, StoreError> {
    let mut facts = EligibilityFacts::default();
    if let Some((age, _)) = latest_quantity(txn, ctx, patient, MEASURES, "age-at-consent").await? {
        facts.age_years = Some((age, age));
    } else if let Some(p) =
        current_json(txn, ctx, "Patient", patient.trim_start_matches("Patient/")).await?
    {
        let consent = subject
            .pointer("/period/start")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| trialbridge_fhir::instant::format(time::OffsetDateTime::now_utc()));
        facts.age_years = p
            .get("birthDate")
            .and_then(Value::as_str)
            .and_then(|b| age_range(b, &consent));
    }
    facts.bmi = match latest_quantity(txn, ctx, patient, LOINC, "39156-5").await? {
        Some((bmi, _)) => Some(bmi),
        None => {
            let weight = latest_quantity(txn, ctx, patient, LOINC, "29463-7").await?;
            let height = latest_quantity(txn, ctx, patient, LOINC, "8302-2").await?;
            match (weight, height) {
                (Some((w, wu)), Some((h, hu))) => {
                    let kg = if wu == "g" { w / 1000.0 } else { w };
                    let m = if hu == "m" { h } else { h / 100.0 };
                    (m > 0.0).then(|| kg / (m * m))
                }
                _ => None,
            }
        }
    };
    for code in ["icrs-grade", "icrs-ocd-grade"] {
        for o in find(
            txn,
            ctx,
            "Observation",
            &[
                ("subject", patient.to_string()),
                ("code", format!("{MEASURES}|{code}")),
            ],
        )
        .await?
        {
            if !live(&o) {
                continue;
            }
            for c in o
                .pointer("/valueCodeableConcept/coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(s), Some(k)) = (
                    c.get("system").and_then(Value::as_str),
                    c.get("code").and_then(Value::as_str),
                ) {
                    facts.grades.push((s.to_string(), k.to_string()));
                }
            }
        }
    }
    for c in find(txn, ctx, "Condition", &[("subject", patient.to_string())]).await? {
        let refuted = c
            .pointer("/verificationStatus/coding/0/code")
            .and_then(Value::as_str)
            .is_some_and(|s| matches!(s, "refuted" | "entered-in-error"));
        if refuted {
            continue;
        }
        for coding in c
            .pointer("/code/coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(s), Some(k)) = (
                coding.get("system").and_then(Value::as_str),
                coding.get("code").and_then(Value::as_str),
            ) {
                facts.conditions.push((s.to_string(), k.to_string()));
            }
        }
    }
    Ok(facts)
}

/// The surgery (implantation) date of a patient, as `YYYY-MM-DD`.
async fn surgery_date(
    txn: &mut dyn WriteTxn,
    ctx: &AccessContext,
    patient: &str,
) -> Result<Option<String>, StoreError> {
    let procs = find(
        txn,
        ctx,
        "Procedure",
        &[
            ("subject", patient.to_string()),
            ("code", format!("{MEASURES}|mesemcart-implantation")),
        ],
    )
    .await?;
    Ok(procs
        .iter()
        .filter(|p| live(p))
        .filter_map(|p| {
            p.get("performedDateTime")
                .or_else(|| p.pointer("/performedPeriod/start"))
                .and_then(Value::as_str)
        })
        .map(|d| d.chars().take(10).collect::<String>())
        .min())
}

fn day_number(date: &str) -> Option<i64> {
    let d = time::Date::parse(
        date.get(..10)?,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    Some(i64::from(d.to_julian_day()))
}

/// The identifier system of trial subject numbers (`MC-01-007`).
pub const SUBJECT_ID_SYSTEM: &str = "https://fhir.mesemcart-sponsor.example/sid/subject";

/// A subject number belongs to its site: a Patient's or ResearchSubject's subject identifier
/// must lie in the namespace of the site the resource is written for, so that no site files a
/// subject under another site's numbers. Refused the same way whether that number exists.
fn subject_identifiers_in_site(caller: &Caller, res: &Incoming) -> Result<(), StoreError> {
    if !matches!(res.resource_type, "Patient" | "ResearchSubject") {
        return Ok(());
    }
    let Some(site) = crate::security::resource_site(caller, &res.value)? else {
        return Ok(());
    };
    let wrong: Vec<&str> = res.value["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["system"] == SUBJECT_ID_SYSTEM)
        .filter_map(|i| i["value"].as_str())
        .filter(|v| !crate::security::in_site_namespace(&site, v))
        .collect();
    match wrong.first() {
        None => Ok(()),
        Some(v) => Err(StoreError::Rejected {
            status: Status::Forbidden,
            outcome: OperationOutcome {
                issues: vec![OutcomeIssue::error(
                    IssueType::Forbidden,
                    format!(
                        "the subject number {v} is not one of {site}: its subject numbers begin with {}",
                        crate::security::site_namespace(&site).to_ascii_uppercase()
                    ),
                )
                .at(format!("{}.identifier", res.resource_type))],
            },
        }),
    }
}

/// The MesemCart protocol rules on every write, with their numbers from the built-in study.
pub struct TrialRules;

#[async_trait::async_trait]
impl WriteRules for TrialRules {
    async fn check(
        &self,
        txn: &mut dyn WriteTxn,
        caller: &Caller,
        res: &Incoming,
        id: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let current = if crate::trial::monitor::may_be_evidence(res.resource_type) {
            txn.current(res.resource_type, id)
                .await?
                .and_then(|v| v.body)
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        } else {
            None
        };
        crate::trial::monitor::evidence_is_the_monitors(caller, &res.value, current.as_ref())?;
        subject_identifiers_in_site(caller, res)?;
        enforce(txn, &caller.ctx, crate::trial::study::rules(), res, id).await
    }

    async fn check_delete(
        &self,
        _txn: &mut dyn WriteTxn,
        caller: &Caller,
        current: &Value,
    ) -> Result<(), StoreError> {
        crate::trial::monitor::evidence_stays(caller, current)
    }
}

/// Applies the protocol rules to a resource about to be stored as `id`. Returns the
/// deviations to record (as DetectedIssues) once it is stored; a broken rule is a 422.
pub async fn enforce(
    txn: &mut dyn WriteTxn,
    ctx: &AccessContext,
    rules: &StudyRules,
    res: &Incoming,
    id: &str,
) -> Result<Vec<Value>, StoreError> {
    let v = &res.value;
    match res.resource_type {
        "ResearchSubject" if !trial::applicable(v).is_empty() => {
            let Some(status) = v.get("status").and_then(Value::as_str) else {
                return Ok(Vec::new());
            };
            let previous = current_json(txn, ctx, "ResearchSubject", id).await?;
            let before = previous
                .as_ref()
                .and_then(|p| p.get("status"))
                .and_then(Value::as_str)
                .map(String::from);
            if let Some(from) = &before {
                if let Some(issue) = rules.transition(from, status) {
                    return Err(rejected(vec![issue]));
                }
            }
            let entering = ENROLLED.contains(&status)
                && !before.as_deref().is_some_and(|b| ENROLLED.contains(&b));
            if entering {
                let Some(patient) = reference(v, "individual") else {
                    return Ok(Vec::new());
                };
                let facts = eligibility_facts(txn, ctx, v, &patient).await?;
                let issues = rules.eligibility(&facts);
                if !issues.is_empty() {
                    return Err(rejected(issues));
                }
            }
            Ok(Vec::new())
        }
        "Procedure" if trial::is_implantation(v) && live(v) => {
            let Some(patient) = reference(v, "subject") else {
                return Ok(Vec::new());
            };
            let others: Vec<String> = find(
                txn,
                ctx,
                "Procedure",
                &[
                    ("subject", patient.clone()),
                    ("code", format!("{MEASURES}|mesemcart-implantation")),
                ],
            )
            .await?
            .into_iter()
            .filter(|p| live(p) && p.get("id").and_then(Value::as_str) != Some(id))
            .filter_map(|p| p.get("id").and_then(Value::as_str).map(String::from))
            .collect();
            if !others.is_empty() {
                return Err(rejected(vec![OutcomeIssue::error(
                    IssueType::BusinessRule,
                    format!("{patient} already has an implantation (Procedure/{}); a subject receives MesemCart once", others.join(", Procedure/")),
                )
                .at("Procedure.code")]));
            }
            Ok(Vec::new())
        }
        "Observation" => {
            let visit = v
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(VISIT_EXTENSION))
                .and_then(|e| e.get("valueCanonical"))
                .and_then(Value::as_str);
            let (Some(visit), Some(patient)) = (visit, reference(v, "subject")) else {
                return Ok(Vec::new());
            };
            let Some(surgery) = surgery_date(txn, ctx, &patient).await? else {
                return Ok(Vec::new());
            };
            let (Some(day0), Some(day)) = (day_number(&surgery), day_number(&effective(v))) else {
                return Ok(Vec::new());
            };
            let Some(deviation) = rules.visit_window(visit, day - day0) else {
                return Ok(Vec::new());
            };
            Ok(vec![json!({
                "resourceType": "DetectedIssue",
                "status": "final",
                "code": {"coding": [{"system": MEASURES, "code": "protocol-deviation", "display": "Protocol deviation"}]},
                "severity": "moderate",
                "patient": {"reference": patient},
                "identifiedDateTime": trialbridge_fhir::instant::format(time::OffsetDateTime::now_utc()),
                "implicated": [{"reference": format!("Observation/{id}")}],
                "detail": deviation.diagnostics,
            })])
        }
        _ => Ok(Vec::new()),
    }
}
