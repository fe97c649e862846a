//! FHIR search requests: the query string parsed into criteria that storage can run.

use crate::index::{normalize_string, relative_reference};
use crate::search_param::{lookup, SearchParamKind, SearchParameterDef};
use crate::{IssueType, OutcomeIssue};

/// A date, number or quantity comparison prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// `eq` (the default).
    Eq,
    /// `ne`.
    Ne,
    /// `gt`.
    Gt,
    /// `lt`.
    Lt,
    /// `ge`.
    Ge,
    /// `le`.
    Le,
    /// `sa`: starts after.
    Sa,
    /// `eb`: ends before.
    Eb,
    /// `ap`: approximately.
    Ap,
}

/// What kind of values a [`Match::Range`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    /// Dates: the index holds ranges of time; the search value is a range too.
    Date,
    /// Numbers and quantities: the index holds values; the search value has an implicit
    /// precision range (`5.4` is `[5.35, 5.45)`).
    Number,
}

/// How one criterion compares index values.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// The logical id equals.
    Id(String),
    /// Token: code equals; `system` is `Some(None)` for `|code` (no system), `Some(Some(s))` for
    /// `s|code`, `None` when any system matches. A missing code with a system is `sys|`.
    Token {
        /// The system constraint.
        system: Option<Option<String>>,
        /// The code, or `None` for `sys|`.
        code: Option<String>,
    },
    /// String: the normalised value starts with this.
    StartsWith(String),
    /// String `:exact`: the text as written equals this.
    Exact(String),
    /// String `:contains`: the normalised value contains this.
    Contains(String),
    /// Reference: `Type/id`, or any type when only an id was given.
    Reference {
        /// The target type if known.
        target_type: Option<String>,
        /// The target id.
        id: String,
    },
    /// Uri equals.
    Uri(String),
    /// Date, number, quantity, or a composite of a token with one of them.
    Range {
        /// What is compared.
        kind: RangeKind,
        /// The comparison.
        prefix: Prefix,
        /// The search value (numbers) or the start of its range (dates).
        value: f64,
        /// Lower end of the search value's range.
        low: f64,
        /// Upper end (exclusive) of the search value's range.
        high: f64,
        /// Quantity unit system, if given.
        unit_system: Option<String>,
        /// Quantity unit code, if given.
        unit_code: Option<String>,
        /// For a composite: the token part (system if given, code).
        token: Option<(Option<String>, String)>,
    },
    /// `:missing=true|false`.
    Missing(bool),
    /// `:not`: resources without a matching value (including those with no value).
    Not(Box<Match>),
    /// A chain (`subject:Patient.name=peter`): the reference points at a `target_type`
    /// resource that matches `criterion`.
    Chain {
        /// The type the reference must point at.
        target_type: String,
        /// What that resource must match (itself possibly a chain).
        criterion: Box<Criterion>,
    },
    /// Any of several criteria, e.g. membership of a compartment (`subject` or `performer`
    /// is this Patient).
    AnyOf(Vec<Criterion>),
    /// A reverse chain (`_has:Observation:patient:code=1234-5`): some `source_type` resource
    /// that matches `criterion` points at this one through `reference_param`.
    Has {
        /// The type of the pointing resource.
        source_type: String,
        /// Its reference parameter.
        reference_param: String,
        /// What the pointing resource must match.
        criterion: Box<Criterion>,
    },
}

/// One search parameter occurrence: the values are ORed.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    /// The parameter code.
    pub param: String,
    /// The parameter's type.
    pub kind: SearchParamKind,
    /// Alternatives (comma-separated in the URL).
    pub any_of: Vec<Match>,
}

/// A parsed search: criteria are ANDed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchRequest {
    /// The criteria.
    pub criteria: Vec<Criterion>,
    /// `_count`, if given.
    pub count: Option<usize>,
    /// `_sort` keys, most significant first; the id always breaks ties.
    pub sort: Vec<SortKey>,
    /// `_include` and `_revinclude` requests.
    pub includes: Vec<Include>,
    /// Parameters that are not supported and were ignored (lenient handling).
    pub ignored: Vec<String>,
}

