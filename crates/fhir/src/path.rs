//! A small FHIRPath subset: the navigation that R4 search-parameter expressions use.
//!
//! Supported: `Type.a.b` paths (arrays flatten), choice elements (`Observation.value` finds
//! `valueQuantity`), `(X as T)` and `X.as(T)`, `.where(resolve() is T)` on references, and `|`
//! unions. Anything else yields `None`, so the caller knows the parameter cannot be indexed
//! instead of silently indexing nothing. A full FHIRPath engine (for invariants) is the
//! validation crate's job.

use serde_json::Value;

/// The root of a relative expression: any node.
const RELATIVE: &str = "$this";

/// A compiled path expression.
#[derive(Debug, Clone, PartialEq)]
pub struct PathExpr {
    branches: Vec<Branch>,
}

#[derive(Debug, Clone, PartialEq)]
struct Branch {
    /// The resource type the path starts at (`Resource` matches any).
    root: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Child element; for a choice element, any `name[Type]` key.
    Child(String),
    /// Child element restricted to one choice type: key `name` + `Type`.
    ChoiceAs(String, String),
    /// Keep references that point at this resource type.
    ResolveIs(String),
    /// `where(field = 'value')`: keep nodes whose string `field` equals `value`.
    WhereEquals(String, String),
}

impl PathExpr {
    /// Compiles an expression, or `None` if it is outside the supported subset.
    pub fn compile(expr: &str) -> Option<Self> {
        let branches = split_union(expr)
            .into_iter()
            .map(|b| compile_branch(b.trim()))
            .collect::<Option<Vec<_>>>()?;
        if branches.is_empty() {
            return None;
        }
        Some(Self { branches })
    }

    /// Evaluates the expression against a resource; values are returned in document order.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<&'a Value> {
        let rtype = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut out = Vec::new();
        for b in &self.branches {
            if b.root != rtype
                && b.root != "Resource"
                && b.root != "DomainResource"
                && b.root != RELATIVE
            {
                continue;
            }
            let mut cur = vec![resource];
            for step in &b.steps {
                let mut next = Vec::new();
                for v in cur {
                    apply(step, v, &mut next);
                }
                cur = next;
            }
            out.extend(cur);
        }
        out
    }
}

fn push_flat<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => out.extend(items.iter()),
        other => out.push(other),
    }
}

fn apply<'a>(step: &Step, v: &'a Value, out: &mut Vec<&'a Value>) {
    let Some(obj) = v.as_object() else { return };
    match step {
        Step::Child(name) => {
            if let Some(child) = obj.get(name) {
                push_flat(child, out);
                return;
            }
            // A choice element `value[x]` is written `valueQuantity`, `valueString`, ...
            for (k, child) in obj {
                if let Some(rest) = k.strip_prefix(name.as_str()) {
                    if rest.starts_with(|c: char| c.is_ascii_uppercase()) {
                        push_flat(child, out);
                    }
                }
            }
        }
        Step::ChoiceAs(name, ty) => {
            let mut key = String::with_capacity(name.len() + ty.len());
            key.push_str(name);
            let mut chars = ty.chars();
            if let Some(first) = chars.next() {
                key.extend(first.to_uppercase());
                key.push_str(chars.as_str());
            }
            if let Some(child) = obj.get(&key) {
                push_flat(child, out);
            }
        }
        Step::WhereEquals(field, value) => {
            if obj.get(field).and_then(Value::as_str) == Some(value.as_str()) {
                out.push(v);
            }
        }
        Step::ResolveIs(target) => {
            if let Some(r) = obj.get("reference").and_then(Value::as_str) {
                if reference_type(r) == Some(target.as_str()) {
                    out.push(v);
                }
            }
        }
    }
}

/// The resource type a reference string points at (`Patient/1`, `http://x/fhir/Patient/1`).
pub fn reference_type(reference: &str) -> Option<&str> {
    let parts: Vec<&str> = reference.split('/').collect();
    // [.../]Type/id[/_history/v]
    let n = parts.len();
    let idx = if n >= 4 && parts[n - 2] == "_history" {
        n.checked_sub(4)?
    } else {
        n.checked_sub(2)?
    };
    let t = parts[idx];
    crate::is_resource_type(t).then_some(t)
}

