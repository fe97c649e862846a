//! Every core invariant of R4, evaluated from its FHIRPath expression in the definitions:
//! the resource is walked along the generated model, and at each element the invariants of
//! its type and of the element itself are evaluated with the element as the context.

use serde_json::Value;
use trialbridge_fhir::structure::{type_def, Invariant};

use crate::eval::root_item;
use crate::{Error, Expression, Item, Variables};

/// What evaluating the invariants found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// `(key, path)` of each invariant that evaluated to false.
    pub violated: Vec<(&'static str, String)>,
    /// `(key, why)` of each invariant that could not be evaluated here (a function that needs
    /// a server or terminology, such as `resolve()` or `memberOf()`).
    pub not_evaluated: Vec<(&'static str, String)>,
}

fn compiled(inv: &'static Invariant) -> Result<&'static Expression, Error> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Result<&'static Expression, Error>>>> =
        OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    cache
        .entry(inv.key)
        .or_insert_with(|| Expression::parse(inv.expression).map(|e| &*Box::leak(Box::new(e))))
        .clone()
}

/// Evaluates every core invariant that applies to `resource` and its elements.
pub fn check(resource: &Value) -> Findings {
    check_except(resource, &|_| false)
}

/// Evaluates the core invariants that apply, except those `skip` names (the ones a caller
/// checks another way).
pub fn check_except(resource: &Value, skip: &dyn Fn(&str) -> bool) -> Findings {
    let mut f = Findings::default();
    let root = root_item(resource);
    let ty = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource")
        .to_string();
    walk(&root, &root, &ty, &ty, skip, &mut f);
    f
}

fn evaluate(inv: &'static Invariant, focus: &Item, root: &Item, path: &str, f: &mut Findings) {
    let expr = match compiled(inv) {
        Ok(e) => e,
        Err(e) => {
            f.not_evaluated.push((inv.key, e.to_string()));
            return;
        }
    };
    match crate::eval::evaluate_expr(expr, focus, root, &Variables::new()) {
        Ok(r) if r == [Item::Bool(false)] => f.violated.push((inv.key, path.to_string())),
        Ok(_) => {}
        Err(e) => f.not_evaluated.push((inv.key, e.to_string())),
    }
}

fn walk(
    item: &Item,
    root: &Item,
    ty: &str,
    path: &str,
    skip: &dyn Fn(&str) -> bool,
    f: &mut Findings,
) {
    let Item::Node(n) = item else { return };
    let model = match ty {
        "SimpleQuantity" | "MoneyQuantity" => "Quantity",
        t => t,
    };
    let Some(def) = type_def(model) else { return };
    for inv in def.invariants.iter().filter(|i| !skip(i.key)) {
        evaluate(inv, item, root, path, f);
    }
    let Value::Object(m) = &*n.value else { return };
    for (key, value) in m {
        let Some(el) = def.element(key) else { continue };
        let values: Vec<&Value> = match value {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for (i, v) in values.into_iter().enumerate() {
            let child_ty = if el.ty.name == "Resource" {
                v.get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or("Resource")
            } else {
                el.ty.name
            };
            let child_path = if value.is_array() {
                format!("{path}.{key}[{i}]")
            } else {
                format!("{path}.{key}")
            };
            let child = Item::Node(crate::Node {
                value: std::sync::Arc::new(v.clone()),
                ty: match child_ty {
                    "SimpleQuantity" | "MoneyQuantity" => "Quantity".into(),
                    t => t.to_string(),
                },
                ext: None,
            });
            for inv in el.invariants.iter().filter(|i| !skip(i.key)) {
                evaluate(inv, &child, root, &child_path, f);
            }
            // A resource inside a Bundle entry is its own root; a contained one keeps its
            // container's (dom-3 looks through %resource).
            let next_root = if el.ty.name == "Resource" && key != "contained" {
                child.clone()
            } else {
                root.clone()
            };
            walk(&child, &next_root, child_ty, &child_path, skip, f);
        }
    }
}
