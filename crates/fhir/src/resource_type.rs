//! The R4 resource types.

use crate::generated::resource_types::RESOURCE_TYPES;

/// True when `name` is a concrete FHIR R4 resource type (case-sensitive).
pub fn is_resource_type(name: &str) -> bool {
    RESOURCE_TYPES.binary_search(&name).is_ok()
}

/// The static name of a resource type, or `None` if `name` is not one.
pub fn canonical(name: &str) -> Option<&'static str> {
    RESOURCE_TYPES
        .binary_search(&name)
        .ok()
        .map(|i| RESOURCE_TYPES[i])
}

/// All concrete R4 resource types, sorted.
pub fn all() -> &'static [&'static str] {
    RESOURCE_TYPES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_trial_types_and_rejects_others() {
        for t in [
            "ResearchStudy",
            "ResearchSubject",
            "Procedure",
            "Observation",
            "Bundle",
        ] {
            assert!(is_resource_type(t), "{t}");
        }
        for t in [
            "observation",
            "Foo",
            "",
            "Resource",
            "DomainResource",
            "SubscriptionStatus",
        ] {
            assert!(!is_resource_type(t), "{t}");
        }
        assert_eq!(all().len(), 146);
    }
}
