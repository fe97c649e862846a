//! Rewriting references inside a resource (transaction `urn:uuid:` fullUrls and conditional
//! references).

use serde_json::Value;

/// The resource type and id of a literal reference: `Type/id`, `Type/id/_history/v`, or an
/// absolute URL ending in one of them. `None` when the type is not an R4 resource type.
pub fn literal_target(r: &str) -> Option<(&'static str, &str)> {
    let parts: Vec<&str> = r.split('/').collect();
    let n = parts.len();
    let (t, id) = if n >= 4 && parts[n - 2] == "_history" {
        (parts[n - 4], parts[n - 3])
    } else if n >= 2 {
        (parts[n - 2], parts[n - 1])
    } else {
        return None;
    };
    Some((crate::resource_type::canonical(t)?, id))
}

/// Replaces every `reference` value for which `map` returns a replacement, anywhere in the
/// resource (contained resources and extensions included). Returns how many were replaced.
pub fn rewrite_references(v: &mut Value, map: &mut dyn FnMut(&str) -> Option<String>) -> usize {
    let mut n = 0;
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                if k == "reference" {
                    if let Value::String(s) = child {
                        if let Some(new) = map(s) {
                            *s = new;
                            n += 1;
                        }
                        continue;
                    }
                }
                n += rewrite_references(child, map);
            }
        }
        Value::Array(items) => {
            for i in items {
                n += rewrite_references(i, map);
            }
        }
        _ => {}
    }
    n
}

/// Collects every `reference` string of a resource.
pub fn references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                match (k.as_str(), child) {
                    ("reference", Value::String(s)) => out.push(s.clone()),
                    _ => references(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| references(i, out)),
        _ => {}
    }
}

/// Collects every `reference` string of a resource with the FHIRPath of its Reference element
/// (`Provenance.entity[0].what`), `root` being the path of `v` itself.
pub fn references_at(v: &Value, root: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                match (k.as_str(), child) {
                    ("reference", Value::String(s)) => out.push((root.to_string(), s.clone())),
                    (_, Value::Array(items)) => {
                        for (i, item) in items.iter().enumerate() {
                            references_at(item, &format!("{root}.{k}[{i}]"), out);
                        }
                    }
                    _ => references_at(child, &format!("{root}.{k}"), out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                references_at(item, &format!("{root}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rewrites_nested() {
        let mut v = json!({"subject":{"reference":"urn:uuid:1"},"contained":[{"x":{"reference":"urn:uuid:1"}}],
            "other":{"reference":"Patient/2"}});
        let n = rewrite_references(&mut v, &mut |r| {
            (r == "urn:uuid:1").then(|| "Patient/9".to_string())
        });
        assert_eq!(n, 2);
        assert_eq!(v["contained"][0]["x"]["reference"], "Patient/9");
        let mut all = Vec::new();
        references(&v, &mut all);
        assert_eq!(all.len(), 3);
        let mut at = Vec::new();
        references_at(&v, "Observation", &mut at);
        at.sort();
        assert_eq!(
            at,
            [
                (
                    "Observation.contained[0].x".to_string(),
                    "Patient/9".to_string()
                ),
                ("Observation.other".to_string(), "Patient/2".to_string()),
                ("Observation.subject".to_string(), "Patient/9".to_string()),
            ]
        );
    }
}