/// One `_include` (`Observation:subject[:Patient]`) or `_revinclude`, possibly `:iterate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The type that holds the reference.
    pub source: String,
    /// Its reference parameter.
    pub param: String,
    /// Only references to this type, if given.
    pub target: Option<String>,
    /// `_revinclude`: add the resources that point at the results (instead of those they point at).
    pub reverse: bool,
    /// `:iterate`: apply to included resources too, until nothing new is found.
    pub iterate: bool,
}

/// One `_sort` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The parameter (`_id`, `_lastUpdated` or a search parameter of the type).
    pub param: String,
    /// Its type.
    pub kind: SearchParamKind,
    /// `-param`.
    pub descending: bool,
}

/// One value of a sort key in a paging cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    /// The resource has no value for the key (sorted last).
    Null,
    /// A number (dates as microseconds).
    Number(f64),
    /// Text.
    Text(String),
}

/// Where a page ends: the last resource's sort-key values and id. The next page starts after
/// it, so pages stay stable while writes continue (no offsets).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// Sort-key values, one per [`SearchRequest::sort`] key.
    pub keys: Vec<SortValue>,
    /// The last resource's id.
    pub id: String,
}

impl Cursor {
    /// The cursor as text for a `_cursor` link parameter (a JSON array, id last).
    pub fn encode(&self) -> String {
        let mut items: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|k| match k {
                SortValue::Null => serde_json::Value::Null,
                SortValue::Number(n) => serde_json::Number::from_f64(*n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number),
                SortValue::Text(t) => serde_json::Value::from(t.as_str()),
            })
            .collect();
        items.push(serde_json::Value::from(self.id.as_str()));
        serde_json::Value::Array(items).to_string()
    }

    /// Reads a `_cursor` for a search with `keys` sort keys.
    pub fn decode(text: &str, keys: usize) -> Option<Self> {
        let items: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
        if items.len() != keys + 1 {
            return None;
        }
        let id = items.last()?.as_str()?.to_string();
        let keys = items[..keys]
            .iter()
            .map(|v| match v {
                serde_json::Value::Null => Some(SortValue::Null),
                serde_json::Value::Number(n) => n.to_string().parse().ok().map(SortValue::Number),
                serde_json::Value::String(s) => Some(SortValue::Text(s.clone())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { keys, id })
    }
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

fn bad(name: &str, what: String) -> OutcomeIssue {
    OutcomeIssue::error(
        IssueType::Value,
        format!("search parameter '{name}': {what}"),
    )
    .at(name.to_string())
}

/// The criterion "is in the compartment of `compartment_type/id`" for `resource_type`, or
/// `None` if that type is not a member (only the Patient compartment is defined here).
pub fn compartment_criterion(
    compartment_type: &str,
    id: &str,
    resource_type: &str,
) -> Option<Criterion> {
    if compartment_type != "Patient" {
        return None;
    }
    let members = crate::generated::compartments::PATIENT_COMPARTMENT;
    let params = members
        .binary_search_by(|(t, _)| (*t).cmp(resource_type))
        .ok()
        .map(|i| members[i].1)?;
    let any_of = params
        .iter()
        .filter(|p| lookup(resource_type, p).is_some_and(|d| d.kind == SearchParamKind::Reference))
        .map(|p| Criterion {
            param: p.to_string(),
            kind: SearchParamKind::Reference,
            any_of: vec![Match::Reference {
                target_type: Some(compartment_type.to_string()),
                id: id.to_string(),
            }],
        })
        .collect::<Vec<_>>();
    (!any_of.is_empty()).then(|| Criterion {
        param: "_compartment".into(),
        kind: SearchParamKind::Special,
        any_of: vec![Match::AnyOf(any_of)],
    })
}

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
                bad(
                    name,
                    format!("_count must be a non-negative integer, got '{value}'"),
                )
            })?;
            req.count = Some(n);
            continue;
        }
        if name == "_sort" {
            for key in value.split(',').filter(|k| !k.is_empty()) {
                let (descending, code) = match key.strip_prefix('-') {
                    Some(c) => (true, c),
                    None => (false, key),
                };
                let kind = match code {
                    "_id" => Some(SearchParamKind::Token),
                    "_lastUpdated" => Some(SearchParamKind::Date),
                    _ => lookup(resource_type, code)
                        .filter(|d| {
                            crate::index::is_searchable(d)
                                && !matches!(
                                    d.kind,
                                    SearchParamKind::Composite | SearchParamKind::Special
                                )
                        })
                        .map(|d| d.kind),
                };
                match kind {
                    Some(kind) => req.sort.push(SortKey {
                        param: code.to_string(),
                        kind,
                        descending,
                    }),
                    None if strict => {
                        return Err(OutcomeIssue::error(
                            IssueType::NotSupported,
                            format!("cannot sort {resource_type} by '{code}'"),
                        )
                        .at("_sort"))
                    }
                    None => req.ignored.push(format!("_sort={key}")),
                }
            }
            continue;
        }
        if let Some(kind) = name
            .strip_prefix("_include")
            .map(|k| (false, k))
            .or_else(|| name.strip_prefix("_revinclude").map(|k| (true, k)))
        {
            let (reverse, modifier) = kind;
            let iterate = match modifier {
                "" => false,
                ":iterate" | ":recurse" => true,
                _ => return Err(bad(name, "the only modifier is :iterate".into())),
            };
            match parse_include(value, reverse, iterate) {
                Some(i) => req.includes.push(i),
                None if strict => return Err(OutcomeIssue::error(IssueType::NotSupported, format!("{name}={value} is not a [type]:[reference parameter][:target type] this server knows")).at(name.clone())),
                None => req.ignored.push(name.clone()),
            }
            continue;
        }
        if RESULT_PARAMETERS.contains(&name.as_str()) {
            continue;
        }
        match parse_param(resource_type, name, value, strict)? {
            Some(c) => req.criteria.push(c),
            None => req.ignored.push(name.clone()),
        }
    }
    Ok(req)
}

