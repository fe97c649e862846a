//! SQL-on-FHIR v2 ViewDefinitions, the subset the study's views use: one `select` with
//! `column`s, each a FHIRPath of member navigation, `first()`, `ofType(T)` (choice types and
//! contained resources), `extension('url')`, `getResourceKey()` and `getReferenceKey()`.
//! Anything else is refused when the view is read, not skipped silently.

use std::borrow::Cow;

use serde_json::Value;

/// A flat table defined by a ViewDefinition.
#[derive(Debug, Clone)]
pub struct View {
    /// The view's name; the table is `view_<name>`.
    pub name: String,
    /// The resource type it reads.
    pub resource: String,
    /// Its columns.
    pub columns: Vec<Column>,
}

/// One column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// The path, split into steps.
    steps: Vec<Step>,
    /// The PostgreSQL type of its values.
    pub sql_type: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Member(String),
    First,
    OfType(String),
    Extension(String),
    ResourceKey,
    ReferenceKey,
}

/// A value with the type its choice element named (`valueQuantity` → `Quantity`); keys are
/// computed, everything else is borrowed from the resource.
type Item<'a> = (Cow<'a, Value>, Option<String>);

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits a path at the dots outside parentheses and quotes.
fn steps(path: &str) -> Result<Vec<Step>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0, false, 0);
    for (i, c) in path.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '.' if !quoted && depth == 0 => {
                parts.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&path[start..]);
    parts
        .into_iter()
        .map(|p| {
            let p = p.trim();
            Ok(match p {
                "first()" => Step::First,
                "getResourceKey()" => Step::ResourceKey,
                _ if p.starts_with("getReferenceKey(") && p.ends_with(')') => Step::ReferenceKey,
                _ if p.starts_with("ofType(") && p.ends_with(')') => {
                    Step::OfType(p[7..p.len() - 1].trim().to_string())
                }
                _ if p.starts_with("extension('") && p.ends_with("')") => {
                    Step::Extension(p[11..p.len() - 2].to_string())
                }
                _ if is_name(p) => Step::Member(p.to_string()),
                _ => return Err(format!("'{p}' in '{path}' is not supported")),
            })
        })
        .collect()
}

fn sql_type(fhir_type: Option<&str>) -> &'static str {
    match fhir_type {
        Some("integer" | "positiveInt" | "unsignedInt" | "integer64") => "bigint",
        Some("decimal") => "numeric",
        Some("boolean") => "boolean",
        _ => "text",
    }
}

