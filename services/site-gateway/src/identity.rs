//! Which subject a message is about: the identity rule of the key list, as a pure function of
//! the message's patient identifiers and the key-list rows that share their numbers.
//!
//! An enrolment names an MRN **and** its assigning authority; a patient identifier matches it
//! only when both agree. Hospitals reuse the same numbers across authorities (an MRN of one
//! clinic equals a social-security or insurance number of another), so a number alone never
//! identifies anybody:
//! - one subject matched on (MRN, authority): that subject;
//! - two subjects matched (the identifiers of one PID point at different subjects): an
//!   identity problem;
//! - nothing matched, but an identifier without an authority carries a number the key list
//!   holds: an identity problem (it may be that subject, or somebody else with the same
//!   number);
//! - nothing matched otherwise: the patient is not enrolled.
//!
//! An identity problem sends the message to the dead-letter queue with the reason; a person
//! decides. It is never a guess.

/// The key-list entry of an enrolled subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Enrolment {
    /// Pseudonymous subject id (`MC-01-001`).
    pub subject_id: String,
    /// Id of the pseudonymous Patient in the trial store (`mc-01-001`).
    pub patient_id: String,
    /// The site study (`mesemcart-site-01`).
    pub site_study: String,
}

/// A patient identifier of a message (HL7 CX): the number and the assigning authority's
/// names (CX-4.1 namespace id and CX-4.2 universal id, whichever are given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientId {
    /// CX-1.
    pub value: String,
    /// CX-4.1 and CX-4.2, the non-empty ones.
    pub authorities: Vec<String>,
}

impl PatientId {
    /// An identifier with one authority name (empty for none).
    pub fn new(authority: &str, value: &str) -> Self {
        Self {
            value: value.to_string(),
            authorities: if authority.is_empty() {
                Vec::new()
            } else {
                vec![authority.to_string()]
            },
        }
    }

    /// Whether the identifier names an assigning authority.
    pub fn qualified(&self) -> bool {
        !self.authorities.is_empty()
    }

    /// The authority an enrolment made from this identifier records (the namespace id, else
    /// the universal id).
    pub fn authority(&self) -> Option<&str> {
        self.authorities.first().map(String::as_str)
    }
}

/// One row of the key list.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    /// Assigning authority.
    pub authority: String,
    /// MRN.
    pub mrn: String,
    /// The subject it belongs to.
    pub subject: Enrolment,
}

impl KeyRow {
    fn matches(&self, id: &PatientId) -> bool {
        self.mrn == id.value && id.authorities.contains(&self.authority)
    }
}

/// Who a set of identifiers is.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// An enrolled subject.
    Subject(Enrolment),
    /// Nobody of the trial.
    NotEnrolled,
    /// Cannot be decided without a person: the reason.
    Problem(String),
}

