//! SearchParameter definitions of R4 (generated) and their lookup.

use crate::generated::search_parameters::SEARCH_PARAMETERS;

/// `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SearchParamKind {
    /// A number.
    Number,
    /// A date, dateTime, instant or Period.
    Date,
    /// A string (starts-with, case- and accent-insensitive by default).
    String,
    /// A code, Coding, CodeableConcept, Identifier, ContactPoint or boolean.
    Token,
    /// A reference to another resource.
    Reference,
    /// A composite of other parameters.
    Composite,
    /// A Quantity.
    Quantity,
    /// A URI.
    Uri,
    /// Special parameters with their own logic.
    Special,
}

/// One R4 search parameter as it applies to one base type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParameterDef {
    /// The resource type (or `Resource` for the common ones).
    pub base: &'static str,
    /// The name used in the query string.
    pub code: &'static str,
    /// The parameter type.
    pub kind: SearchParamKind,
    /// The FHIRPath expression restricted to `base`.
    pub expression: &'static str,
    /// For a composite: its parts, evaluated relative to each node of `expression`.
    pub components: &'static [ComponentDef],
    /// For a reference: the resource types it may point at.
    pub targets: &'static [&'static str],
}

/// One part of a composite search parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDef {
    /// The part's type.
    pub kind: SearchParamKind,
    /// The part's FHIRPath, relative to the composite's node.
    pub expression: &'static str,
}

/// Finds the definition of `code` for `resource_type`, falling back to the parameters that
/// every resource has (`_id`, `_lastUpdated`, `_tag`, `_profile`, `_security`, `_source`).
pub fn lookup(resource_type: &str, code: &str) -> Option<&'static SearchParameterDef> {
    find(resource_type, code)
        .or_else(|| find("DomainResource", code))
        .or_else(|| find("Resource", code))
}

fn find(base: &str, code: &str) -> Option<&'static SearchParameterDef> {
    SEARCH_PARAMETERS
        .binary_search_by(|d| (d.base, d.code).cmp(&(base, code)))
        .ok()
        .map(|i| &SEARCH_PARAMETERS[i])
}

/// Every parameter that applies to `resource_type` (its own and the common ones).
pub fn for_type(resource_type: &str) -> impl Iterator<Item = &'static SearchParameterDef> + '_ {
    SEARCH_PARAMETERS.iter().filter(move |d| {
        d.base == resource_type || d.base == "Resource" || d.base == "DomainResource"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let d = lookup("Patient", "name").unwrap();
        assert_eq!(d.kind, SearchParamKind::String);
        assert_eq!(d.expression, "Patient.name");
        assert_eq!(lookup("Observation", "_id").unwrap().base, "Resource");
        assert_eq!(
            lookup("ResearchSubject", "study").unwrap().kind,
            SearchParamKind::Reference
        );
        assert!(lookup("Patient", "nonsense").is_none());
        assert!(for_type("Observation").any(|d| d.code == "code-value-quantity"));
    }
}
