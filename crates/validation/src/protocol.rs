//! Layer 6: the MesemCart protocol rules, with their numbers read from the study definition
//! ([`StudyRules::from_study`]: the eligibility Group, the qualifying-grade and
//! excluded-condition ValueSets, the status-transition ConceptMap, the schedule PlanDefinition).
//! The functions here are pure: the store looks up the facts (the stored status, the latest
//! BMI, the surgery date) and passes them in.

use serde_json::Value;
use trialbridge_fhir::{IssueSeverity, IssueType, OutcomeIssue};

use crate::profiles::codings;
use crate::trial::STUDY_BASE;

/// ResearchSubject statuses that mean enrolled (R4 `research-subject-status`).
pub const ENROLLED: &[&str] = &[
    "pending-on-study",
    "on-study",
    "on-study-intervention",
    "on-study-observation",
    "follow-up",
];

/// URL of the extension by which a trial Observation names its visit (a PlanDefinition).
pub const VISIT_EXTENSION: &str =
    "https://fhir.mesemcart-sponsor.example/StructureDefinition/mesemcart-visit";

/// A visit's acceptable window, in days relative to surgery (day 0).
#[derive(Debug, Clone, PartialEq)]
pub struct VisitWindow {
    /// Canonical URL of the visit's PlanDefinition.
    pub visit: String,
    /// Its title (`V3 Week 2`).
    pub title: String,
    /// First acceptable day (negative: before surgery).
    pub first_day: i64,
    /// Last acceptable day.
    pub last_day: i64,
}

