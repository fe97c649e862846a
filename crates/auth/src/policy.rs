//! What each trial role may do, before scopes narrow it further. Deny by default.

use trialbridge_storage::Role;

use crate::Interaction;

/// Types that define the study rather than record a subject's data: only `admin` (and the
/// system) writes them; every role reads them.
const DEFINITIONAL: &[&str] = &[
    "ActivityDefinition",
    "CapabilityStatement",
    "CodeSystem",
    "ConceptMap",
    "Group",
    "Library",
    "Location",
    "Measure",
    "NamingSystem",
    "OperationDefinition",
    "Organization",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "ResearchStudy",
    "SearchParameter",
    "StructureDefinition",
    "ValueSet",
];

/// Clinical types whose update or delete needs a reason for change.
pub const REASON_REQUIRED_TYPES: &[&str] = &[
    "AdverseEvent",
    "Condition",
    "Observation",
    "Procedure",
    "ResearchSubject",
];

/// Whether `t` belongs to the study definition.
pub fn is_definitional_type(t: &str) -> bool {
    DEFINITIONAL.binary_search(&t).is_ok()
}

/// Whether `t` records subjects' data (everything that is neither definitional nor the audit
/// trail).
pub fn is_clinical_type(t: &str) -> bool {
    !is_definitional_type(t) && t != "AuditEvent"
}

/// The role's own permission, before scopes.
pub fn role_permits(role: Role, t: &str, i: Interaction) -> bool {
    let reading = matches!(i, Interaction::Read | Interaction::Search);
    if t == "AuditEvent" {
        // The audit trail is written by trialbridge only; the roles that answer for it read it.
        return reading && matches!(role, Role::System | Role::Admin | Role::Monitor);
    }
    match role {
        Role::System => true,
        Role::Site => reading || is_clinical_type(t),
        Role::Monitor | Role::Warehouse => reading,
        Role::Admin => is_definitional_type(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitional_list_is_sorted_for_binary_search() {
        assert!(DEFINITIONAL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn roles() {
        use Interaction::*;
        assert!(role_permits(Role::Site, "Observation", Update));
        assert!(!role_permits(Role::Site, "ResearchStudy", Update));
        assert!(role_permits(Role::Site, "ResearchStudy", Read));
        assert!(!role_permits(Role::Monitor, "Observation", Create));
        assert!(!role_permits(Role::Warehouse, "Observation", Delete));
        assert!(role_permits(Role::Admin, "PlanDefinition", Update));
        assert!(!role_permits(Role::Admin, "Observation", Read));
        assert!(!role_permits(Role::System, "AuditEvent", Create));
        assert!(!role_permits(Role::Site, "AuditEvent", Read));
    }
}
