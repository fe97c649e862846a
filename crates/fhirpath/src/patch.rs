//! FHIRPath Patch (R4 `fhirpatch.html`): a `Parameters` resource whose `operation` parameters
//! add, insert, delete, replace and move elements located by FHIRPath expressions.
//!
//! Each operation's path is evaluated by the engine on the resource as patched so far; the
//! nodes it finds are borrowed from that resource, so their place in the JSON is found by
//! identity and changed there. Element names become JSON names through the R4 model (a
//! choice element `value` with a Quantity becomes `valueQuantity`; a repeating element is an
//! array). The result is not validated here: the caller validates it like any update.

use serde_json::{Map, Value};
use trialbridge_fhir::structure::{json_type_suffix, model_name, type_def};

use crate::{Expression, Item, Json};

/// Why a patch cannot be applied: which operation, where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct PatchError {
    /// Where in the Parameters (`Parameters.parameter[1].part[2]`) or in the resource (the
    /// operation's path).
    pub location: String,
    /// What was wrong, and what to do.
    pub message: String,
}

fn error(location: impl Into<String>, message: impl Into<String>) -> PatchError {
    PatchError {
        location: location.into(),
        message: message.into(),
    }
}

/// One step from a value to a value inside it.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The steps from `root` to the value at address `target`, if it is inside `root`.
fn locate(root: &Value, target: *const Value) -> Option<Vec<Step>> {
    if std::ptr::eq(root, target) {
        return Some(Vec::new());
    }
    let inner = |step: Step, v: &Value| {
        locate(v, target).map(|mut rest| {
            rest.insert(0, step);
            rest
        })
    };
    match root {
        Value::Object(m) => m.iter().find_map(|(k, v)| inner(Step::Key(k.clone()), v)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| inner(Step::Index(i), v)),
        _ => None,
    }
}

fn at_mut<'a>(root: &'a mut Value, steps: &[Step]) -> &'a mut Value {
    steps.iter().fold(root, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// A node the path found: where it is, and its FHIR type.
struct Found {
    steps: Vec<Step>,
    ty: String,
}

/// Evaluates `path` on `resource` and locates each node it finds.
fn find(resource: &Value, path: &str, at: &str) -> Result<Vec<Found>, PatchError> {
    let expr = Expression::parse(path)
        .map_err(|e| error(at, format!("the path '{path}' is not FHIRPath: {e}")))?;
    let items = expr
        .evaluate(resource)
        .map_err(|e| error(at, format!("the path '{path}' cannot be evaluated: {e}")))?;
    let mut out = Vec::new();
    for item in items {
        let Item::Node(n) = item else {
            return Err(error(
                at,
                format!("the path '{path}' finds a value, not an element of the resource"),
            ));
        };
        let Json::Borrowed(v) = n.value else {
            return Err(error(
                at,
                format!("the path '{path}' finds a computed value"),
            ));
        };
        let Some(steps) = locate(resource, v) else {
            return Err(error(
                at,
                format!("the path '{path}' finds an element that has only extensions; patch its extensions instead"),
            ));
        };
        out.push(Found {
            steps,
            ty: n.ty.into_owned(),
        });
    }
    Ok(out)
}

/// The one node `path` must find.
fn find_one(resource: &Value, path: &str, at: &str) -> Result<Found, PatchError> {
    let mut found = find(resource, path, at)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(error(
            at,
            format!("the path '{path}' must find one element, it finds {n}"),
        )),
    }
}

/// An operation's parts by name.
struct Operation<'p> {
    at: String,
    parts: Vec<(&'p str, &'p Value, usize)>,
}