impl View {
    /// Reads a ViewDefinition.
    pub fn parse(def: &Value) -> Result<View, String> {
        let name = def["name"]
            .as_str()
            .filter(|n| is_name(n))
            .ok_or("a view needs a name of letters, digits and _")?;
        let resource = def["resource"]
            .as_str()
            .ok_or("a view needs its resource type")?;
        let selects = def["select"].as_array().ok_or("a view needs a select")?;
        if selects.len() != 1 || def.get("where").is_some() {
            return Err(format!(
                "view {name}: only one select and no where are supported"
            ));
        }
        let select = &selects[0];
        if select.get("forEach").is_some()
            || select.get("forEachOrNull").is_some()
            || select.get("select").is_some()
            || select.get("unionAll").is_some()
        {
            return Err(format!(
                "view {name}: forEach, nested select and unionAll are not supported"
            ));
        }
        let columns = select["column"]
            .as_array()
            .ok_or(format!("view {name}: no columns"))?
            .iter()
            .map(|c| {
                let cname = c["name"]
                    .as_str()
                    .filter(|n| is_name(n))
                    .ok_or(format!("view {name}: a column needs a name"))?;
                let path = c["path"]
                    .as_str()
                    .ok_or(format!("view {name}: column {cname} has no path"))?;
                Ok(Column {
                    name: cname.to_string(),
                    steps: steps(path).map_err(|e| format!("view {name}, column {cname}: {e}"))?,
                    sql_type: sql_type(c["type"].as_str()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(View {
            name: name.to_string(),
            resource: resource.to_string(),
            columns,
        })
    }

    /// The row of one resource (a column with several values holds them as a JSON array).
    pub fn row(&self, resource: &Value) -> Vec<Option<String>> {
        self.columns
            .iter()
            .map(|c| {
                let items = eval(&c.steps, resource);
                match items.as_slice() {
                    [] => None,
                    [(v, _)] => Some(scalar(v)),
                    many => Some(
                        Value::Array(many.iter().map(|(v, _)| v.clone().into_owned()).collect())
                            .to_string(),
                    ),
                }
            })
            .collect()
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn eval<'a>(steps: &[Step], resource: &'a Value) -> Vec<Item<'a>> {
    let mut items: Vec<Item<'a>> = vec![(Cow::Borrowed(resource), None)];
    for step in steps {
        let mut next: Vec<Item<'a>> = Vec::new();
        match step {
            Step::First => next.extend(items.first().cloned()),
            Step::ResourceKey | Step::ReferenceKey => {
                next.extend(key(step, &items).map(|k| (Cow::Owned(Value::String(k)), None)))
            }
            Step::OfType(t) => next.extend(items.into_iter().filter(|(v, tag)| {
                tag.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(t))
                    || v.get("resourceType").and_then(Value::as_str) == Some(t)
            })),
            Step::Extension(url) => {
                for (v, _) in &items {
                    let Cow::Borrowed(v) = v else { continue };
                    for e in v
                        .get("extension")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if e.get("url").and_then(Value::as_str) == Some(url) {
                            next.push((Cow::Borrowed(e), None));
                        }
                    }
                }
            }
            Step::Member(m) => {
                for (v, _) in &items {
                    let Cow::Borrowed(Value::Object(o)) = v else {
                        continue;
                    };
                    if let Some(x) = o.get(m) {
                        push_flat(&mut next, x, None);
                        continue;
                    }
                    // A choice element: `value` finds `valueQuantity` and remembers the type.
                    for (k, x) in o {
                        if let Some(t) = k.strip_prefix(m.as_str()) {
                            if t.starts_with(|c: char| c.is_ascii_uppercase()) {
                                push_flat(&mut next, x, Some(t.to_string()));
                            }
                        }
                    }
                }
            }
        }
        items = next;
    }
    items
}

fn push_flat<'a>(out: &mut Vec<Item<'a>>, v: &'a Value, tag: Option<String>) {
    match v {
        Value::Array(a) => out.extend(a.iter().map(|x| (Cow::Borrowed(x), tag.clone()))),
        other => out.push((Cow::Borrowed(other), tag)),
    }
}

fn key(step: &Step, items: &[Item<'_>]) -> Option<String> {
    let (v, _) = items.first()?;
    match step {
        Step::ResourceKey => Some(format!(
            "{}/{}",
            v.get("resourceType")?.as_str()?,
            v.get("id")?.as_str()?
        )),
        _ => v.get("reference")?.as_str().map(String::from),
    }
}

/// The study's views.
pub fn study_views() -> Result<Vec<View>, String> {
    trialbridge_study::VIEWS
        .iter()
        .map(|(file, text)| {
            let v: Value = serde_json::from_str(text).map_err(|e| format!("{file}: {e}"))?;
            View::parse(&v).map_err(|e| format!("{file}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_study_views_read_and_give_rows() {
        let views = study_views().unwrap();
        assert_eq!(views.len(), 5);
        let obs = views.iter().find(|v| v.name == "observation").unwrap();
        let o = json!({"resourceType": "Observation", "id": "bmi", "status": "final",
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy", "valueReference": {"reference": "ResearchStudy/mesemcart-site-01"}}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}, {"system": "x", "code": "y"}]},
            "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-03-02",
            "valueQuantity": {"value": 27.4, "code": "kg/m2"}});
        let row = obs.row(&o);
        let col = |n: &str| row[obs.columns.iter().position(|c| c.name == n).unwrap()].clone();
        assert_eq!(col("id").as_deref(), Some("Observation/bmi"));
        assert_eq!(col("code").as_deref(), Some("39156-5"));
        assert_eq!(col("value").as_deref(), Some("27.4"));
        assert_eq!(col("unit").as_deref(), Some("kg/m2"));
        assert_eq!(col("time").as_deref(), Some("2026-03-02"));
        assert_eq!(col("value_code"), None);
        assert_eq!(
            col("site_study").as_deref(),
            Some("ResearchStudy/mesemcart-site-01")
        );
    }

    #[test]
    fn unsupported_fhirpath_is_refused() {
        let v = json!({"name": "x", "resource": "Patient", "select": [{"column": [{"name": "a", "path": "name.where(use = 'official').family"}]}]});
        assert!(View::parse(&v).unwrap_err().contains("not supported"));
    }
}