fn parse_include(value: &str, reverse: bool, iterate: bool) -> Option<Include> {
    let mut parts = value.split(':');
    let source = parts.next()?;
    let param = parts.next()?;
    let target = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let def = lookup(source, param)
        .filter(|d| d.kind == SearchParamKind::Reference && crate::is_resource_type(source))?;
    if let Some(t) = target {
        if !def.targets.contains(&t) {
            return None;
        }
    }
    Some(Include {
        source: source.to_string(),
        param: param.to_string(),
        target: target.map(str::to_string),
        reverse,
        iterate,
    })
}

/// One `name=value` pair as a criterion; `None` when it is unsupported and `strict` is off.
fn parse_param(
    resource_type: &str,
    name: &str,
    value: &str,
    strict: bool,
) -> Result<Option<Criterion>, OutcomeIssue> {
    let unsupported = |why: &str| -> Result<Option<Criterion>, OutcomeIssue> {
        if strict {
            Err(OutcomeIssue::error(
                IssueType::NotSupported,
                format!("search parameter '{name}' {why} for {resource_type}"),
            )
            .at(name.to_string()))
        } else {
            Ok(None)
        }
    };
    if let Some(rest) = name.strip_prefix("_has:") {
        // _has:Source:reference:inner
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(reference), Some(inner)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                name,
                "expected _has:[type]:[reference parameter]:[parameter]".into(),
            ));
        };
        let pointing = lookup(source, reference)
            .filter(|d| d.kind == SearchParamKind::Reference && crate::is_resource_type(source));
        if pointing.is_none() {
            return unsupported("names no reference parameter");
        }
        let Some(criterion) = parse_param(source, inner, value, strict)? else {
            return Ok(None);
        };
        return Ok(Some(Criterion {
            param: "_has".into(),
            kind: SearchParamKind::Special,
            any_of: vec![Match::Has {
                source_type: source.to_string(),
                reference_param: reference.to_string(),
                criterion: Box::new(criterion),
            }],
        }));
    }
    if let Some((head, rest)) = name.split_once('.') {
        // A chain: head is `reference[:Type]`.
        let (code, target) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let Some(def) =
            lookup(resource_type, code).filter(|d| d.kind == SearchParamKind::Reference)
        else {
            return unsupported("cannot be chained");
        };
        let targets: Vec<&str> = match target {
            Some(t) if def.targets.contains(&t) => vec![t],
            Some(_) => {
                return Err(bad(
                    name,
                    format!("'{code}' cannot point at {}", target.unwrap_or_default()),
                ))
            }
            None => def.targets.to_vec(),
        };
        let mut any_of = Vec::new();
        for t in targets {
            // Only the target types that have the chained parameter take part.
            if let Ok(Some(c)) = parse_param(t, rest, value, true) {
                any_of.push(Match::Chain {
                    target_type: t.to_string(),
                    criterion: Box::new(c),
                });
            } else if let Err(e) = parse_param(t, rest, value, false) {
                return Err(OutcomeIssue {
                    expression: vec![name.to_string()],
                    ..e
                });
            }
        }
        if any_of.is_empty() {
            return unsupported("chains to a parameter no target type has");
        }
        return Ok(Some(Criterion {
            param: def.code.to_string(),
            kind: SearchParamKind::Reference,
            any_of,
        }));
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let def = lookup(resource_type, code);
    let Some(def) =
        def.filter(|d| crate::index::is_searchable(d) && modifier_supported(d, modifier))
    else {
        return unsupported(if def.is_some() {
            "is not supported yet"
        } else {
            "is not a search parameter of this type"
        });
    };
    let mut any_of = Vec::new();
    if modifier == Some("missing") {
        match value {
            "true" => any_of.push(Match::Missing(true)),
            "false" => any_of.push(Match::Missing(false)),
            _ => {
                return Err(bad(
                    name,
                    format!(":missing takes true or false, got '{value}'"),
                ))
            }
        }
    } else {
        let values = split_unescaped(value, ',');
        if values.len() > MAX_OR_VALUES {
            return Err(bad(
                name,
                format!(
                    "{} values joined by commas; a parameter takes at most {MAX_OR_VALUES} (split the search)",
                    values.len()
                ),
            ));
        }
        for raw in values {
            if raw.is_empty() {
                return Err(bad(name, "empty value".into()));
            }
            if !valid_escapes(&raw) {
                return Err(bad(
                    name,
                    format!("'{raw}': a backslash escapes only , $ | and \\ (write \\\\ for a backslash)"),
                ));
            }
            let m = parse_value(def, modifier, &raw, name)?;
            if matches!(&m, Match::StartsWith(p) | Match::Contains(p) if p.is_empty()) {
                return Err(bad(
                    name,
                    format!(
                        "'{raw}' searches for nothing (an empty string would match every resource)"
                    ),
                ));
            }
            any_of.push(if modifier == Some("not") {
                Match::Not(Box::new(m))
            } else {
                m
            });
        }
    }
    // These modifiers search rows of their own (see `index::modified`).
    let param = match modifier {
        Some(m @ ("text" | "of-type" | "identifier")) => format!("{}:{m}", def.code),
        _ => def.code.to_string(),
    };
    let kind = if modifier == Some("identifier") {
        SearchParamKind::Token
    } else {
        def.kind
    };
    Ok(Some(Criterion {
        param,
        kind,
        any_of,
    }))
}