/// The protocol's rules as the study definition states them.
#[derive(Debug, Clone, Default)]
pub struct StudyRules {
    /// Allowed ResearchSubject status changes (from, to).
    pub transitions: Vec<(String, String)>,
    /// Age at consent, inclusive bounds in years.
    pub age_years: Option<(f64, f64)>,
    /// BMI must be below this (kg/m2).
    pub bmi_below: Option<f64>,
    /// (system, code) of qualifying defect grades.
    pub qualifying_grades: Vec<(String, String)>,
    /// (system, code prefix) of excluding conditions (`is-a M17` → every M17 code).
    pub excluded_conditions: Vec<(String, String)>,
    /// Visit windows from the schedule.
    pub visits: Vec<VisitWindow>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

impl StudyRules {
    /// Reads the rules from the study's resources; a rule whose definition is missing is off.
    pub fn from_study(resources: &[Value]) -> Self {
        let by_id = |t: &str, id: &str| {
            resources
                .iter()
                .find(|r| str_at(r, &["resourceType"]) == Some(t) && str_at(r, &["id"]) == Some(id))
        };
        let mut rules = StudyRules::default();
        if let Some(cm) = by_id("ConceptMap", "mesemcart-subject-status-transitions") {
            for g in cm
                .get("group")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for e in g
                    .get("element")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(from) = e.get("code").and_then(Value::as_str) else {
                        continue;
                    };
                    for t in e
                        .get("target")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(to) = t.get("code").and_then(Value::as_str) {
                            rules.transitions.push((from.to_string(), to.to_string()));
                        }
                    }
                }
            }
        }
        if let Some(group) = by_id("Group", "mesemcart-eligibility") {
            for c in group
                .get("characteristic")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let code: Vec<(&str, &str)> = codings(c.get("code")).collect();
                let is = |s: &str, k: &str| code.iter().any(|(cs, cc)| *cs == s && *cc == k);
                if is(
                    &format!("{STUDY_BASE}/CodeSystem/mesemcart-measures"),
                    "age-at-consent",
                ) {
                    let low = c.pointer("/valueRange/low/value").and_then(Value::as_f64);
                    let high = c.pointer("/valueRange/high/value").and_then(Value::as_f64);
                    if let (Some(l), Some(h)) = (low, high) {
                        rules.age_years = Some((l, h));
                    }
                } else if is("http://loinc.org", "39156-5")
                    && str_at(c, &["valueQuantity", "comparator"]) == Some("<")
                {
                    rules.bmi_below = c.pointer("/valueQuantity/value").and_then(Value::as_f64);
                }
            }
        }
        let include = |vs: &Value, out: &mut Vec<(String, String)>, filters: bool| {
            for inc in vs
                .pointer("/compose/include")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(system) = inc.get("system").and_then(Value::as_str) else {
                    continue;
                };
                for c in inc
                    .get("concept")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(code) = c.get("code").and_then(Value::as_str) {
                        out.push((system.to_string(), code.to_string()));
                    }
                }
                if filters {
                    for f in inc
                        .get("filter")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if str_at(f, &["op"]) == Some("is-a") {
                            if let Some(v) = str_at(f, &["value"]) {
                                out.push((system.to_string(), v.to_string()));
                            }
                        }
                    }
                }
            }
        };
        if let Some(vs) = by_id("ValueSet", "mesemcart-qualifying-defect-grades") {
            include(vs, &mut rules.qualifying_grades, false);
        }
        if let Some(vs) = by_id("ValueSet", "mesemcart-excluded-conditions") {
            include(vs, &mut rules.excluded_conditions, true);
        }
        if let Some(pd) = by_id("PlanDefinition", "mesemcart-protocol") {
            for a in pd
                .get("action")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(visit) = a.get("definitionCanonical").and_then(Value::as_str) else {
                    continue;
                };
                let title = str_at(a, &["title"]).unwrap_or(visit).to_string();
                for rel in a
                    .get("relatedAction")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let range = rel
                        .get("extension")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|e| {
                            str_at(e, &["url"])
                                .is_some_and(|u| u.ends_with("/AcceptableOffsetRangeSoa"))
                        })
                        .and_then(|e| e.get("valueRange"));
                    let (Some(low), Some(high)) = (
                        range
                            .and_then(|r| r.pointer("/low/value"))
                            .and_then(Value::as_f64),
                        range
                            .and_then(|r| r.pointer("/high/value"))
                            .and_then(Value::as_f64),
                    ) else {
                        continue;
                    };
                    let (first, last) = match str_at(rel, &["relationship"]) {
                        Some("before-start" | "before" | "before-end") => (-high, -low),
                        _ => (low, high),
                    };
                    rules.visits.push(VisitWindow {
                        visit: visit.to_string(),
                        title: title.clone(),
                        first_day: first as i64,
                        last_day: last as i64,
                    });
                }
            }
        }
        rules
    }

    /// Whether a status change is allowed; `None` when it is, the issue when not.
    pub fn transition(&self, from: &str, to: &str) -> Option<OutcomeIssue> {
        if from == to || self.transitions.iter().any(|(f, t)| f == from && t == to) {
            return None;
        }
        let allowed: Vec<&str> = self
            .transitions
            .iter()
            .filter(|(f, _)| f == from)
            .map(|(_, t)| t.as_str())
            .collect();
        let hint = if to == "withdrawn" && ENROLLED.contains(&from) {
            " (a subject who leaves after enrolment is off-study, with the off-study-reason extension; withdrawn is only for withdrawal before enrolment)"
        } else {
            ""
        };
        Some(
            OutcomeIssue::error(
                IssueType::BusinessRule,
                format!(
                    "the status cannot change from {from} to {to}{hint}; allowed from {from}: {}",
                    if allowed.is_empty() {
                        "nothing (final)".to_string()
                    } else {
                        allowed.join(", ")
                    }
                ),
            )
            .at("ResearchSubject.status"),
        )
    }

    /// The eligibility criteria against what is known of a subject at enrolment.
    pub fn eligibility(&self, facts: &EligibilityFacts) -> Vec<OutcomeIssue> {
        let mut out = Vec::new();
        let fail = |msg: String| {
            OutcomeIssue::error(IssueType::BusinessRule, msg).at("ResearchSubject.status")
        };
        if let Some((low, high)) = self.age_years {
            match facts.age_years {
                None => out.push(fail(format!(
                    "eligibility: the age at consent is unknown (record an age-at-consent Observation or the Patient's birthDate); it must be {low}-{high} years"
                ))),
                Some((min, max)) if min < low || max > high => out.push(fail(format!(
                    "eligibility: the age at consent ({}) is outside {low}-{high} years",
                    if (max - min) < 0.01 { format!("{min}") } else { format!("{min:.0}-{max:.0}") }
                ))),
                _ => {}
            }
        }
        if let Some(limit) = self.bmi_below {
            match facts.bmi {
                None => out.push(fail(format!(
                    "eligibility: no BMI is recorded (a BMI Observation, or body weight and height); it must be below {limit} kg/m2"
                ))),
                Some(b) if b >= limit => out.push(fail(format!("eligibility: the BMI {b:.1} kg/m2 is not below {limit}"))),
                _ => {}
            }
        }
        if !self.qualifying_grades.is_empty()
            && !facts.grades.iter().any(|(s, c)| {
                self.qualifying_grades
                    .iter()
                    .any(|(qs, qc)| qs == s && qc == c)
            })
        {
            let wanted: Vec<&str> = self
                .qualifying_grades
                .iter()
                .map(|(_, c)| c.as_str())
                .collect();
            out.push(fail(format!(
                "eligibility: no qualifying defect grade is recorded (one of {}; found: {})",
                wanted.join(", "),
                if facts.grades.is_empty() {
                    "none".to_string()
                } else {
                    facts
                        .grades
                        .iter()
                        .map(|(_, c)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )));
        }
        for (s, c) in &facts.conditions {
            if self
                .excluded_conditions
                .iter()
                .any(|(es, prefix)| es == s && c.starts_with(prefix.as_str()))
            {
                out.push(fail(format!("eligibility: the condition {c} ({s}) excludes the subject (knee osteoarthritis)")));
            }
        }
        out
    }

    /// A warning (protocol deviation) when an Observation of `visit` on `day` (relative to
    /// surgery) lies outside the visit's window.
    pub fn visit_window(&self, visit: &str, day: i64) -> Option<OutcomeIssue> {
        let w = self.visits.iter().find(|w| w.visit == visit)?;
        if (w.first_day..=w.last_day).contains(&day) {
            return None;
        }
        Some(OutcomeIssue {
            severity: IssueSeverity::Warning,
            code: IssueType::BusinessRule,
            diagnostics: format!(
                "protocol deviation: {} on day {day} relative to surgery, outside its window (days {} to {})",
                w.title, w.first_day, w.last_day
            ),
            expression: vec!["Observation.effective".into()],
        })
    }
}

/// What the store knows of a subject when it is enrolled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EligibilityFacts {
    /// Age at consent as a range in years (exact from an Observation, a range from a birth year).
    pub age_years: Option<(f64, f64)>,
    /// The latest BMI (recorded or from the latest weight and height).
    pub bmi: Option<f64>,
    /// (system, code) of every recorded defect grade.
    pub grades: Vec<(String, String)>,
    /// (system, code) of the subject's active conditions.
    pub conditions: Vec<(String, String)>,
}

