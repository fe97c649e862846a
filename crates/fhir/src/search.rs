//! FHIR search requests: the query string parsed into criteria that storage can run.

use crate::index::{normalize_string, relative_reference};
use crate::search_param::{lookup, SearchParamKind};
use crate::{IssueType, OutcomeIssue};

/// How one criterion compares index values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The logical id equals.
    Id(String),
    /// Token: code equals; `system` is `Some(None)` for `|code` (no system), `Some(Some(s))` for
    /// `s|code`, `None` when any system matches. An empty code with a system is `sys|`.
    Token {
        /// The system constraint.
        system: Option<Option<String>>,
        /// The code, or `None` for `sys|`.
        code: Option<String>,
    },
    /// String: the normalised value starts with this.
    StartsWith(String),
    /// Reference: `Type/id`, or any type when only an id was given.
    Reference {
        /// The target type if known.
        target_type: Option<String>,
        /// The target id.
        id: String,
    },
    /// Uri equals.
    Uri(String),
}

/// One search parameter occurrence: the values are ORed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criterion {
    /// The parameter code.
    pub param: String,
    /// Alternatives (comma-separated in the URL).
    pub any_of: Vec<Match>,
}

/// A parsed search: criteria are ANDed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchRequest {
    /// The criteria.
    pub criteria: Vec<Criterion>,
    /// `_count`, if given.
    pub count: Option<usize>,
    /// Parameters that are not supported and were ignored (lenient handling).
    pub ignored: Vec<String>,
}

/// Parameters that control the result rather than select resources; the store handles these
/// itself.
pub const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_format",
    "_pretty",
    "_cursor",
    "_summary",
    "_elements",
    "_total",
    "_sort",
];

/// Parses `params` (already percent-decoded) for a search over `resource_type`.
///
/// With `strict`, an unknown or unsupported parameter is an error naming it; otherwise it is
/// listed in [`SearchRequest::ignored`]. Malformed values are always errors.
pub fn parse(
    resource_type: &str,
    params: &[(String, String)],
    strict: bool,
) -> Result<SearchRequest, OutcomeIssue> {
    let mut req = SearchRequest::default();
    for (name, value) in params {
        if name == "_count" {
            let n: usize = value.parse().map_err(|_| {
                OutcomeIssue::error(
                    IssueType::Value,
                    format!("_count must be a non-negative integer, got '{value}'"),
                )
                .at("_count")
            })?;
            req.count = Some(n);
            continue;
        }
        if RESULT_PARAMETERS.contains(&name.as_str()) {
            continue;
        }
        let (code, modifier) = match name.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (name.as_str(), None),
        };
        let def = lookup(resource_type, code);
        let supported = def.filter(|d| crate::index::is_searchable(d) && modifier.is_none());
        let Some(def) = supported else {
            if strict {
                let why = if def.is_some() {
                    "is not supported yet"
                } else {
                    "is not a search parameter of this type"
                };
                return Err(OutcomeIssue::error(
                    IssueType::NotSupported,
                    format!("search parameter '{name}' {why} for {resource_type}"),
                )
                .at(name.clone()));
            }
            req.ignored.push(name.clone());
            continue;
        };
        let mut any_of = Vec::new();
        for raw in split_unescaped(value, ',') {
            if raw.is_empty() {
                return Err(OutcomeIssue::error(
                    IssueType::Value,
                    format!("search parameter '{name}' has an empty value"),
                )
                .at(name.clone()));
            }
            let m = if def.code == "_id" {
                Match::Id(unescape(&raw))
            } else {
                match def.kind {
                    SearchParamKind::Token => match split_unescaped(&raw, '|').as_slice() {
                        [code] => Match::Token {
                            system: None,
                            code: Some(unescape(code)),
                        },
                        [sys, code] => Match::Token {
                            system: Some((!sys.is_empty()).then(|| unescape(sys))),
                            code: (!code.is_empty()).then(|| unescape(code)),
                        },
                        _ => {
                            return Err(OutcomeIssue::error(
                                IssueType::Value,
                                format!("token value '{raw}' of '{name}' has more than one '|'"),
                            )
                            .at(name.clone()))
                        }
                    },
                    SearchParamKind::String => Match::StartsWith(normalize_string(&unescape(&raw))),
                    SearchParamKind::Reference => {
                        let r = relative_reference(&unescape(&raw));
                        match r.split_once('/') {
                            Some((t, id)) if crate::is_resource_type(t) => Match::Reference {
                                target_type: Some(t.to_string()),
                                id: id.to_string(),
                            },
                            _ => Match::Reference {
                                target_type: None,
                                id: r,
                            },
                        }
                    }
                    SearchParamKind::Uri => Match::Uri(unescape(&raw)),
                    _ => unreachable_kind(name)?,
                }
            };
            any_of.push(m);
        }
        req.criteria.push(Criterion {
            param: def.code.to_string(),
            any_of,
        });
    }
    Ok(req)
}

fn unreachable_kind(name: &str) -> Result<Match, OutcomeIssue> {
    Err(OutcomeIssue::error(
        IssueType::NotSupported,
        format!("search parameter '{name}' is not supported yet"),
    )
    .at(name.to_string()))
}

/// Splits on `sep` where it is not escaped with a backslash (FHIR search escaping).
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn tokens() {
        let r = parse(
            "Patient",
            &p(&[("identifier", "http:/example.org/fhir/ids|234234")]),
            true,
        )
        .unwrap();
        assert_eq!(
            r.criteria[0].any_of[0],
            Match::Token {
                system: Some(Some("http:/example.org/fhir/ids".into())),
                code: Some("234234".into())
            }
        );
        let r = parse("Patient", &p(&[("identifier", "|x,y\\,z")]), true).unwrap();
        assert_eq!(r.criteria[0].any_of.len(), 2);
        assert_eq!(
            r.criteria[0].any_of[1],
            Match::Token {
                system: None,
                code: Some("y,z".into())
            }
        );
    }

    #[test]
    fn strict_and_lenient() {
        let e = parse("Patient", &p(&[("foo", "bar")]), true).unwrap_err();
        assert_eq!(e.expression, vec!["foo".to_string()]);
        let r = parse("Patient", &p(&[("foo", "bar"), ("name", "Pét")]), false).unwrap();
        assert_eq!(r.ignored, vec!["foo".to_string()]);
        assert_eq!(r.criteria[0].any_of[0], Match::StartsWith("pet".into()));
        assert!(parse("Patient", &p(&[("_count", "x")]), false).is_err());
    }
}