fn modifier_supported(def: &SearchParameterDef, modifier: Option<&str>) -> bool {
    match modifier {
        None | Some("missing") => true,
        Some("not") => def.kind == SearchParamKind::Token && def.code != "_id",
        Some("exact" | "contains") => def.kind == SearchParamKind::String,
        Some("text" | "of-type") => def.kind == SearchParamKind::Token && def.code != "_id",
        Some("identifier") => def.kind == SearchParamKind::Reference,
        Some(t) => def.kind == SearchParamKind::Reference && crate::is_resource_type(t),
    }
}

fn parse_value(
    def: &SearchParameterDef,
    modifier: Option<&str>,
    raw: &str,
    name: &str,
) -> Result<Match, OutcomeIssue> {
    if def.code == "_id" {
        return Ok(Match::Id(unescape(raw)));
    }
    Ok(match def.kind {
        SearchParamKind::Token if modifier == Some("text") => {
            Match::StartsWith(normalize_string(&unescape(raw)))
        }
        SearchParamKind::Token if modifier == Some("of-type") => {
            let parts = split_unescaped(raw, '|');
            if parts.len() != 3 || parts.iter().any(String::is_empty) {
                return Err(bad(
                    name,
                    format!("'{raw}' is not [type system]|[type code]|[value]"),
                ));
            }
            Match::Token {
                system: None,
                code: Some(
                    parts
                        .iter()
                        .map(|p| unescape(p))
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
            }
        }
        SearchParamKind::Reference if modifier == Some("identifier") => parse_token(raw, name)?,
        SearchParamKind::Token => parse_token(raw, name)?,
        SearchParamKind::String => match modifier {
            Some("exact") => Match::Exact(unescape(raw)),
            Some("contains") => Match::Contains(normalize_string(&unescape(raw))),
            _ => Match::StartsWith(normalize_string(&unescape(raw))),
        },
        SearchParamKind::Reference => {
            let r = relative_reference(&unescape(raw));
            match (r.split_once('/'), modifier) {
                (Some((t, id)), _) if crate::is_resource_type(t) => {
                    if modifier.is_some_and(|m| m != t) {
                        return Err(bad(
                            name,
                            format!(
                                "'{raw}' does not point at a {}",
                                modifier.unwrap_or_default()
                            ),
                        ));
                    }
                    Match::Reference {
                        target_type: Some(t.to_string()),
                        id: id.to_string(),
                    }
                }
                (_, Some(t)) => Match::Reference {
                    target_type: Some(t.to_string()),
                    id: r,
                },
                _ => Match::Reference {
                    target_type: None,
                    id: r,
                },
            }
        }
        SearchParamKind::Uri => Match::Uri(unescape(raw)),
        SearchParamKind::Date => date_match(raw, name)?,
        SearchParamKind::Number => {
            let (prefix, rest) = split_prefix(raw);
            let (value, low, high) =
                number_range(rest).ok_or_else(|| bad(name, format!("'{raw}' is not a number")))?;
            Match::Range {
                kind: RangeKind::Number,
                prefix,
                value,
                low,
                high,
                unit_system: None,
                unit_code: None,
                token: None,
            }
        }
        SearchParamKind::Quantity => parse_quantity(raw, name)?,
        SearchParamKind::Composite => {
            let (left, right) = raw.split_once('$').ok_or_else(|| {
                bad(
                    name,
                    format!(
                        "'{raw}' is not a composite value such as http://loinc.org|8480-6$gt100"
                    ),
                )
            })?;
            let token = match parse_token(left, name)? {
                Match::Token {
                    system,
                    code: Some(code),
                } => (system.flatten(), code),
                _ => return Err(bad(name, format!("the token part of '{raw}' needs a code"))),
            };
            let value_kind = def.components.get(1).map(|c| c.kind);
            let mut m = if value_kind == Some(SearchParamKind::Date) {
                date_match(right, name)?
            } else {
                parse_quantity(right, name)?
            };
            if let Match::Range { token: t, .. } = &mut m {
                *t = Some(token);
            }
            m
        }
        SearchParamKind::Special => {
            return Err(OutcomeIssue::error(
                IssueType::NotSupported,
                format!("search parameter '{name}' is not supported yet"),
            )
            .at(name.to_string()))
        }
    })
}

/// `[prefix]date`, e.g. `ge2024-03`.
fn date_match(raw: &str, name: &str) -> Result<Match, OutcomeIssue> {
    let (prefix, rest) = split_prefix(raw);
    let r = crate::date::parse_range(rest).ok_or_else(|| {
        bad(
            name,
            format!("'{raw}' is not a date such as 2024, 2024-03 or 2024-03-05T10:00:00Z"),
        )
    })?;
    Ok(Match::Range {
        kind: RangeKind::Date,
        prefix,
        value: r.low as f64,
        low: r.low as f64,
        high: r.high as f64,
        unit_system: None,
        unit_code: None,
        token: None,
    })
}

fn parse_token(raw: &str, name: &str) -> Result<Match, OutcomeIssue> {
    Ok(match split_unescaped(raw, '|').as_slice() {
        [code] => Match::Token {
            system: None,
            code: Some(unescape(code)),
        },
        [sys, code] => Match::Token {
            system: Some((!sys.is_empty()).then(|| unescape(sys))),
            code: (!code.is_empty()).then(|| unescape(code)),
        },
        _ => {
            return Err(bad(
                name,
                format!("token value '{raw}' has more than one '|'"),
            ))
        }
    })
}

fn parse_quantity(raw: &str, name: &str) -> Result<Match, OutcomeIssue> {
    let parts = split_unescaped(raw, '|');
    let (number, system, code) = match parts.as_slice() {
        [n] => (n.as_str(), None, None),
        [n, s, c] => (
            n.as_str(),
            (!s.is_empty()).then(|| unescape(s)),
            (!c.is_empty()).then(|| unescape(c)),
        ),
        _ => {
            return Err(bad(
                name,
                format!("'{raw}' is not a quantity such as 5.4|http://unitsofmeasure.org|mg"),
            ))
        }
    };
    let (prefix, rest) = split_prefix(number);
    let (value, low, high) = number_range(rest)
        .ok_or_else(|| bad(name, format!("'{raw}' does not start with a number")))?;
    Ok(Match::Range {
        kind: RangeKind::Number,
        prefix,
        value,
        low,
        high,
        unit_system: system,
        unit_code: code,
        token: None,
    })
}

fn split_prefix(raw: &str) -> (Prefix, &str) {
    let p = match raw.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, raw),
    };
    (p, &raw[2..])
}