fn split_union(expr: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in expr.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '|' if depth == 0 => {
                parts.push(&expr[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&expr[start..]);
    parts
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn compile_branch(b: &str) -> Option<Branch> {
    // `(Path as Type).rest`: the cast, then more steps.
    if b.starts_with('(') && !b.ends_with(')') {
        let mut depth = 0i32;
        let close = b.char_indices().find_map(|(i, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(i)
        })?;
        let mut br = compile_branch(&b[..=close])?;
        let rest = b[close + 1..].strip_prefix('.')?;
        let tail = compile_branch(&format!("X.{rest}"))?;
        br.steps.extend(tail.steps);
        return Some(br);
    }
    // `(Path as Type)` form.
    if let Some(inner) = b.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        let (path, ty) = inner.split_once(" as ")?;
        let mut br = compile_branch(path.trim())?;
        let ty = ty.trim();
        if !is_name(ty) {
            return None;
        }
        match br.steps.pop()? {
            Step::Child(name) => br.steps.push(Step::ChoiceAs(name, ty.to_string())),
            _ => return None,
        }
        return Some(br);
    }
    let mut segments = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in b.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '.' if depth == 0 => {
                segments.push(&b[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segments.push(&b[start..]);
    let first = *segments.first()?;
    if !is_name(first) {
        return None;
    }
    // `code`, `value.as(Quantity)`: a composite's part, relative to the node it is applied to.
    let relative = first.starts_with(|c: char| c.is_ascii_lowercase());
    let (root, rest) = if relative {
        (RELATIVE.to_string(), &segments[..])
    } else {
        (first.to_string(), &segments[1..])
    };
    let mut steps = Vec::new();
    for seg in rest {
        if is_name(seg) {
            steps.push(Step::Child(seg.to_string()));
        } else if let Some(ty) = seg.strip_prefix("as(").and_then(|s| s.strip_suffix(')')) {
            let Some(Step::Child(name)) = steps.pop() else {
                return None;
            };
            if !is_name(ty) {
                return None;
            }
            steps.push(Step::ChoiceAs(name, ty.to_string()));
        } else if let Some((field, value)) = seg
            .strip_prefix("where(")
            .and_then(|s| s.strip_suffix("')"))
            .and_then(|s| s.split_once("='").or_else(|| s.split_once(" = '")))
            .filter(|(f, v)| is_name(f.trim()) && !v.contains('\''))
        {
            steps.push(Step::WhereEquals(
                field.trim().to_string(),
                value.to_string(),
            ));
        } else if let Some(ty) = seg
            .strip_prefix("where(resolve() is ")
            .and_then(|s| s.strip_suffix(')'))
        {
            if !is_name(ty) {
                return None;
            }
            steps.push(Step::ResolveIs(ty.to_string()));
        } else {
            return None;
        }
    }
    Some(Branch { root, steps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn navigation_choice_and_unions() {
        let obs = json!({"resourceType":"Observation","code":{"coding":[{"code":"a"},{"code":"b"}]},
            "valueQuantity":{"value":1},"subject":{"reference":"Patient/p1"}});
        let p = PathExpr::compile("Observation.code.coding").unwrap();
        assert_eq!(p.evaluate(&obs).len(), 2);
        let p = PathExpr::compile("(Observation.value as Quantity)").unwrap();
        assert_eq!(p.evaluate(&obs), vec![&json!({"value":1})]);
        let p = PathExpr::compile("Observation.value.as(String)").unwrap();
        assert!(p.evaluate(&obs).is_empty());
        let p = PathExpr::compile("Observation.value").unwrap();
        assert_eq!(p.evaluate(&obs).len(), 1);
        let p = PathExpr::compile("Observation.subject.where(resolve() is Patient)").unwrap();
        assert_eq!(p.evaluate(&obs).len(), 1);
        let p = PathExpr::compile("Observation.subject.where(resolve() is Group)").unwrap();
        assert!(p.evaluate(&obs).is_empty());
        let p = PathExpr::compile("Patient.name | Observation.code").unwrap();
        assert_eq!(p.evaluate(&obs).len(), 1);
        assert!(PathExpr::compile("Observation.code.exists()").is_none());
        let p = json!({"resourceType":"Patient","telecom":[{"system":"phone","value":"1"},{"system":"email","value":"a@b"}]});
        let e = PathExpr::compile("Patient.telecom.where(system='email')").unwrap();
        assert_eq!(
            e.evaluate(&p),
            vec![&json!({"system":"email","value":"a@b"})]
        );
        let o = json!({"resourceType":"Observation","valueCodeableConcept":{"text":"pos"}});
        let e = PathExpr::compile("(Observation.value as CodeableConcept).text").unwrap();
        assert_eq!(e.evaluate(&o), vec![&json!("pos")]);
        let component = json!({"code":{"text":"c"},"valueQuantity":{"value":2}});
        assert_eq!(
            PathExpr::compile("value.as(Quantity)")
                .unwrap()
                .evaluate(&component),
            vec![&json!({"value":2})]
        );
        assert_eq!(
            PathExpr::compile("code")
                .unwrap()
                .evaluate(&component)
                .len(),
            1
        );
    }

    #[test]
    fn reference_types() {
        assert_eq!(reference_type("Patient/1"), Some("Patient"));
        assert_eq!(
            reference_type("http://x.org/fhir/Patient/1"),
            Some("Patient")
        );
        assert_eq!(reference_type("Patient/1/_history/2"), Some("Patient"));
        assert_eq!(reference_type("urn:uuid:1234"), None);
        assert_eq!(reference_type("#contained"), None);
    }
}