impl<'p> Operation<'p> {
    fn part(&self, name: &str) -> Option<(&'p Value, String)> {
        self.parts
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, v, i)| (*v, format!("{}.part[{i}]", self.at)))
    }

    fn string(&self, name: &str, key: &str) -> Result<Option<String>, PatchError> {
        let Some((p, at)) = self.part(name) else {
            return Ok(None);
        };
        p.get(key)
            .and_then(Value::as_str)
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| error(at, format!("the '{name}' part needs {key}")))
    }

    fn required(&self, name: &str, key: &str) -> Result<String, PatchError> {
        self.string(name, key)?.ok_or_else(|| {
            error(
                &self.at,
                format!("this operation needs a '{name}' part ({key})"),
            )
        })
    }

    fn index(&self, name: &str) -> Result<usize, PatchError> {
        let (p, at) = self.part(name).ok_or_else(|| {
            error(
                &self.at,
                format!("this operation needs a '{name}' part (valueInteger)"),
            )
        })?;
        p.get("valueInteger")
            .and_then(Value::as_u64)
            .map(|i| i as usize)
            .ok_or_else(|| error(at, format!("'{name}' is a valueInteger of 0 or more")))
    }

    /// The `value` part, for an element of type `element_ty` (the type an anonymous value
    /// built from parts has): its FHIR type from `value[x]` (`None` for parts) and its JSON.
    fn value(&self, element_ty: Option<&str>) -> Result<(Option<String>, Value), PatchError> {
        let (p, at) = self
            .part("value")
            .ok_or_else(|| error(&self.at, "this operation needs a 'value' part"))?;
        part_value(p, &at, element_ty)
    }
}

/// A part's value: `value[x]` (type and JSON), or nested parts that build an object of type
/// `element_ty`, each part's name made a JSON name by the model.
fn part_value(
    p: &Value,
    at: &str,
    element_ty: Option<&str>,
) -> Result<(Option<String>, Value), PatchError> {
    let Value::Object(m) = p else {
        return Err(error(at, "a part is an object"));
    };
    if let Some(t) = value_type(p) {
        return Ok((Some(t.clone()), m[&format!("value{t}")].clone()));
    }
    let Some(Value::Array(parts)) = m.get("part") else {
        return Err(error(at, "the part has no value[x] and no parts"));
    };
    let Some(container) = element_ty else {
        return Err(error(
            at,
            "a value given as parts needs an element of known type",
        ));
    };
    let mut obj = Map::new();
    for (i, sub) in parts.iter().enumerate() {
        let sub_at = format!("{at}.part[{i}]");
        let name = sub
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| error(&sub_at, "a part needs a name"))?;
        let sub_ty = value_type(sub);
        let target = json_name(container, name, sub_ty.as_deref(), &sub_at)?;
        let (_, v) = part_value(sub, &sub_at, Some(target.ty))?;
        if target.many {
            match obj
                .entry(target.key)
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(a) => a.push(v),
                _ => unreachable!("inserted as an array"),
            }
        } else {
            obj.insert(target.key, v);
        }
    }
    Ok((None, Value::Object(obj)))
}

/// Where an element goes in JSON.
struct Target {
    /// The JSON name (`valueQuantity` for the Quantity branch of `value[x]`).
    key: String,
    /// Whether it is an array.
    many: bool,
    /// The element's type (`Observation.component` for a backbone element).
    ty: &'static str,
}

/// The JSON name, repetition and type of element `name` of type `container` holding a value
/// of type `value_ty`.
fn json_name(
    container: &str,
    name: &str,
    value_ty: Option<&str>,
    at: &str,
) -> Result<Target, PatchError> {
    let def = type_def(model_name(container))
        .ok_or_else(|| error(at, format!("'{container}' is not an R4 type")))?;
    if let Some(e) = def.element(name).filter(|e| e.choice.is_empty()) {
        return Ok(Target {
            key: name.to_string(),
            many: e.many,
            ty: e.ty.name,
        });
    }
    let branches: Vec<_> = def.elements.iter().filter(|e| e.choice == name).collect();
    if branches.is_empty() {
        return Err(error(at, format!("{container} has no element '{name}'")));
    }
    let Some(t) = value_ty else {
        return Err(error(
            at,
            format!(
                "{container}.{name} is a choice: give the value as value[x] so its type is known"
            ),
        ));
    };
    let key = format!("{name}{}", json_type_suffix(t));
    branches
        .iter()
        .find(|e| e.name == key)
        .map(|e| Target {
            key: key.clone(),
            many: e.many,
            ty: e.ty.name,
        })
        .ok_or_else(|| error(at, format!("{container}.{name} cannot be a {t}")))
}