/// Applies the identity rule to the identifiers of one patient and the key-list rows whose
/// MRN equals one of their numbers.
pub fn identify(ids: &[PatientId], rows: &[KeyRow]) -> Identity {
    let mut matched: Vec<&KeyRow> = Vec::new();
    for id in ids.iter().filter(|i| i.qualified()) {
        for row in rows.iter().filter(|r| r.matches(id)) {
            if !matched
                .iter()
                .any(|m| m.subject.subject_id == row.subject.subject_id)
            {
                matched.push(row);
            }
        }
    }
    match matched.as_slice() {
        [one] => Identity::Subject(one.subject.clone()),
        [] => {
            let bare = ids
                .iter()
                .find(|i| !i.qualified() && rows.iter().any(|r| r.mrn == i.value));
            match bare {
                Some(id) => Identity::Problem(format!(
                    "the patient identifier '{}' has no assigning authority, and the key list holds that number; enrolments match on MRN and authority only",
                    id.value
                )),
                None => Identity::NotEnrolled,
            }
        }
        several => Identity::Problem(format!(
            "the patient's identifiers belong to different subjects ({}); the key list or the sending system needs a correction",
            several
                .iter()
                .map(|r| format!("{}^{} -> {}", r.mrn, r.authority, r.subject.subject_id))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The subject a merge joins, with the (authority, MRN) pairs to point at it.
pub type MergeTarget = (Enrolment, Vec<(String, String)>);

/// What a merge (A40/A47: `prior` identifiers now belong to the patient of `survivor`) does
/// to the key list: the enrolled subject of either side, with every qualified identifier of
/// both to be pointed at it; `None` when neither side is enrolled.
pub fn merge(
    survivor: &[PatientId],
    prior: &[PatientId],
    rows: &[KeyRow],
) -> Result<Option<MergeTarget>, String> {
    let who = match (identify(survivor, rows), identify(prior, rows)) {
        (Identity::Problem(p), _) => return Err(format!("the surviving patient: {p}")),
        (_, Identity::Problem(p)) => return Err(format!("the merged (MRG) patient: {p}")),
        (Identity::Subject(a), Identity::Subject(b)) if a.subject_id != b.subject_id => {
            return Err(format!(
                "the merge joins two enrolled subjects ({} and {}); a person must decide which one the patient is",
                a.subject_id, b.subject_id
            ))
        }
        (Identity::Subject(s), _) | (_, Identity::Subject(s)) => s,
        (Identity::NotEnrolled, Identity::NotEnrolled) => return Ok(None),
    };
    let keys = survivor
        .iter()
        .chain(prior)
        .filter_map(|id| id.authority().map(|a| (a.to_string(), id.value.clone())))
        .collect();
    Ok(Some((who, keys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(n: u32) -> Enrolment {
        Enrolment {
            subject_id: format!("MC-01-{n:03}"),
            patient_id: format!("mc-01-{n:03}"),
            site_study: "mesemcart-site-01".into(),
        }
    }

    fn row(authority: &str, mrn: &str, n: u32) -> KeyRow {
        KeyRow {
            authority: authority.into(),
            mrn: mrn.into(),
            subject: subject(n),
        }
    }

    #[test]
    fn a_number_matches_only_with_its_authority() {
        let rows = [row("KH-NORD", "123456789", 1)];
        // The same number as a social-security number of another authority: nobody.
        assert_eq!(
            identify(&[PatientId::new("USSSA", "123456789")], &rows),
            Identity::NotEnrolled
        );
        assert_eq!(
            identify(&[PatientId::new("KH-NORD", "123456789")], &rows),
            Identity::Subject(subject(1))
        );
        // The universal id (CX-4.2) names the authority as well.
        let by_oid = PatientId {
            value: "123456789".into(),
            authorities: vec!["".into(), "1.2.276.0.1".into()]
                .into_iter()
                .filter(|a: &String| !a.is_empty())
                .collect(),
        };
        assert_eq!(
            identify(&[by_oid], &[row("1.2.276.0.1", "123456789", 2)]),
            Identity::Subject(subject(2))
        );
    }

    #[test]
    fn no_authority_on_a_known_number_is_a_problem_not_a_guess() {
        let rows = [row("KH-NORD", "4711", 1), row("KH-SUED", "4711", 2)];
        assert!(matches!(
            identify(&[PatientId::new("", "4711")], &rows),
            Identity::Problem(_)
        ));
        // An unknown bare number is simply somebody else.
        assert_eq!(
            identify(&[PatientId::new("", "9999")], &rows),
            Identity::NotEnrolled
        );
        // With its authority the same number is unambiguous.
        assert_eq!(
            identify(&[PatientId::new("KH-SUED", "4711")], &rows),
            Identity::Subject(subject(2))
        );
    }

    #[test]
    fn identifiers_of_two_subjects_are_a_problem() {
        let rows = [row("KH", "1", 1), row("AOK", "A1", 2)];
        let ids = [PatientId::new("KH", "1"), PatientId::new("AOK", "A1")];
        assert!(matches!(identify(&ids, &rows), Identity::Problem(_)));
        // Two identifiers of the same subject are fine.
        let rows = [row("KH", "1", 1), row("AOK", "A1", 1)];
        assert_eq!(identify(&ids, &rows), Identity::Subject(subject(1)));
    }

    #[test]
    fn merges_join_one_subject_or_refuse() {
        let rows = [row("KH", "1", 1), row("KH", "2", 2)];
        let (who, keys) = merge(
            &[PatientId::new("KH", "1")],
            &[PatientId::new("KH", "9")],
            &rows,
        )
        .unwrap()
        .unwrap();
        assert_eq!(who, subject(1));
        assert_eq!(keys, [("KH".into(), "1".into()), ("KH".into(), "9".into())]);
        assert!(merge(
            &[PatientId::new("KH", "1")],
            &[PatientId::new("KH", "2")],
            &rows
        )
        .is_err());
        assert_eq!(
            merge(
                &[PatientId::new("KH", "7")],
                &[PatientId::new("KH", "8")],
                &rows
            ),
            Ok(None)
        );
    }
}
