//! SQL on FHIR v2 ViewDefinitions: a flat table from FHIR R4 resources.
//!
//! A [`ViewDefinition`] is read once ([`ViewDefinition::parse`], which refuses an invalid view
//! and names the element) and gives the rows of any number of resources
//! ([`ViewDefinition::rows`]). Every path is a FHIRPath expression evaluated by the same engine
//! as validation and search (`trialbridge-fhirpath`): `select` with nested `select`, `column`
//! (`collection`, `type`), `forEach`, `forEachOrNull`, `repeat`, `unionAll`, `where`,
//! `constant` (as `%name`), and `%rowIndex`.
//!
//! Rows follow the specification's rules: the columns of a select are its own `column`s, then
//! those of its nested `select`s, then those of its `unionAll` (whose branches must have the
//! same columns in the same order); the rows of a select are the product of its own row, the
//! rows of each nested select and the rows of its `unionAll` branches one after the other. A
//! column without `collection: true` that finds several values is an error, not a guess.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;
use trialbridge_fhirpath::{Expression, Item, Json, Node, Variables};

/// Why a view is refused or a row cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The ViewDefinition is not valid; `element` is where (`select[1].forEach`).
    #[error("{element}: {message}")]
    Invalid {
        /// The element of the ViewDefinition.
        element: String,
        /// What is wrong with it.
        message: String,
    },
    /// A path could not be evaluated on a resource (several values in a column that is not a
    /// collection, a `where` that is not boolean, an undefined `%constant`).
    #[error("{element} on {resource}: {message}")]
    Evaluation {
        /// The element of the ViewDefinition.
        element: String,
        /// The resource (`Patient/pt1`).
        resource: String,
        /// What went wrong.
        message: String,
    },
}

fn invalid(element: impl Into<String>, message: impl Into<String>) -> ViewError {
    ViewError::Invalid {
        element: element.into(),
        message: message.into(),
    }
}

/// One column of the view's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name (letters, digits and `_`, starting with a letter).
    pub name: String,
    /// The FHIR type the view declares (`string`, `integer`, `dateTime`, ...), if any.
    pub ty: Option<String>,
    /// Whether a cell holds an array of every value (`collection: true`).
    pub collection: bool,
}

/// A column with its path.
#[derive(Debug, Clone)]
struct ColumnPath {
    column: Column,
    path: Expression,
    element: String,
}

/// How a select chooses the nodes its columns are evaluated at.
#[derive(Debug, Clone)]
enum Iteration {
    /// The enclosing node.
    Here,
    /// Each node the path finds; none, no rows.
    ForEach(Expression),
    /// Each node the path finds; none, one row of nulls.
    ForEachOrNull(Expression),
    /// The nodes the paths find, recursively, depth first.
    Repeat(Vec<Expression>),
}

#[derive(Debug, Clone)]
struct Select {
    element: String,
    iteration: Iteration,
    columns: Vec<ColumnPath>,
    selects: Vec<Select>,
    union_all: Vec<Select>,
}

/// A parsed ViewDefinition.
#[derive(Debug, Clone)]
pub struct ViewDefinition {
    /// `name`, if given.
    pub name: Option<String>,
    /// The resource type the view reads.
    pub resource: String,
    constants: Vec<(String, String, Value)>,
    wheres: Vec<(String, Expression)>,
    root: Select,
    columns: Vec<Column>,
}

/// A column name usable in any SQL database.
fn is_column_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn path(v: &Value, element: &str) -> Result<Expression, ViewError> {
    let text = v
        .as_str()
        .ok_or_else(|| invalid(element, "must be a FHIRPath expression (a string)"))?;
    Expression::parse(text).map_err(|e| invalid(element, e.to_string()))
}

fn array<'v>(v: &'v Value, key: &str, element: &str) -> Result<&'v [Value], ViewError> {
    match v.get(key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(invalid(format!("{element}.{key}"), "must be an array")),
    }
}