/// The path without its last member step (`Patient.name.given` -> `Patient.name`, `given`),
/// for operations whose path names a list that may be empty.
fn split_last(path: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let bytes = path.as_bytes();
    for i in (0..bytes.len()).rev() {
        match bytes[i] {
            b')' | b']' => depth += 1,
            b'(' | b'[' => depth -= 1,
            b'.' if depth == 0 => {
                let last = &path[i + 1..];
                let plain =
                    !last.is_empty() && last.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                return plain.then_some((&path[..i], last));
            }
            _ => {}
        }
    }
    None
}

/// The list a path names: the parent's steps, the JSON name, and the list's length.
fn list(resource: &Value, path: &str, location: &str) -> Result<List, PatchError> {
    let (parent_path, name) = split_last(path).ok_or_else(|| {
        error(
            location,
            format!("the path '{path}' must end in the name of a repeating element"),
        )
    })?;
    let parent = find_one(resource, parent_path, location)?;
    let target = json_name(&parent.ty, name, None, location)?;
    if !target.many {
        return Err(error(location, format!("'{name}' does not repeat")));
    }
    let len = value_at(resource, &parent.steps)
        .get(&target.key)
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    Ok(List {
        parent: parent.steps,
        key: target.key,
        ty: target.ty,
        len,
    })
}

/// A repeating element a path names (possibly still empty).
struct List {
    parent: Vec<Step>,
    key: String,
    ty: &'static str,
    len: usize,
}

fn value_at<'a>(root: &'a Value, steps: &[Step]) -> &'a Value {
    steps.iter().fold(root, |v, s| match s {
        Step::Key(k) => &v[k.as_str()],
        Step::Index(i) => &v[*i],
    })
}

/// Removes the value at `steps` (an emptied array goes with its last item).
fn remove(resource: &mut Value, steps: &[Step]) {
    let Some((last, parent)) = steps.split_last() else {
        return;
    };
    let holder = at_mut(resource, parent);
    match (last, holder) {
        (Step::Key(k), Value::Object(m)) => {
            m.shift_remove(k);
        }
        (Step::Index(i), Value::Array(a)) => {
            a.remove(*i);
            if a.is_empty() {
                if let Some((Step::Key(k), grand)) = parent.split_last() {
                    if let Value::Object(m) = at_mut(resource, grand) {
                        m.shift_remove(k);
                    }
                }
            }
        }
        _ => {}
    }
}

/// The type a part's `value[x]` names (`valueQuantity` -> `Quantity`).
fn value_type(p: &Value) -> Option<String> {
    p.as_object()?
        .keys()
        .find_map(|k| {
            k.strip_prefix("value")
                .filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
        })
        .map(str::to_string)
}

/// Applies the FHIRPath Patch `parameters` to `resource`; nothing changes unless every
/// operation applies.
pub fn apply(resource: &Value, parameters: &Value) -> Result<Value, PatchError> {
    if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(error(
            "Parameters",
            "a FHIRPath Patch is a Parameters resource",
        ));
    }
    let mut out = resource.clone();
    let empty = Vec::new();
    let params = parameters
        .get("parameter")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, p) in params.iter().enumerate() {
        let at = format!("Parameters.parameter[{i}]");
        if p.get("name").and_then(Value::as_str) != Some("operation") {
            return Err(error(
                &at,
                "every parameter of a FHIRPath Patch is an 'operation'",
            ));
        }
        let parts = p
            .get("part")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .iter()
            .enumerate()
            .filter_map(|(k, part)| Some((part.get("name")?.as_str()?, part, k)))
            .collect();
        let op = Operation { at, parts };
        apply_operation(&mut out, &op)?;
    }
    Ok(out)
}