/// A number with its implicit precision range: `5.4` → (5.4, 5.35, 5.45), `100` → (100, 99.5,
/// 100.5), `1.0e2` → (100, 95, 105).
pub fn number_range(text: &str) -> Option<(f64, f64, f64)> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !ok {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    // Far inside the double range, so that precision ranges and `ap` stay finite numbers.
    if !value.is_finite() || value.abs() > 1e300 {
        return None;
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32) - exponent;
    let half = 0.5 * 10f64.powi(-decimals);
    if !half.is_finite() || half > 1e300 {
        return None;
    }
    Some((value, value - half, value + half))
}

/// How many comma-separated values one parameter takes at most.
pub const MAX_OR_VALUES: usize = 100;

/// Whether every backslash of a value is one of FHIR's escapes: `\,` `\$` `\|` `\\`.
fn valid_escapes(raw: &str) -> bool {
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some(',' | '$' | '|' | '\\')) {
            return false;
        }
    }
    true
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
    fn escapes_as_r4_says_and_never_a_wildcard() {
        let ok = parse("Patient", &p(&[("name", "a\\,b")]), true).unwrap();
        assert_eq!(
            ok.criteria[0].any_of.len(),
            1,
            "an escaped comma is no separator"
        );
        for bad_value in ["\\", "a\\", "a\\x", "\\,"] {
            let r = parse("Patient", &p(&[("name", bad_value)]), true);
            if bad_value == "\\," {
                // An escaped comma alone is a one-character name: fine.
                assert!(r.is_ok(), "{bad_value}");
            } else {
                assert!(r.is_err(), "{bad_value}");
            }
        }
        let many = vec!["x"; MAX_OR_VALUES + 1].join(",");
        let e = parse("Patient", &p(&[("_id", &many)]), true).unwrap_err();
        assert!(e.diagnostics.contains("at most 100"), "{}", e.diagnostics);
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
        let r = parse("Observation", &p(&[("status:not", "final")]), true).unwrap();
        assert!(matches!(&r.criteria[0].any_of[0], Match::Not(_)));
    }

    #[test]
    fn strict_and_lenient() {
        let e = parse("Patient", &p(&[("foo", "bar")]), true).unwrap_err();
        assert_eq!(e.expression, vec!["foo".to_string()]);
        let r = parse("Patient", &p(&[("foo", "bar"), ("name", "Pét")]), false).unwrap();
        assert_eq!(r.ignored, vec!["foo".to_string()]);
        assert_eq!(r.criteria[0].any_of[0], Match::StartsWith("pet".into()));
        assert!(parse("Patient", &p(&[("_count", "x")]), false).is_err());
        assert!(parse("Patient", &p(&[("name:fuzzy", "x")]), true).is_err());
    }

    #[test]
    fn malformed_values_always_fail_naming_the_parameter() {
        for (k, v) in [
            ("date", "2024-13-45"),
            ("value-quantity", "abc"),
            ("code-value-quantity", "x"),
            ("date", "gt"),
            ("subject:missing", "maybe"),
        ] {
            let e = parse("Observation", &p(&[(k, v)]), false).unwrap_err();
            assert_eq!(e.expression, vec![k.to_string()], "{k}={v}");
        }
    }

    #[test]
    fn chains_and_reverse_chains() {
        let r = parse(
            "Observation",
            &p(&[("subject:Patient.name", "peter")]),
            true,
        )
        .unwrap();
        assert!(
            matches!(&r.criteria[0].any_of[..], [Match::Chain { target_type, .. }] if target_type == "Patient")
        );
        let r = parse(
            "ResearchSubject",
            &p(&[("study.partof", "ResearchStudy/mesemcart")]),
            true,
        )
        .unwrap();
        assert_eq!(r.criteria[0].param, "study");
        let r = parse(
            "Patient",
            &p(&[("_has:Observation:patient:code", "1234-5")]),
            true,
        )
        .unwrap();
        assert!(
            matches!(&r.criteria[0].any_of[..], [Match::Has { source_type, reference_param, .. }] if source_type == "Observation" && reference_param == "patient")
        );
        assert!(parse("Patient", &p(&[("_has:Observation:nope:code", "x")]), true).is_err());
        let e = parse(
            "Observation",
            &p(&[("subject:Patient.birthdate", "2024-13-45")]),
            true,
        )
        .unwrap_err();
        assert_eq!(e.expression, vec!["subject:Patient.birthdate".to_string()]);
    }

    #[test]
    fn includes() {
        let r = parse(
            "Observation",
            &p(&[
                ("_include", "Observation:subject:Patient"),
                ("_revinclude:iterate", "Provenance:target"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(r.includes.len(), 2);
        assert!(r.includes[1].reverse && r.includes[1].iterate);
        assert!(parse("Observation", &p(&[("_include", "Observation:nope")]), true).is_err());
        assert!(parse(
            "Observation",
            &p(&[("_include", "Observation:subject:Medication")]),
            true
        )
        .is_err());
        assert_eq!(
            parse(
                "Observation",
                &p(&[("_include", "Observation:nope")]),
                false
            )
            .unwrap()
            .ignored,
            vec!["_include".to_string()]
        );
    }

    #[test]
    fn sort_keys_and_cursors() {
        let r = parse("Observation", &p(&[("_sort", "-date,_id,status")]), true).unwrap();
        let keys: Vec<(&str, bool)> = r
            .sort
            .iter()
            .map(|k| (k.param.as_str(), k.descending))
            .collect();
        assert_eq!(keys, [("date", true), ("_id", false), ("status", false)]);
        assert!(parse("Observation", &p(&[("_sort", "nonsense")]), true).is_err());
        let c = Cursor {
            keys: vec![
                SortValue::Number(1.5e15),
                SortValue::Null,
                SortValue::Text("a,b".into()),
            ],
            id: "x".into(),
        };
        assert_eq!(Cursor::decode(&c.encode(), 3), Some(c.clone()));
        assert_eq!(Cursor::decode(&c.encode(), 2), None);
    }

    #[test]
    fn ranges_and_prefixes() {
        let r = parse(
            "Observation",
            &p(&[("value-quantity", "gt5.4|http://unitsofmeasure.org|mg")]),
            true,
        )
        .unwrap();
        match &r.criteria[0].any_of[0] {
            Match::Range {
                prefix,
                value,
                low,
                high,
                unit_code,
                ..
            } => {
                assert_eq!(*prefix, Prefix::Gt);
                assert_eq!(*value, 5.4);
                assert!((low - 5.35).abs() < 1e-9 && (high - 5.45).abs() < 1e-9);
                assert_eq!(unit_code.as_deref(), Some("mg"));
            }
            other => panic!("{other:?}"),
        }
        let r = parse(
            "Observation",
            &p(&[("code-value-quantity", "http://loinc.org|8480-6$ge100")]),
            true,
        )
        .unwrap();
        assert!(
            matches!(&r.criteria[0].any_of[0], Match::Range { token: Some((Some(s), c)), prefix: Prefix::Ge, .. } if s == "http://loinc.org" && c == "8480-6")
        );
        assert_eq!(number_range("100"), Some((100.0, 99.5, 100.5)));
        assert_eq!(number_range("1.0e2"), Some((100.0, 95.0, 105.0)));
        assert!(number_range("1e400").is_none());
        assert!(number_range("0e400").is_none());
        assert!(number_range("1e308").is_none());
        assert!(number_range("1e300").is_some());
    }
}