impl Select {
    fn parse(v: &Value, element: String) -> Result<Select, ViewError> {
        if !v.is_object() {
            return Err(invalid(element, "must be an object"));
        }
        let at = |k: &str| format!("{element}.{k}");
        let mut iterations = Vec::new();
        if let Some(p) = v.get("forEach") {
            iterations.push(Iteration::ForEach(path(p, &at("forEach"))?));
        }
        if let Some(p) = v.get("forEachOrNull") {
            iterations.push(Iteration::ForEachOrNull(path(p, &at("forEachOrNull"))?));
        }
        if v.get("repeat").is_some() {
            let paths = array(v, "repeat", &element)?
                .iter()
                .enumerate()
                .map(|(i, p)| path(p, &format!("{element}.repeat[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if paths.is_empty() {
                return Err(invalid(at("repeat"), "needs at least one path"));
            }
            iterations.push(Iteration::Repeat(paths));
        }
        if iterations.len() > 1 {
            return Err(invalid(
                element,
                "forEach, forEachOrNull and repeat exclude each other",
            ));
        }
        let columns = array(v, "column", &element)?
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let el = format!("{element}.column[{i}]");
                let name = c
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| is_column_name(n))
                    .ok_or_else(|| {
                        invalid(
                            format!("{el}.name"),
                            "a column needs a name of letters, digits and _, starting with a letter",
                        )
                    })?;
                let ty = match c.get("type") {
                    None => None,
                    Some(Value::String(t)) => Some(t.clone()),
                    Some(_) => return Err(invalid(format!("{el}.type"), "must be a string")),
                };
                let collection = match c.get("collection") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(invalid(format!("{el}.collection"), "must be true or false")),
                };
                let p = c
                    .get("path")
                    .ok_or_else(|| invalid(format!("{el}.path"), "a column needs a path"))?;
                Ok(ColumnPath {
                    path: path(p, &format!("{el}.path"))?,
                    column: Column {
                        name: name.to_string(),
                        ty,
                        collection,
                    },
                    element: format!("{el} ({name})"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let children = |key: &str| -> Result<Vec<Select>, ViewError> {
            array(v, key, &element)?
                .iter()
                .enumerate()
                .map(|(i, s)| Select::parse(s, format!("{element}.{key}[{i}]")))
                .collect()
        };
        let select = Select {
            iteration: iterations.pop().unwrap_or(Iteration::Here),
            columns,
            selects: children("select")?,
            union_all: children("unionAll")?,
            element,
        };
        if let Some((first, rest)) = select.union_all.split_first() {
            let names = |s: &Select| -> Vec<String> {
                s.all_columns().into_iter().map(|c| c.name).collect()
            };
            let want = names(first);
            for (i, branch) in rest.iter().enumerate() {
                let got = names(branch);
                if got != want {
                    return Err(invalid(
                        format!("{}.unionAll[{}]", select.element, i + 1),
                        format!(
                            "a unionAll branch must have the columns of the first one in the same order ({}), not ({})",
                            want.join(", "),
                            got.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(select)
    }

    /// The columns of its rows, in order: its own, its nested selects', its unionAll's.
    fn all_columns(&self) -> Vec<Column> {
        let mut out: Vec<Column> = self.columns.iter().map(|c| c.column.clone()).collect();
        for s in &self.selects {
            out.extend(s.all_columns());
        }
        if let Some(first) = self.union_all.first() {
            out.extend(first.all_columns());
        }
        out
    }
}

/// What evaluation of one resource shares.
struct Scope<'a> {
    resource: Item<'a>,
    key: String,
    vars: Variables<'a>,
}

/// The focus of a row made for an empty `forEachOrNull`: a node with nothing in it, so
/// paths find nothing and `%rowIndex` is still 0.
static NOTHING: Value = Value::Null;

fn nothing<'a>() -> Item<'a> {
    Item::Node(Node {
        value: Json::Borrowed(&NOTHING),
        ty: Cow::Borrowed("Element"),
        ext: None,
    })
}

impl<'a> Scope<'a> {
    fn eval(
        &mut self,
        e: &Expression,
        focus: &Item<'a>,
        row_index: usize,
        element: &str,
    ) -> Result<Vec<Item<'a>>, ViewError> {
        self.eval_raw(e, focus, row_index)
            .map_err(|err| self.failed(element, err))
    }

    fn eval_raw(
        &mut self,
        e: &Expression,
        focus: &Item<'a>,
        row_index: usize,
    ) -> Result<Vec<Item<'a>>, trialbridge_fhirpath::Error> {
        self.vars
            .insert("rowIndex".into(), vec![Item::Int(row_index as i64)]);
        e.evaluate_at(focus, &self.resource, &self.vars)
    }

    fn failed(&self, element: &str, err: trialbridge_fhirpath::Error) -> ViewError {
        ViewError::Evaluation {
            element: element.to_string(),
            resource: self.key.clone(),
            message: err.to_string(),
        }
    }

    fn repeat(
        &mut self,
        paths: &[Expression],
        focus: &Item<'a>,
        row_index: usize,
        element: &str,
        out: &mut Vec<Item<'a>>,
    ) -> Result<(), ViewError> {
        for p in paths {
            // The paths apply at every level, where a name may exist at some levels only
            // (`answer.item` of a QuestionnaireResponse item, not of the response itself).
            let children = match self.eval_raw(p, focus, row_index) {
                Ok(c) => c,
                Err(trialbridge_fhirpath::Error::NoSuchElement { .. }) => Vec::new(),
                Err(e) => return Err(self.failed(element, e)),
            };
            for child in children {
                out.push(child.clone());
                self.repeat(paths, &child, row_index, element, out)?;
            }
        }
        Ok(())
    }

    fn rows(
        &mut self,
        s: &Select,
        focus: &Item<'a>,
        row_index: usize,
    ) -> Result<Vec<Vec<Value>>, ViewError> {
        let foci: Vec<Item<'a>> = match &s.iteration {
            Iteration::Here => vec![focus.clone()],
            Iteration::ForEach(p) | Iteration::ForEachOrNull(p) => {
                let element = format!("{}.forEach", s.element);
                self.eval(p, focus, row_index, &element)?
            }
            Iteration::Repeat(paths) => {
                let mut out = Vec::new();
                let element = format!("{}.repeat", s.element);
                self.repeat(paths, focus, row_index, &element, &mut out)?;
                out
            }
        };
        let mut out = Vec::new();
        let iterates = !matches!(s.iteration, Iteration::Here);
        let (foci, empty) = if foci.is_empty() && matches!(s.iteration, Iteration::ForEachOrNull(_))
        {
            (vec![nothing()], true)
        } else {
            (foci, false)
        };
        for (i, x) in foci.iter().enumerate() {
            let index = if iterates { i } else { row_index };
            let mut own = Vec::with_capacity(s.columns.len());
            for c in &s.columns {
                let items = self.eval(&c.path, x, index, &c.element)?;
                own.push(self.cell(c, items)?);
            }
            let mut rows = vec![own];
            for nested in &s.selects {
                let mut sub = self.rows(nested, x, index)?;
                if sub.is_empty() && empty {
                    sub = vec![vec![Value::Null; nested.all_columns().len()]];
                }
                rows = product(rows, sub);
            }
            if !s.union_all.is_empty() {
                let mut union = Vec::new();
                for branch in &s.union_all {
                    union.extend(self.rows(branch, x, index)?);
                }
                if union.is_empty() && empty {
                    union = vec![vec![Value::Null; s.union_all[0].all_columns().len()]];
                }
                rows = product(rows, union);
            }
            out.extend(rows);
        }
        Ok(out)
    }

    fn cell(&self, c: &ColumnPath, items: Vec<Item<'a>>) -> Result<Value, ViewError> {
        if c.column.collection {
            return Ok(Value::Array(items.iter().map(to_json).collect()));
        }
        match items.as_slice() {
            [] => Ok(Value::Null),
            [one] => Ok(to_json(one)),
            many => Err(ViewError::Evaluation {
                element: c.element.clone(),
                resource: self.key.clone(),
                message: format!(
                    "the path finds {} values; a column holds one unless it says collection: true",
                    many.len()
                ),
            }),
        }
    }
}

/// Every row of `left` joined with every row of `right`.
fn product(left: Vec<Vec<Value>>, right: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
    let mut out = Vec::with_capacity(left.len() * right.len());
    for l in &left {
        for r in &right {
            let mut row = l.clone();
            row.extend(r.iter().cloned());
            out.push(row);
        }
    }
    out
}

/// A cell as text (CSV, a SQL cast): `None` for null, a string as it is, anything else as
/// JSON (numbers, booleans, arrays of a collection column).
pub fn cell_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl ViewError {
    /// The element of the ViewDefinition the error is about (`select[1].forEach`).
    pub fn element(&self) -> &str {
        match self {
            ViewError::Invalid { element, .. } | ViewError::Evaluation { element, .. } => element,
        }
    }
}

/// A FHIRPath value as a cell: a FHIR element as its JSON, a system value as JSON text or
/// number.
pub fn to_json(item: &Item<'_>) -> Value {
    match item {
        Item::Node(n) => (*n.value).clone(),
        Item::Bool(b) => Value::Bool(*b),
        Item::Int(i) => Value::from(*i),
        Item::Dec(d) => {
            let text = d.to_string();
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        Item::Str(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => {
            Value::String(s.clone())
        }
        Item::Quantity(v, u) => Value::String(format!("{v} '{u}'")),
    }
}

impl ViewDefinition {
    /// Reads a ViewDefinition; an invalid one is refused with the element that is wrong.
    pub fn parse(def: &Value) -> Result<ViewDefinition, ViewError> {
        if !def.is_object() {
            return Err(invalid("ViewDefinition", "must be a JSON object"));
        }
        if let Some(t) = def.get("resourceType") {
            if t != "ViewDefinition" {
                return Err(invalid("resourceType", "must be ViewDefinition"));
            }
        }
        let resource = def
            .get("resource")
            .and_then(Value::as_str)
            .filter(|r| {
                r.starts_with(|c: char| c.is_ascii_uppercase())
                    && r.chars().all(|c| c.is_ascii_alphanumeric())
            })
            .ok_or_else(|| {
                invalid(
                    "resource",
                    "a view needs the resource type it reads (Patient, Observation, ...)",
                )
            })?;
        let name = match def.get("name") {
            None => None,
            Some(Value::String(n)) if is_column_name(n) => Some(n.clone()),
            Some(_) => {
                return Err(invalid(
                    "name",
                    "a view name is letters, digits and _, starting with a letter",
                ))
            }
        };
        let mut constants = Vec::new();
        for (i, c) in array(def, "constant", "ViewDefinition")?.iter().enumerate() {
            let el = format!("constant[{i}]");
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| is_column_name(n))
                .ok_or_else(|| invalid(format!("{el}.name"), "a constant needs a name"))?;
            let values: Vec<(&String, &Value)> = c
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("value") && k.len() > 5)
                .collect();
            let [(key, value)] = values.as_slice() else {
                return Err(invalid(
                    format!("{el}.value[x]"),
                    "a constant needs exactly one value[x] (valueString, valueInteger, ...)",
                ));
            };
            let mut ty = key[5..].to_string();
            ty[..1].make_ascii_lowercase();
            if value.is_object() || value.is_array() || value.is_null() {
                return Err(invalid(format!("{el}.{key}"), "must be a primitive value"));
            }
            constants.push((name.to_string(), ty, (*value).clone()));
        }
        let wheres = array(def, "where", "ViewDefinition")?
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let el = format!("where[{i}].path");
                let p = w
                    .get("path")
                    .ok_or_else(|| invalid(&el, "a where needs a path"))?;
                Ok((el.clone(), path(p, &el)?))
            })
            .collect::<Result<Vec<_>, ViewError>>()?;
        let selects = array(def, "select", "ViewDefinition")?;
        if selects.is_empty() {
            return Err(invalid("select", "a view needs at least one select"));
        }
        let root = Select {
            element: "ViewDefinition".into(),
            iteration: Iteration::Here,
            columns: Vec::new(),
            selects: selects
                .iter()
                .enumerate()
                .map(|(i, s)| Select::parse(s, format!("select[{i}]")))
                .collect::<Result<_, _>>()?,
            union_all: Vec::new(),
        };
        let columns = root.all_columns();
        let mut seen = HashSet::new();
        for c in &columns {
            if !seen.insert(c.name.as_str()) {
                return Err(invalid(
                    "select",
                    format!(
                        "two columns are named {}; names must be unique in a view",
                        c.name
                    ),
                ));
            }
        }
        Ok(ViewDefinition {
            name,
            resource: resource.to_string(),
            constants,
            wheres,
            root,
            columns,
        })
    }

    /// The table's columns, in order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The rows of one resource, each a value per column (none for a resource of another type
    /// or one the view's `where` leaves out).
    pub fn rows(&self, resource: &Value) -> Result<Vec<Vec<Value>>, ViewError> {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource.as_str()) {
            return Ok(Vec::new());
        }
        let key = format!(
            "{}/{}",
            self.resource,
            resource
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("(no id)")
        );
        let mut vars = Variables::new();
        for (name, ty, value) in &self.constants {
            vars.insert(
                name.clone(),
                vec![Item::Node(Node {
                    value: Json::Borrowed(value),
                    ty: Cow::Owned(ty.clone()),
                    ext: None,
                })],
            );
        }
        let root = Item::resource(resource);
        let mut scope = Scope {
            resource: root.clone(),
            key,
            vars,
        };
        for (element, w) in &self.wheres {
            let found = scope.eval(w, &root, 0, element)?;
            let keep = match found.as_slice() {
                [] => false,
                [one] => match one.system() {
                    Item::Bool(b) => b,
                    _ => {
                        return Err(ViewError::Evaluation {
                            element: element.clone(),
                            resource: scope.key.clone(),
                            message: "a where path must give true or false".into(),
                        })
                    }
                },
                many => {
                    return Err(ViewError::Evaluation {
                        element: element.clone(),
                        resource: scope.key.clone(),
                        message: format!(
                            "a where path must give one boolean, not {} values",
                            many.len()
                        ),
                    })
                }
            };
            if !keep {
                return Ok(Vec::new());
            }
        }
        scope.rows(&self.root, &root, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(view: Value, resource: Value) -> Result<Vec<Vec<Value>>, ViewError> {
        ViewDefinition::parse(&view)?.rows(&resource)
    }

    #[test]
    fn one_row_per_blood_pressure_component() {
        let bp = json!({"resourceType": "Observation", "id": "bp", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80, "code": "mm[Hg]"}}]});
        let view = json!({"resource": "Observation", "select": [
            {"column": [{"name": "id", "path": "getResourceKey()"}]},
            {"forEach": "component", "column": [
                {"name": "code", "path": "code.coding.where(system = 'http://loinc.org').code"},
                {"name": "value", "path": "value.ofType(Quantity).value"},
                {"name": "n", "path": "%rowIndex"}]}]});
        assert_eq!(
            rows(view, bp).unwrap(),
            vec![
                vec![
                    json!("Observation/bp"),
                    json!("8480-6"),
                    json!(120),
                    json!(0)
                ],
                vec![
                    json!("Observation/bp"),
                    json!("8462-4"),
                    json!(80),
                    json!(1)
                ],
            ]
        );
    }

    #[test]
    fn invalid_views_name_the_element() {
        let e = ViewDefinition::parse(&json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}]}, {"forEach": 1}]})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "select[1].forEach: must be a FHIRPath expression (a string)"
        );
        let e = ViewDefinition::parse(&json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "name.("}]}]})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("select[0].column[0].path: syntax"),
            "{e}"
        );
        let e = ViewDefinition::parse(&json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "gender"}]}]})).unwrap_err();
        assert!(e.to_string().contains("two columns are named a"), "{e}");
    }

    #[test]
    fn several_values_in_a_single_column_are_an_error_naming_column_and_resource() {
        let p = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "A"}, {"family": "B"}]});
        let e = rows(json!({"resource": "Patient", "select": [{"column": [{"name": "family", "path": "name.family"}]}]}), p).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("select[0].column[0] (family) on Patient/p: the path finds 2 values"),
            "{e}"
        );
    }
}