fn apply_operation(out: &mut Value, op: &Operation) -> Result<(), PatchError> {
    let kind = op.required("type", "valueCode")?;
    let path = op.required("path", "valueString")?;
    let at = op
        .part("path")
        .map(|(_, a)| a)
        .unwrap_or_else(|| op.at.clone());
    match kind.as_str() {
        "add" => {
            let name = op.required("name", "valueString")?;
            let parent = find_one(out, &path, &at)?;
            let value_ty = op.part("value").and_then(|(p, _)| value_type(p));
            let target = json_name(&parent.ty, &name, value_ty.as_deref(), &at)?;
            let (_, value) = op.value(Some(target.ty))?;
            let (key, many) = (target.key, target.many);
            let Value::Object(m) = at_mut(out, &parent.steps) else {
                return Err(error(
                    at,
                    format!("'{path}' is not an element that can hold '{name}'"),
                ));
            };
            if many {
                match m.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                    Value::Array(a) => a.push(value),
                    _ => return Err(error(at, format!("'{name}' is not a list here"))),
                }
            } else if m.contains_key(&key) {
                return Err(error(
                    at,
                    format!("'{name}' has a value already: use replace"),
                ));
            } else {
                m.insert(key, value);
            }
        }
        "insert" => {
            let index = op.index("index")?;
            let List {
                parent,
                key,
                ty,
                len,
            } = list(out, &path, &at)?;
            let (_, value) = op.value(Some(ty))?;
            if index > len {
                return Err(error(
                    at,
                    format!("index {index} is past the end of the list ({len} items)"),
                ));
            }
            let Value::Object(m) = at_mut(out, &parent) else {
                return Err(error(at, format!("'{path}' is not inside an element")));
            };
            match m.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(a) => a.insert(index, value),
                _ => return Err(error(at, "not a list")),
            }
        }
        "delete" => {
            let found = find(out, &path, &at)?;
            match found.len() {
                0 => {}
                1 => remove(out, &found[0].steps),
                n => {
                    return Err(error(
                        at,
                        format!("the path '{path}' must find one element or none, it finds {n}"),
                    ))
                }
            }
        }
        "replace" => {
            let found = find_one(out, &path, &at)?;
            let (ty, value) = op.value(Some(&found.ty))?;
            // A choice element may change type: `valueQuantity` replaced by a string is
            // `valueString`.
            if let (Some(Step::Key(k)), Some(t)) = (found.steps.last(), ty.as_deref()) {
                let (parent, key) = (found.steps[..found.steps.len() - 1].to_vec(), k.clone());
                let base = key
                    .strip_suffix(&*json_type_suffix(&found.ty))
                    .map(str::to_string);
                if let Some(base) = base.filter(|b| !b.is_empty()) {
                    let new_key = format!("{base}{}", json_type_suffix(t));
                    if new_key != key {
                        if let Value::Object(m) = at_mut(out, &parent) {
                            m.shift_remove(&key);
                            m.insert(new_key, value);
                            return Ok(());
                        }
                    }
                }
            }
            *at_mut(out, &found.steps) = value;
        }
        "move" => {
            let source = op.index("source")?;
            let destination = op.index("destination")?;
            let List {
                parent, key, len, ..
            } = list(out, &path, &at)?;
            if source >= len || destination >= len {
                return Err(error(
                    at,
                    format!("source and destination must be below {len}"),
                ));
            }
            if let Some(Value::Array(a)) = at_mut(out, &parent).get_mut(&key) {
                let v = a.remove(source);
                a.insert(destination, v);
            }
        }
        other => {
            return Err(error(
                op.part("type")
                    .map(|(_, a)| a)
                    .unwrap_or_else(|| op.at.clone()),
                format!(
                "'{other}' is not a FHIRPath Patch operation (add, insert, delete, replace, move)"
            ),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(parts: Value) -> Value {
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]})
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p", "gender": "female",
               "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
               "birthDate": "1974-12-25"})
    }

    #[test]
    fn the_five_operations() {
        let p = patient();
        let out = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.gender"},
            {"name": "value", "valueCode": "male"}])),
        )
        .unwrap();
        assert_eq!(out["gender"], "male");

        let out = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "identifier"},
            {"name": "value", "valueIdentifier": {"system": "urn:s", "value": "1"}}])),
        )
        .unwrap();
        assert_eq!(
            out["identifier"],
            json!([{"system": "urn:s", "value": "1"}])
        );

        let out = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "insert"},
            {"name": "path", "valueString": "Patient.name[0].given"},
            {"name": "index", "valueInteger": 0},
            {"name": "value", "valueString": "Dr"}])),
        )
        .unwrap();
        assert_eq!(out["name"][0]["given"], json!(["Dr", "Peter", "James"]));

        let out = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "move"},
            {"name": "path", "valueString": "Patient.name[0].given"},
            {"name": "source", "valueInteger": 1},
            {"name": "destination", "valueInteger": 0}])),
        )
        .unwrap();
        assert_eq!(out["name"][0]["given"], json!(["James", "Peter"]));

        let out = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.name[0].given[0]"}])),
        )
        .unwrap();
        assert_eq!(out["name"][0]["given"], json!(["James"]));
        // Deleting what is not there changes nothing.
        let out = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.deceased"}])),
        )
        .unwrap();
        assert_eq!(out, p);
        // The last item of a list takes the list with it.
        let out = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.name[0]"}])),
        )
        .unwrap();
        assert!(out.get("name").is_none());
    }

    #[test]
    fn a_where_selects_the_element_and_a_choice_takes_its_type() {
        let obs = json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"text": "x"},
            "component": [
                {"code": {"text": "a"}, "valueQuantity": {"value": 1}},
                {"code": {"text": "b"}, "valueQuantity": {"value": 2}}]});
        let out = apply(
            &obs,
            &op(json!([
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Observation.component.where(code.text = 'b').value"},
            {"name": "value", "valueString": "not done"}])),
        )
        .unwrap();
        assert_eq!(
            out["component"][1],
            json!({"code": {"text": "b"}, "valueString": "not done"})
        );
        assert_eq!(out["component"][0], obs["component"][0]);
        let out = apply(
            &obs,
            &op(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Observation"},
            {"name": "name", "valueString": "effective"},
            {"name": "value", "valueDateTime": "2026-01-01"}])),
        )
        .unwrap();
        assert_eq!(out["effectiveDateTime"], "2026-01-01");
        // An anonymous (backbone) value is given as parts.
        let out = apply(
            &obs,
            &op(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Observation"},
            {"name": "name", "valueString": "component"},
            {"name": "value", "part": [
                {"name": "code", "valueCodeableConcept": {"text": "c"}},
                {"name": "value", "valueInteger": 3}]}])),
        )
        .unwrap();
        assert_eq!(
            out["component"][2],
            json!({"code": {"text": "c"}, "valueInteger": 3})
        );
    }

    #[test]
    fn a_bad_operation_names_where_and_changes_nothing() {
        let p = patient();
        let e = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.name.given"},
            {"name": "value", "valueString": "x"}])),
        )
        .unwrap_err();
        assert_eq!(e.location, "Parameters.parameter[0].part[1]");
        assert!(e.message.contains("finds 2"), "{e}");
        let e = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "nickname"},
            {"name": "value", "valueString": "x"}])),
        )
        .unwrap_err();
        assert!(e.message.contains("no element 'nickname'"), "{e}");
        let e = apply(
            &p,
            &op(json!([
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "gender"},
            {"name": "value", "valueCode": "male"}])),
        )
        .unwrap_err();
        assert!(e.message.contains("use replace"), "{e}");
        let e = apply(
            &p,
            &op(json!([{"name": "type", "valueCode": "upsert"},
            {"name": "path", "valueString": "Patient"}])),
        )
        .unwrap_err();
        assert_eq!(e.location, "Parameters.parameter[0].part[0]");
        assert!(apply(&p, &json!({"resourceType": "Patient"})).is_err());
    }

    #[test]
    fn split_last_ignores_dots_inside_calls() {
        assert_eq!(
            split_last("Patient.name.given"),
            Some(("Patient.name", "given"))
        );
        assert_eq!(
            split_last("Patient.name.where(use = 'a.b').given"),
            Some(("Patient.name.where(use = 'a.b')", "given"))
        );
        assert_eq!(split_last("Patient.name.first()"), None);
    }
}