/// Age at `on` (YYYY-MM-DD) of someone born `birth` (YYYY, YYYY-MM or YYYY-MM-DD), as the
/// range the precision of the birth date allows.
pub fn age_range(birth: &str, on: &str) -> Option<(f64, f64)> {
    let parse = |s: &str| -> Option<(i32, u32, u32)> {
        let mut it = s.get(..10.min(s.len()))?.split('-');
        let y = it.next()?.parse().ok()?;
        let m = it.next().map(str::parse).transpose().ok()?;
        let d = it.next().map(str::parse).transpose().ok()?;
        Some((y, m.unwrap_or(0), d.unwrap_or(0)))
    };
    let (by, bm, bd) = parse(birth)?;
    let (oy, om, od) = parse(on)?;
    let exact = |m: u32, d: u32| -> f64 {
        let had_birthday = (om, od) >= (m, d);
        f64::from(oy - by - if had_birthday { 0 } else { 1 })
    };
    Some(match (bm, bd) {
        (0, _) => (exact(12, 31), exact(1, 1)),
        (m, 0) => (exact(m, 31), exact(m, 1)),
        (m, d) => (exact(m, d), exact(m, d)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_from_partial_birth_dates() {
        assert_eq!(age_range("1990-06-15", "2026-06-14"), Some((35.0, 35.0)));
        assert_eq!(age_range("1990-06-15", "2026-06-15"), Some((36.0, 36.0)));
        assert_eq!(age_range("1990", "2026-06-15"), Some((35.0, 36.0)));
    }
}
