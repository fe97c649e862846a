//! Every core invariant of R4, evaluated from its FHIRPath expression in the definitions:
//! the resource is walked along the generated model, and at each element the invariants of
//! its type and of the element itself are evaluated with the element as the context.

use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::OnceLock;
use trialbridge_fhir::structure::{model_name as model, ElementDef, Invariant, TypeDef};

use crate::eval::{element_item, root_item};
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
    static ALL: OnceLock<Checker> = OnceLock::new();
    ALL.get_or_init(|| Checker::except(&[])).check(resource)
}

/// The core invariants minus those a caller checks another way, with the walk planned once:
/// for each type, which of its elements can lead to an invariant, so a resource is walked
/// only where one may apply (an Observation whose every invariant is skipped costs a few
/// look-ups, not a walk of every element).
pub struct Checker {
    plans: Vec<Plan>,
    by_name: HashMap<&'static str, usize>,
}

struct Plan {
    def: &'static TypeDef,
    invariants: Vec<&'static Invariant>,
    members: Vec<Member>,
}

struct Member {
    el: &'static ElementDef,
    invariants: Vec<&'static Invariant>,
    child: Child,
}

#[derive(Clone, Copy, PartialEq)]
enum Child {
    /// A type with nothing to check below it.
    Nothing,
    /// A planned type.
    Plan(usize),
    /// A resource: planned by its `resourceType`.
    Resource,
}

impl Checker {
    /// A checker of every core invariant whose key is not in `skip`.
    pub fn except(skip: &[&str]) -> Self {
        let kept = |list: &'static [&'static Invariant]| -> Vec<&'static Invariant> {
            list.iter()
                .copied()
                .filter(|i| !skip.contains(&i.key))
                .collect()
        };
        let types = trialbridge_fhir::structure::TYPES;
        let by_name: HashMap<&'static str, usize> =
            types.iter().enumerate().map(|(i, t)| (t.name, i)).collect();
        let index = |ty: &str| by_name.get(model(ty)).copied();
        // Which types can lead to an invariant: a fixed point over the model.
        let own: Vec<bool> = types
            .iter()
            .map(|t| {
                !kept(t.invariants).is_empty()
                    || t.elements
                        .iter()
                        .any(|e| !kept(e.invariants).is_empty() || e.ty.name == "Resource")
            })
            .collect();
        let mut relevant = own;
        loop {
            let mut changed = false;
            for (i, t) in types.iter().enumerate() {
                if relevant[i] {
                    continue;
                }
                if t.elements
                    .iter()
                    .any(|e| index(e.ty.name).is_some_and(|c| relevant[c]))
                {
                    relevant[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let plans = types
            .iter()
            .map(|t| Plan {
                def: t,
                invariants: kept(t.invariants),
                members: t
                    .elements
                    .iter()
                    .filter_map(|e| {
                        let child = match (e.ty.name, index(e.ty.name)) {
                            ("Resource", _) => Child::Resource,
                            (_, Some(c)) if relevant[c] => Child::Plan(c),
                            _ => Child::Nothing,
                        };
                        let invariants = kept(e.invariants);
                        (child != Child::Nothing || !invariants.is_empty()).then_some(Member {
                            el: e,
                            invariants,
                            child,
                        })
                    })
                    .collect(),
            })
            .collect();
        Checker { plans, by_name }
    }

    /// Evaluates the kept invariants that apply to `resource` and its elements.
    pub fn check(&self, resource: &Value) -> Findings {
        let mut walk = Walk {
            checker: self,
            findings: Findings::default(),
            path: Vec::new(),
        };
        let root = root_item(resource);
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("Resource");
        if let Some(&plan) = self.by_name.get(ty) {
            walk.path.push(Step::Name(ty));
            walk.node(resource, &root, plan);
        }
        walk.findings
    }
}

/// One step of the path to the element being checked; the path is written out only for a
/// finding, so walking costs no allocation per element.
enum Step<'a> {
    Name(&'a str),
    /// A choice branch: `value.ofType(Quantity)`.
    Choice(&'static ElementDef),
    Index(usize),
}

struct Walk<'c, 'a> {
    checker: &'c Checker,
    findings: Findings,
    path: Vec<Step<'a>>,
}

impl<'a> Walk<'_, 'a> {
    fn path(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.path.iter().enumerate() {
            match s {
                Step::Name(n) if i == 0 => out.push_str(n),
                Step::Name(n) => {
                    out.push('.');
                    out.push_str(n);
                }
                Step::Choice(e) => {
                    let _ = write!(out, ".{}.ofType({})", e.choice, e.ty.name);
                }
                Step::Index(k) => {
                    let _ = write!(out, "[{k}]");
                }
            }
        }
        out
    }

    fn evaluate(&mut self, inv: &'static Invariant, focus: &Item<'a>, root: &Item<'a>) {
        let expr = match compiled(inv) {
            Ok(e) => e,
            Err(e) => {
                self.findings.not_evaluated.push((inv.key, e.to_string()));
                return;
            }
        };
        match crate::eval::evaluate_expr(expr, focus, root, &Variables::new()) {
            Ok(r) if r == [Item::Bool(false)] => {
                let path = self.path();
                self.findings.violated.push((inv.key, path));
            }
            Ok(_) => {}
            Err(e) => self.findings.not_evaluated.push((inv.key, e.to_string())),
        }
    }

    /// Checks the invariants of `value`'s type (plan `plan`), then the elements that can
    /// lead to one.
    fn node(&mut self, value: &'a Value, root: &Item<'a>, plan: usize) {
        let checker = self.checker;
        let plan = &checker.plans[plan];
        if !plan.invariants.is_empty() {
            let item = element_item(value, plan.def.name);
            for inv in &plan.invariants {
                self.evaluate(inv, &item, root);
            }
        }
        let Value::Object(m) = value else { return };
        for member in &plan.members {
            let Some(v) = m.get(member.el.name) else {
                continue;
            };
            self.path.push(if member.el.choice.is_empty() {
                Step::Name(member.el.name)
            } else {
                Step::Choice(member.el)
            });
            match v {
                Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        self.path.push(Step::Index(i));
                        self.element(member, v, root);
                        self.path.pop();
                    }
                }
                v => self.element(member, v, root),
            }
            self.path.pop();
        }
    }

    fn element(&mut self, member: &Member, v: &'a Value, root: &Item<'a>) {
        let (plan, ty) = match member.child {
            Child::Resource => {
                let ty = v.get("resourceType").and_then(Value::as_str);
                match ty.and_then(|t| self.checker.by_name.get(t)) {
                    Some(&p) => (Some(p), self.checker.plans[p].def.name),
                    None => (None, "Resource"),
                }
            }
            Child::Plan(p) => (Some(p), member.el.ty.name),
            Child::Nothing => (None, member.el.ty.name),
        };
        if !member.invariants.is_empty() {
            let child = element_item(v, ty);
            for inv in &member.invariants {
                self.evaluate(inv, &child, root);
            }
        }
        let Some(plan) = plan else { return };
        // A resource inside a Bundle entry is its own root; a contained one keeps its
        // container's (dom-3 looks through %resource).
        if member.child == Child::Resource && member.el.name != "contained" {
            let own_root = root_item(v);
            self.node(v, &own_root, plan);
        } else {
            self.node(v, root, plan);
        }
    }
}
