//! Evaluation: collections of items, the FHIR model for navigation and types, the operators
//! with FHIRPath's empty-collection rules, and the functions.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::Decimal;
use serde_json::Value;
use std::str::FromStr;
use trialbridge_fhir::structure::{model_name as model, type_def};

use crate::parse::{BinOp, Expr};
use crate::{Error, Variables};

/// A JSON value of the data: borrowed from the resource being evaluated (navigation copies
/// nothing), or shared when evaluation made it (`type()`'s TypeInfo).
#[derive(Debug, Clone)]
pub enum Json<'a> {
    /// Part of the evaluated resource.
    Borrowed(&'a Value),
    /// Made during evaluation.
    Shared(Arc<Value>),
}

impl std::ops::Deref for Json<'_> {
    type Target = Value;
    fn deref(&self) -> &Value {
        match self {
            Json::Borrowed(v) => v,
            Json::Shared(v) => v,
        }
    }
}

impl PartialEq for Json<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<'a> Json<'a> {
    /// A part of this value with the same provenance: borrowed from a borrowed value,
    /// copied out of a made one (rare: only made values such as TypeInfo are copied).
    fn part(&self, f: impl FnOnce(&Value) -> Option<&Value>) -> Option<Json<'a>> {
        match self {
            Json::Borrowed(v) => f(v).map(Json::Borrowed),
            Json::Shared(v) => f(v).map(|x| Json::Shared(Arc::new(x.clone()))),
        }
    }
}

/// A FHIR element in the data, with its FHIR type.
#[derive(Debug, Clone, PartialEq)]
pub struct Node<'a> {
    /// The JSON value (an object, or a primitive's JSON value; `Null` for a primitive that
    /// has only extensions).
    pub value: Json<'a>,
    /// Its FHIR type (`HumanName`, `string`, `Patient`, `Observation.component`).
    pub ty: Cow<'static, str>,
    /// A primitive's `_name` sibling (id and extensions), if any.
    pub ext: Option<Json<'a>>,
}

/// One item of a collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// System.Boolean
    Bool(bool),
    /// System.Integer
    Int(i64),
    /// System.Decimal
    Dec(Decimal),
    /// System.String
    Str(String),
    /// System.Date (`2015-02-04`)
    Date(String),
    /// System.DateTime (`2015-02-04T14:34:28Z`)
    DateTime(String),
    /// System.Time (`14:34:28`)
    Time(String),
    /// System.Quantity (value, unit)
    Quantity(Decimal, String),
    /// An element of the data.
    Node(Node<'a>),
}

type R<'a> = Result<Vec<Item<'a>>, Error>;
/// What a per-item function makes of an item and its argument's value there.
type PerItem<'a> = dyn Fn(&Item<'a>, Vec<Item<'a>>) -> Result<Option<Item<'a>>, Error>;

fn exec(msg: impl Into<String>) -> Error {
    Error::Execution(msg.into())
}
fn semantic(msg: impl Into<String>) -> Error {
    Error::Semantic(msg.into())
}

const INTEGERS: &[&str] = &["integer", "positiveInt", "unsignedInt", "integer64"];

impl<'a> Item<'a> {
    /// A resource as an item (the root of an evaluation).
    pub fn resource(resource: &'a Value) -> Item<'a> {
        root_item(resource)
    }

    /// The system value of a FHIR primitive (a `string` node is a String, ...); other items
    /// as they are.
    pub fn system(&self) -> Item<'a> {
        let Item::Node(n) = self else {
            return self.clone();
        };
        match (&*n.value, &*n.ty) {
            (Value::Bool(b), _) => Item::Bool(*b),
            (Value::Number(x), t) if INTEGERS.contains(&t) => {
                x.as_i64().map_or_else(|| self.clone(), Item::Int)
            }
            (Value::Number(x), _) => Decimal::from_str(&x.to_string())
                .or_else(|_| Decimal::from_scientific(&x.to_string()))
                .map_or_else(|_| self.clone(), Item::Dec),
            (Value::String(s), "date") => Item::Date(s.clone()),
            (Value::String(s), "dateTime" | "instant") if s.contains('T') => {
                Item::DateTime(s.clone())
            }
            (Value::String(s), "dateTime") => Item::Date(s.clone()),
            (Value::String(s), "time") => Item::Time(s.clone()),
            (Value::String(s), _) => Item::Str(s.clone()),
            // A Quantity element compares as a System.Quantity.
            (Value::Object(_), "Quantity" | "Age" | "Count" | "Distance" | "Duration") => self
                .quantity()
                .map_or_else(|| self.clone(), |(v, u)| Item::Quantity(v, u)),
            _ => self.clone(),
        }
    }

    fn quantity(&self) -> Option<(Decimal, String)> {
        match self {
            Item::Quantity(v, u) => Some((*v, u.clone())),
            Item::Node(n) if n.value.is_object() && n.value.get("value").is_some() => {
                let v = n.value.get("value")?;
                let v = Decimal::from_str(&v.to_string()).ok()?;
                let u = n
                    .value
                    .get("code")
                    .or_else(|| n.value.get("unit"))
                    .and_then(Value::as_str)
                    .unwrap_or("1");
                Some((v, u.to_string()))
            }
            Item::Int(i) => Some((Decimal::from(*i), "1".into())),
            Item::Dec(d) => Some((*d, "1".into())),
            _ => None,
        }
    }

    fn type_names(&self) -> Vec<String> {
        match self {
            Item::Bool(_) => vec!["System.Boolean".into()],
            Item::Int(_) => vec!["System.Integer".into()],
            Item::Dec(_) => vec!["System.Decimal".into()],
            Item::Str(_) => vec!["System.String".into()],
            Item::Date(_) => vec!["System.Date".into()],
            Item::DateTime(_) => vec!["System.DateTime".into()],
            Item::Time(_) => vec!["System.Time".into()],
            Item::Quantity(..) => vec!["System.Quantity".into()],
            Item::Node(n) => {
                let mut out = vec![format!("FHIR.{}", n.ty)];
                if matches!(
                    &*n.ty,
                    "Age" | "Count" | "Distance" | "Duration" | "MoneyQuantity" | "SimpleQuantity"
                ) {
                    out.push("FHIR.Quantity".into());
                }
                if n.value.get("resourceType").is_some() {
                    if !matches!(&*n.ty, "Bundle" | "Binary" | "Parameters") {
                        out.push("FHIR.DomainResource".into());
                    }
                    out.push("FHIR.Resource".into());
                } else {
                    out.push("FHIR.Element".into());
                }
                out
            }
        }
    }

    /// Whether the item is of type `name` (`Quantity`, `FHIR.Patient`, `System.String`).
    fn is_type(&self, name: &str) -> bool {
        let names = self.type_names();
        if name.contains('.') {
            return names.iter().any(|n| n == name);
        }
        // An unqualified name: FHIR types first, then System types.
        let fhir = format!("FHIR.{name}");
        if names.contains(&fhir) {
            return true;
        }
        let system = format!("System.{name}");
        !matches!(self, Item::Node(_)) && names.contains(&system)
    }
}

/// The name of a type as a static string where the model knows it (the usual case: no
/// allocation per node).
fn type_name(ty: &str) -> Cow<'static, str> {
    match type_def(ty) {
        Some(d) => Cow::Borrowed(d.name),
        None => Cow::Owned(ty.to_string()),
    }
}

fn node<'a>(value: Json<'a>, ty: &'static str, ext: Option<Json<'a>>) -> Item<'a> {
    let ty = if ty == "Resource" {
        type_name(
            value
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("Resource"),
        )
    } else {
        Cow::Borrowed(ty)
    };
    Item::Node(Node { value, ty, ext })
}

/// A made value (not part of the evaluated resource) as a node.
fn made<'a>(value: Value, ty: &'static str) -> Item<'a> {
    node(Json::Shared(Arc::new(value)), ty, None)
}

/// A JSON value's type when the model does not say (an object of unknown type, a choice
/// suffix).
fn guess(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "integer",
        Value::Number(_) => "decimal",
        Value::String(_) => "string",
        Value::Object(m) if m.contains_key("resourceType") => "Resource",
        _ => "Element",
    }
}

static NULL: Value = Value::Null;

/// The items of member `name` of `parent` (with its `_name` sibling), typed `ty`.
fn push_values<'a>(parent: &Json<'a>, name: &str, ty: &'static str, out: &mut Vec<Item<'a>>) {
    let under = format!("_{name}");
    let Some(v) = parent.part(|p| p.get(name)) else {
        if let Some(e) = parent.part(|p| p.get(&under)) {
            if let Value::Array(a) = &*e {
                for i in 0..a.len() {
                    let x = e.part(|e| e.get(i)).expect("index in range");
                    if !x.is_null() {
                        out.push(node(Json::Borrowed(&NULL), ty, Some(x)));
                    }
                }
            } else {
                out.push(node(Json::Borrowed(&NULL), ty, Some(e)));
            }
        }
        return;
    };
    let ext = parent.part(|p| p.get(&under));
    match &*v {
        Value::Array(a) => {
            for i in 0..a.len() {
                let e = ext
                    .as_ref()
                    .and_then(|e| e.part(|e| e.get(i)))
                    .filter(|e| !e.is_null());
                let x = v.part(|v| v.get(i)).expect("index in range");
                if !x.is_null() || e.is_some() {
                    out.push(node(x, ty, e));
                }
            }
        }
        Value::Null => {
            if let Some(e) = ext {
                out.push(node(Json::Borrowed(&NULL), ty, Some(e)));
            }
        }
        _ => out.push(node(v, ty, ext)),
    }
}

/// The children named `name` of a node (choice elements by their base name). A name the
/// node's type does not define is an error, as is a choice branch by its JSON name
/// (`valueQuantity`: FHIRPath says `value.ofType(Quantity)`).
fn children<'a>(n: &Node<'a>, name: &str, out: &mut Vec<Item<'a>>) -> Result<(), Error> {
    let Value::Object(m) = &*n.value else {
        return Ok(());
    };
    let def = type_def(model(&n.ty));
    if let Some(e) = def.and_then(|t| t.element(name)) {
        if !e.choice.is_empty() {
            return Err(semantic(format!(
                "{}.{name} is a choice branch: FHIRPath names it {}.{}.ofType({})",
                n.ty, n.ty, e.choice, e.ty.name
            )));
        }
        push_values(&n.value, name, model(e.ty.name), out);
        return Ok(());
    }
    if let Some(t) = def {
        let mut known = false;
        for e in t.elements.iter().filter(|e| e.choice == name) {
            known = true;
            push_values(&n.value, e.name, model(e.ty.name), out);
        }
        if !known {
            return Err(Error::NoSuchElement {
                ty: n.ty.to_string(),
                name: name.to_string(),
            });
        }
        return Ok(());
    }
    // No model for this node (unknown type): the member itself, or a choice by its suffix.
    if let Some(v) = m.get(name) {
        let ty = match v {
            Value::Array(a) => a.first().map_or("Element", guess),
            x => guess(x),
        };
        push_values(&n.value, name, ty, out);
        return Ok(());
    }
    for k in m.keys() {
        if let Some(suffix) = k.strip_prefix(name) {
            if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                let lower = suffix[..1].to_ascii_lowercase() + &suffix[1..];
                let ty = type_def(suffix)
                    .or_else(|| type_def(&lower))
                    .map_or("Element", |d| d.name);
                push_values(&n.value, k, ty, out);
            }
        }
    }
    Ok(())
}

fn all_children<'a>(n: &Node<'a>, out: &mut Vec<Item<'a>>) {
    let Value::Object(m) = &*n.value else {
        return;
    };
    let def = type_def(model(&n.ty));
    for (k, v) in m {
        if k.starts_with('_') || k == "resourceType" {
            continue;
        }
        let ty = def
            .and_then(|t| t.element(k))
            .map_or_else(|| guess(v), |e| model(e.ty.name));
        push_values(&n.value, k, ty, out);
    }
}

struct Env<'e, 'a> {
    root: &'e Item<'a>,
    vars: &'e Variables<'a>,
    this: Option<Item<'a>>,
    index: Option<usize>,
    total: Option<Vec<Item<'a>>>,
}

impl<'a> Env<'_, 'a> {
    fn with(&self, this: Item<'a>, index: usize) -> Env<'_, 'a> {
        Env {
            root: self.root,
            vars: self.vars,
            this: Some(this),
            index: Some(index),
            total: self.total.clone(),
        }
    }
}

pub(crate) fn evaluate<'a>(e: &Expr, resource: &'a Value, vars: &Variables<'a>) -> R<'a> {
    let root = root_item(resource);
    let env = Env {
        root: &root,
        vars,
        this: Some(root.clone()),
        index: None,
        total: None,
    };
    eval(e, std::slice::from_ref(&root), &env)
}

/// Evaluates with `focus` as the context (`$this`, `%context`) inside the resource `root`
/// (`%resource`): how an invariant of an element is evaluated.
pub(crate) fn evaluate_at<'a>(
    e: &Expr,
    focus: &Item<'a>,
    root: &Item<'a>,
    vars: &Variables<'a>,
) -> R<'a> {
    let env = Env {
        root,
        vars,
        this: Some(focus.clone()),
        index: None,
        total: None,
    };
    eval(e, std::slice::from_ref(focus), &env)
}

/// Evaluates a parsed expression at `focus` inside `root`.
pub(crate) fn evaluate_expr<'a>(
    e: &crate::Expression,
    focus: &Item<'a>,
    root: &Item<'a>,
    vars: &Variables<'a>,
) -> R<'a> {
    evaluate_at(e.expr(), focus, root, vars)
}

/// A resource as the root item of an evaluation.
pub(crate) fn root_item(resource: &Value) -> Item<'_> {
    node(Json::Borrowed(resource), "Resource", None)
}

/// An element of a resource as an item of type `ty` (the invariant walk's focus).
pub(crate) fn element_item<'a>(value: &'a Value, ty: &'static str) -> Item<'a> {
    node(Json::Borrowed(value), model(ty), None)
}

fn singleton<'c, 'a>(c: &'c [Item<'a>], what: &str) -> Result<Option<&'c Item<'a>>, Error> {
    match c.len() {
        0 => Ok(None),
        1 => Ok(Some(&c[0])),
        n => Err(exec(format!(
            "{what} needs one item, the collection has {n}"
        ))),
    }
}

/// A collection as a boolean (FHIRPath "singleton evaluation of collections").
fn truth(c: &[Item]) -> Result<Option<bool>, Error> {
    match singleton(c, "a boolean")? {
        None => Ok(None),
        Some(i) => match i.system() {
            Item::Bool(b) => Ok(Some(b)),
            _ => Ok(Some(true)),
        },
    }
}

fn boolean<'a>(b: Option<bool>) -> Vec<Item<'a>> {
    b.map(|b| vec![Item::Bool(b)]).unwrap_or_default()
}

fn type_arg(e: &Expr) -> Result<String, Error> {
    fn name(e: &Expr) -> Result<String, Error> {
        Ok(match e {
            Expr::Member(None, n) => n.clone(),
            Expr::Member(Some(q), n) => format!("{}.{n}", name(q)?),
            Expr::Str(s) => s.clone(),
            other => return Err(semantic(format!("{other:?} is not a type name"))),
        })
    }
    let n = name(e)?;
    known_type(&n)?;
    Ok(n)
}

/// An error unless `name` names a System type or an R4 type.
fn known_type(name: &str) -> Result<(), Error> {
    const SYSTEM: &[&str] = &[
        "Boolean", "Integer", "Decimal", "String", "Date", "DateTime", "Time", "Quantity",
    ];
    let known = match name.split_once('.') {
        // A System type that does not exist is simply not the item's type.
        Some(("System", _)) => true,
        Some(("FHIR", t)) => type_def(model(t)).is_some(),
        Some(_) => false,
        None => SYSTEM.contains(&name) || type_def(model(name)).is_some(),
    };
    if known {
        Ok(())
    } else {
        Err(semantic(format!("'{name}' is not a type")))
    }
}

fn eval<'a>(e: &Expr, focus: &[Item<'a>], env: &Env<'_, 'a>) -> R<'a> {
    Ok(match e {
        Expr::Empty => vec![],
        Expr::Bool(b) => vec![Item::Bool(*b)],
        Expr::Int(i) => vec![Item::Int(*i)],
        Expr::Dec(d) => vec![Item::Dec(*d)],
        Expr::Str(s) => vec![Item::Str(s.clone())],
        Expr::Date(d) => vec![Item::Date(d.clone())],
        Expr::DateTime(d) => vec![Item::DateTime(d.clone())],
        Expr::Time(t) => vec![Item::Time(t.clone())],
        Expr::Quantity(v, u) => vec![Item::Quantity(*v, u.clone())],
        Expr::This => env.this.clone().into_iter().collect(),
        Expr::Index => env
            .index
            .map(|i| vec![Item::Int(i as i64)])
            .unwrap_or_default(),
        Expr::Total => env.total.clone().unwrap_or_default(),
        Expr::Var(v) => variable(v, env)?,
        Expr::Member(None, name) => {
            // A type name at the start of a path names the context itself.
            if let [Item::Node(n)] = focus {
                // The resource's own type, or one it specialises (`Resource.id` on any
                // resource, `DomainResource.text` on all but Bundle, Binary, Parameters).
                let is_resource = n.value.get("resourceType").is_some();
                let domain = !matches!(&*n.ty, "Bundle" | "Binary" | "Parameters");
                if is_resource
                    && (n.ty == *name || name == "Resource" || (name == "DomainResource" && domain))
                {
                    return Ok(focus.to_vec());
                }
                if n.value.get("resourceType").is_some()
                    && name.starts_with(|c: char| c.is_ascii_uppercase())
                    && trialbridge_fhir::resource_type::all().contains(&name.as_str())
                {
                    return Ok(vec![]);
                }
            }
            member(focus, name)?
        }
        Expr::Member(Some(base), name) => member(&eval(base, focus, env)?, name)?,
        Expr::Indexer(base, i) => {
            let c = eval(base, focus, env)?;
            let i = eval(i, focus, env)?;
            match singleton(&i, "an index")?.map(Item::system) {
                Some(Item::Int(i)) if i >= 0 => c.into_iter().nth(i as usize).into_iter().collect(),
                Some(Item::Int(_)) | None => vec![],
                Some(other) => return Err(exec(format!("{other:?} is not an index"))),
            }
        }
        Expr::Negate(x) => {
            let c = eval(x, focus, env)?;
            match singleton(&c, "unary minus")?.map(Item::system) {
                None => vec![],
                Some(Item::Int(i)) => vec![Item::Int(-i)],
                Some(Item::Dec(d)) if d.is_zero() => vec![Item::Dec(d)],
                Some(Item::Dec(d)) => vec![Item::Dec(-d)],
                Some(Item::Quantity(v, u)) => vec![Item::Quantity(-v, u)],
                Some(other) => return Err(exec(format!("cannot negate {other:?}"))),
            }
        }
        Expr::TypeOp(is, x, ty) => {
            known_type(ty)?;
            let c = eval(x, focus, env)?;
            match singleton(&c, if *is { "is" } else { "as" })? {
                None => vec![],
                Some(i) if *is => vec![Item::Bool(i.is_type(ty))],
                Some(i) => {
                    if i.is_type(ty) {
                        vec![i.clone()]
                    } else {
                        vec![]
                    }
                }
            }
        }
        Expr::Binary(op, a, b) => binary(*op, a, b, focus, env)?,
        Expr::Call(base, name, args) => {
            let input = match base {
                Some(b) => eval(b, focus, env)?,
                None => focus.to_vec(),
            };
            call(name, &input, args, env)?
        }
    })
}

/// `name` on every node of the focus. A name no node's type defines is an error (a typo in
/// an expression); in a mixed collection (`descendants()`) the nodes that define it answer.
fn member<'a>(focus: &[Item<'a>], name: &str) -> R<'a> {
    let mut out = Vec::new();
    let (mut defined, mut first_error) = (false, None);
    for i in focus {
        if let Item::Node(n) = i {
            match children(n, name, &mut out) {
                Ok(()) => defined = true,
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
    }
    match first_error {
        Some(e) if !defined => Err(e),
        _ => Ok(out),
    }
}

fn variable<'a>(v: &str, env: &Env<'_, 'a>) -> R<'a> {
    if let Some(val) = env.vars.get(v) {
        return Ok(val.clone());
    }
    Ok(match v {
        "resource" | "context" | "rootResource" => vec![env.root.clone()],
        "ucum" => vec![Item::Str("http://unitsofmeasure.org".into())],
        "sct" => vec![Item::Str("http://snomed.info/sct".into())],
        "loinc" => vec![Item::Str("http://loinc.org".into())],
        v if v.starts_with("vs-") => vec![Item::Str(format!(
            "http://hl7.org/fhir/ValueSet/{}",
            &v[3..]
        ))],
        v if v.starts_with("ext-") => vec![Item::Str(format!(
            "http://hl7.org/fhir/StructureDefinition/{}",
            &v[4..]
        ))],
        other => return Err(semantic(format!("%{other} is not defined"))),
    })
}

// ---- equality and order ----

/// Components of a date, dateTime or time: numbers down to whole seconds, the seconds'
/// fraction folded into the seconds, and the offset in minutes.
#[derive(Debug)]
struct Moment {
    parts: Vec<Decimal>,
    offset: Option<i64>,
    time_only: bool,
}

fn moment(s: &str, time_only: bool) -> Option<Moment> {
    let (body, offset) = if let Some(b) = s.strip_suffix('Z') {
        (b, Some(0))
    } else {
        let cut = s
            .char_indices()
            .skip(if time_only { 0 } else { 10 })
            .find(|(_, c)| *c == '+' || *c == '-')
            .map(|(i, _)| i);
        match cut {
            Some(i) if s.contains('T') || time_only => {
                let z = &s[i..];
                let sign = if z.starts_with('-') { -1 } else { 1 };
                let (h, m) = z[1..].split_once(':')?;
                (
                    &s[..i],
                    Some(sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?)),
                )
            }
            _ => (s, None),
        }
    };
    let mut parts = Vec::new();
    let (date, time) = if time_only {
        ("", Some(body))
    } else {
        match body.split_once('T') {
            Some((d, t)) => (d, (!t.is_empty()).then_some(t)),
            None => (body, None),
        }
    };
    if !time_only {
        for p in date.split('-') {
            parts.push(Decimal::from_str(p).ok()?);
        }
    }
    if let Some(t) = time {
        for p in t.split(':') {
            parts.push(Decimal::from_str(p).ok()?);
        }
    }
    Some(Moment {
        parts,
        offset,
        time_only,
    })
}

/// Shifts a full dateTime to UTC by its offset (only when it has minutes: a zone on an hour
/// precision is rare and left alone).
fn utc(m: &mut Moment) {
    let Some(off) = m.offset else { return };
    if m.time_only || m.parts.len() < 5 || off == 0 {
        return;
    }
    let to_i = |d: Decimal| d.to_i64().unwrap_or(0);
    let (y, mo, d) = (to_i(m.parts[0]), to_i(m.parts[1]), to_i(m.parts[2]));
    let minutes = days_from_civil(y, mo, d) * 1440 + to_i(m.parts[3]) * 60 + to_i(m.parts[4]) - off;
    let (days, rem) = (minutes.div_euclid(1440), minutes.rem_euclid(1440));
    let (y, mo, d) = civil_from_days(days);
    m.parts[0] = Decimal::from(y);
    m.parts[1] = Decimal::from(mo);
    m.parts[2] = Decimal::from(d);
    m.parts[3] = Decimal::from(rem / 60);
    m.parts[4] = Decimal::from(rem % 60);
    m.offset = Some(0);
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Compares two moments: `None` when their precisions differ and the shared part is equal.
fn compare_moments(a: &str, b: &str, time_only: bool) -> Option<Ordering> {
    let (mut x, mut y) = (moment(a, time_only)?, moment(b, time_only)?);
    if x.offset.is_some() && y.offset.is_some() {
        utc(&mut x);
        utc(&mut y);
    } else if x.offset.is_some() != y.offset.is_some() && x.parts.len() > 3 && y.parts.len() > 3 {
        // A time with a zone and one without: which instant the second is, is unknown.
        return None;
    }
    let n = x.parts.len().min(y.parts.len());
    for i in 0..n {
        match x.parts[i].cmp(&y.parts[i]) {
            Ordering::Equal => {}
            o => return Some(o),
        }
    }
    // Seconds and milliseconds are one precision: 10:30 = 10:30:00 is unknown, but
    // 10:30:00 = 10:30:00.000 is true (both folded into seconds).
    (x.parts.len() == y.parts.len()).then_some(Ordering::Equal)
}

fn unit_norm(u: &str) -> &str {
    match u {
        // A calendar year or month is not UCUM's `a` or `mo` (mean lengths).
        "year" | "years" => "year",
        "month" | "months" => "month",
        "week" | "weeks" => "wk",
        "day" | "days" => "d",
        "hour" | "hours" => "h",
        "minute" | "minutes" => "min",
        "second" | "seconds" => "s",
        "millisecond" | "milliseconds" => "ms",
        u => u,
    }
}

/// A UCUM unit of the few dimensions clinical data uses, as (factor to the base unit, base).
/// Calendar durations of fixed length count as their UCUM units; `month`/`year` and UCUM's
/// `mo`/`a` have no fixed length and are not converted.
fn canonical(u: &str) -> Option<(Decimal, &'static str)> {
    let d = |s: &str| Decimal::from_str(s).ok();
    Some(match unit_norm(u) {
        "g" => (Decimal::ONE, "g"),
        "mg" => (d("0.001")?, "g"),
        "ug" => (d("0.000001")?, "g"),
        "kg" => (d("1000")?, "g"),
        "[lb_av]" => (d("453.59237")?, "g"),
        "m" => (Decimal::ONE, "m"),
        "cm" => (d("0.01")?, "m"),
        "mm" => (d("0.001")?, "m"),
        "km" => (d("1000")?, "m"),
        "[in_i]" => (d("0.0254")?, "m"),
        "s" => (Decimal::ONE, "s"),
        "ms" => (d("0.001")?, "s"),
        "min" => (d("60")?, "s"),
        "h" => (d("3600")?, "s"),
        "d" => (d("86400")?, "s"),
        "wk" => (d("604800")?, "s"),
        _ => return None,
    })
}

/// Two quantities in one unit (the first one's, converted through UCUM), if they have one.
fn same_unit(a: (Decimal, String), b: (Decimal, String)) -> Option<(Decimal, Decimal)> {
    if unit_norm(&a.1) == unit_norm(&b.1) {
        return Some((a.0, b.0));
    }
    let ((fa, da), (fb, db)) = (canonical(&a.1)?, canonical(&b.1)?);
    (da == db).then(|| (a.0, b.0 * fb / fa))
}

fn equal(a: &Item, b: &Item) -> Option<bool> {
    let (a, b) = (a.system(), b.system());
    match (&a, &b) {
        (Item::Int(x), Item::Int(y)) => Some(x == y),
        (Item::Int(_) | Item::Dec(_), Item::Int(_) | Item::Dec(_)) => Some(num(&a)? == num(&b)?),
        (Item::Str(x), Item::Str(y)) => Some(x == y),
        (Item::Bool(x), Item::Bool(y)) => Some(x == y),
        (Item::Date(x) | Item::DateTime(x), Item::Date(y) | Item::DateTime(y)) => {
            compare_moments(x, y, false).map(|o| o == Ordering::Equal)
        }
        (Item::Time(x), Item::Time(y)) => compare_moments(x, y, true).map(|o| o == Ordering::Equal),
        (Item::Quantity(..), _) | (_, Item::Quantity(..)) => {
            let (qa, qb) = (a.quantity()?, b.quantity()?);
            match (canonical(&qa.1), canonical(&qb.1)) {
                (Some((_, da)), Some((_, db))) if da != db => Some(false),
                _ => same_unit(qa, qb).map(|(x, y)| x == y),
            }
        }
        (Item::Node(x), Item::Node(y)) => Some(x.value == y.value),
        _ => Some(false),
    }
}

fn num(i: &Item) -> Option<Decimal> {
    match i {
        Item::Int(x) => Some(Decimal::from(*x)),
        Item::Dec(d) => Some(*d),
        _ => None,
    }
}

fn equivalent(a: &Item, b: &Item) -> bool {
    let (a, b) = (a.system(), b.system());
    match (&a, &b) {
        (Item::Str(x), Item::Str(y)) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(x) == norm(y)
        }
        (Item::Int(_) | Item::Dec(_), Item::Int(_) | Item::Dec(_)) => {
            let (x, y) = (num(&a).unwrap(), num(&b).unwrap());
            let scale = x.scale().min(y.scale());
            x.round_dp(scale) == y.round_dp(scale)
        }
        (Item::Date(x) | Item::DateTime(x), Item::Date(y) | Item::DateTime(y)) => {
            compare_moments(x, y, false) == Some(Ordering::Equal)
        }
        (Item::Quantity(..), Item::Quantity(..)) => match (a.quantity(), b.quantity()) {
            (Some(qa), Some(qb)) => match same_unit(qa, qb) {
                Some((x, y)) => {
                    let scale = x.scale().min(y.scale());
                    x.round_dp(scale) == y.round_dp(scale)
                }
                None => false,
            },
            _ => false,
        },
        _ => equal(&a, &b) == Some(true),
    }
}

fn order(a: &Item, b: &Item) -> Result<Option<Ordering>, Error> {
    let (a, b) = (a.system(), b.system());
    Ok(match (&a, &b) {
        (Item::Int(_) | Item::Dec(_), Item::Int(_) | Item::Dec(_)) => {
            num(&a).zip(num(&b)).map(|(x, y)| x.cmp(&y))
        }
        (Item::Str(x), Item::Str(y)) => Some(x.cmp(y)),
        (Item::Date(x) | Item::DateTime(x), Item::Date(y) | Item::DateTime(y)) => {
            compare_moments(x, y, false)
        }
        (Item::Time(x), Item::Time(y)) => compare_moments(x, y, true),
        (Item::Quantity(..), _) | (_, Item::Quantity(..)) => match (a.quantity(), b.quantity()) {
            (Some(x), Some(y)) => same_unit(x, y).map(|(v1, v2)| v1.cmp(&v2)),
            _ => None,
        },
        _ => return Err(exec(format!("{a:?} and {b:?} cannot be compared"))),
    })
}

fn contains_item(c: &[Item], x: &Item) -> bool {
    c.iter().any(|y| equal(y, x) == Some(true))
}

fn distinct(c: Vec<Item<'_>>) -> Vec<Item<'_>> {
    let mut out: Vec<Item> = Vec::new();
    for i in c {
        if !contains_item(&out, &i) {
            out.push(i);
        }
    }
    out
}

// ---- operators ----

fn binary<'a>(op: BinOp, a: &Expr, b: &Expr, focus: &[Item<'a>], env: &Env<'_, 'a>) -> R<'a> {
    let l = eval(a, focus, env)?;
    // Short circuits of the logical operators still follow the three-valued tables.
    match op {
        BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies => {
            let x = truth(&l)?;
            if (op == BinOp::And && x == Some(false)) || (op == BinOp::Or && x == Some(true)) {
                return Ok(boolean(x));
            }
            if op == BinOp::Implies && x == Some(false) {
                return Ok(boolean(Some(true)));
            }
            let y = truth(&eval(b, focus, env)?)?;
            return Ok(boolean(match op {
                BinOp::And => match (x, y) {
                    (Some(true), Some(true)) => Some(true),
                    (_, Some(false)) => Some(false),
                    _ => None,
                },
                BinOp::Or => match (x, y) {
                    (Some(false), Some(false)) => Some(false),
                    (_, Some(true)) => Some(true),
                    _ => None,
                },
                BinOp::Xor => x.zip(y).map(|(x, y)| x != y),
                _ => match (x, y) {
                    (Some(true), y) => y,
                    (None, Some(true)) => Some(true),
                    _ => None,
                },
            }));
        }
        _ => {}
    }
    let r = eval(b, focus, env)?;
    Ok(match op {
        BinOp::Union => distinct(l.into_iter().chain(r).collect()),
        BinOp::Eq | BinOp::Ne => {
            if l.is_empty() || r.is_empty() {
                return Ok(vec![]);
            }
            let eq = if l.len() != r.len() {
                Some(false)
            } else {
                let mut all = Some(true);
                for (x, y) in l.iter().zip(&r) {
                    match equal(x, y) {
                        Some(true) => {}
                        Some(false) => {
                            all = Some(false);
                            break;
                        }
                        None => all = None,
                    }
                }
                all
            };
            boolean(if op == BinOp::Eq { eq } else { eq.map(|b| !b) })
        }
        BinOp::Equiv | BinOp::NotEquiv => {
            let eq = if l.is_empty() && r.is_empty() {
                true
            } else if l.len() != r.len() {
                false
            } else {
                l.iter().all(|x| r.iter().any(|y| equivalent(x, y)))
            };
            vec![Item::Bool(if op == BinOp::Equiv { eq } else { !eq })]
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let (Some(x), Some(y)) = (
                singleton(&l, "a comparison")?,
                singleton(&r, "a comparison")?,
            ) else {
                return Ok(vec![]);
            };
            boolean(order(x, y)?.map(|o| match op {
                BinOp::Lt => o == Ordering::Less,
                BinOp::Le => o != Ordering::Greater,
                BinOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }))
        }
        BinOp::In | BinOp::Contains => {
            let (item, coll) = if op == BinOp::In { (&l, &r) } else { (&r, &l) };
            match singleton(item, "in/contains")? {
                None => vec![],
                Some(x) => vec![Item::Bool(contains_item(coll, x))],
            }
        }
        BinOp::Concat => {
            let s = |c: &[Item]| -> Result<String, Error> {
                Ok(match singleton(c, "&")?.map(Item::system) {
                    None => String::new(),
                    Some(Item::Str(s)) => s,
                    Some(other) => to_string(&other).unwrap_or_default(),
                })
            };
            vec![Item::Str(s(&l)? + &s(&r)?)]
        }
        _ => {
            let (Some(x), Some(y)) = (singleton(&l, "arithmetic")?, singleton(&r, "arithmetic")?)
            else {
                return Ok(vec![]);
            };
            arithmetic(op, &x.system(), &y.system())?
        }
    })
}

fn arithmetic<'a>(op: BinOp, x: &Item<'a>, y: &Item<'a>) -> R<'a> {
    Ok(match (x, y) {
        (Item::Int(a), Item::Int(b)) => match op {
            BinOp::Add => a.checked_add(*b).map(Item::Int).into_iter().collect(),
            BinOp::Sub => a.checked_sub(*b).map(Item::Int).into_iter().collect(),
            BinOp::Mul => a.checked_mul(*b).map(Item::Int).into_iter().collect(),
            BinOp::Div if *b == 0 => vec![],
            BinOp::Div => Decimal::from(*a)
                .checked_div(Decimal::from(*b))
                .map(|d| Item::Dec(d.normalize()))
                .into_iter()
                .collect(),
            BinOp::IntDiv if *b == 0 => vec![],
            BinOp::IntDiv => vec![Item::Int(a / b)],
            BinOp::Mod if *b == 0 => vec![],
            BinOp::Mod => vec![Item::Int(a % b)],
            _ => vec![],
        },
        (Item::Int(_) | Item::Dec(_), Item::Int(_) | Item::Dec(_)) => {
            let (a, b) = (num(x).unwrap(), num(y).unwrap());
            match op {
                BinOp::Add => a.checked_add(b).map(Item::Dec).into_iter().collect(),
                BinOp::Sub => a.checked_sub(b).map(Item::Dec).into_iter().collect(),
                BinOp::Mul => a.checked_mul(b).map(Item::Dec).into_iter().collect(),
                BinOp::Div | BinOp::IntDiv | BinOp::Mod if b.is_zero() => vec![],
                BinOp::Div => a.checked_div(b).map(Item::Dec).into_iter().collect(),
                BinOp::IntDiv => (a / b)
                    .trunc()
                    .to_i64()
                    .map(Item::Int)
                    .into_iter()
                    .collect(),
                BinOp::Mod => vec![Item::Dec(a % b)],
                _ => vec![],
            }
        }
        (Item::Str(a), Item::Str(b)) if op == BinOp::Add => vec![Item::Str(format!("{a}{b}"))],
        (Item::Quantity(a, u), Item::Quantity(b, v)) if matches!(op, BinOp::Add | BinOp::Sub) => {
            match same_unit((*a, u.clone()), (*b, v.clone())) {
                Some((a, b)) => {
                    vec![Item::Quantity(
                        if op == BinOp::Add { a + b } else { a - b },
                        u.clone(),
                    )]
                }
                None => vec![],
            }
        }
        (Item::Quantity(a, u), Item::Quantity(b, v)) if matches!(op, BinOp::Mul | BinOp::Div) => {
            // In the base units: cm * m = m2, g / m = g/m, m / m = 1.
            match (canonical(u), canonical(v)) {
                (Some((fa, da)), Some((fb, db))) => {
                    let (x, y) = (a * fa, b * fb);
                    if op == BinOp::Mul {
                        let unit = if da == db {
                            format!("{da}2")
                        } else {
                            format!("{da}.{db}")
                        };
                        vec![Item::Quantity(x * y, unit)]
                    } else if y.is_zero() {
                        vec![]
                    } else {
                        let unit = if da == db {
                            "1".to_string()
                        } else {
                            format!("{da}/{db}")
                        };
                        vec![Item::Quantity(x / y, unit)]
                    }
                }
                _ => vec![],
            }
        }
        (Item::Date(d) | Item::DateTime(d), Item::Quantity(v, u))
            if matches!(op, BinOp::Add | BinOp::Sub) =>
        {
            let v = if op == BinOp::Sub { -*v } else { *v };
            // Calendar arithmetic takes calendar durations and the UCUM codes that are exact
            // (d, wk, h, min, s, ms); UCUM's `a` and `mo` are averages, not calendar units.
            if !crate::parse::CALENDAR.contains(&u.as_str())
                && !UCUM_DURATIONS.contains(&u.as_str())
            {
                return Err(exec(format!("a date cannot be moved by '{u}'")));
            }
            shift(d, v, u)
                .map(|s| {
                    if matches!(x, Item::Date(_)) {
                        Item::Date(s)
                    } else {
                        Item::DateTime(s)
                    }
                })
                .into_iter()
                .collect()
        }
        (a, b) => {
            return Err(exec(format!(
                "{a:?} and {b:?} cannot be combined with {op:?}"
            )))
        }
    })
}

/// The UCUM codes of fixed-length durations a date may be moved by (besides the calendar
/// words).
const UCUM_DURATIONS: &[&str] = &["wk", "d", "h", "min", "s", "ms"];

/// A dateTime moved by a time quantity (hours, minutes, seconds, milliseconds) on its wall
/// clock, written at the precision it had.
fn shift_time(d: &str, n: i64, unit: &str) -> Option<String> {
    let (date, rest) = d.split_once('T')?;
    let zone_at = rest.find(['+', '-', 'Z']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    let p: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if p.len() < 3 {
        return None;
    }
    let t: Vec<&str> = time.split(':').collect();
    let h: i64 = t.first()?.parse().ok()?;
    let mi: i64 = t.get(1).map_or(Some(0), |x| x.parse().ok())?;
    let (sec, frac) = match t.get(2) {
        Some(x) => match x.split_once('.') {
            Some((a, b)) => (a.parse::<i64>().ok()?, Some(b.len())),
            None => (x.parse::<i64>().ok()?, None),
        },
        None => (0, None),
    };
    let ms_in = t
        .get(2)
        .and_then(|x| x.split_once('.'))
        .map_or(0, |(_, b)| {
            format!("{b:0<3}")[..3].parse::<i64>().unwrap_or(0)
        });
    let factor = match unit_norm(unit) {
        "h" => 3_600_000,
        "min" => 60_000,
        "s" => 1000,
        _ => 1,
    };
    let total = ((days_from_civil(p[0], p[1], p[2]) * 86_400 + h * 3600 + mi * 60 + sec) * 1000
        + ms_in)
        .checked_add(n.checked_mul(factor)?)?;
    let (days, ms) = (total.div_euclid(86_400_000), total.rem_euclid(86_400_000));
    let (y, m, dd) = civil_from_days(days);
    let (h, mi, sec, ms) = (
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000,
    );
    let mut out = format!("{y:04}-{m:02}-{dd:02}T{h:02}");
    if t.len() > 1 {
        out.push_str(&format!(":{mi:02}"));
    }
    if t.len() > 2 {
        out.push_str(&format!(":{sec:02}"));
        if frac.is_some() {
            out.push_str(&format!(".{ms:03}"));
        }
    }
    out.push_str(zone);
    Some(out)
}

/// A date or dateTime moved by a calendar quantity; the day of the month is clamped (Jan 31
/// + 1 month = Feb 28); a fractional quantity is truncated.
fn shift(d: &str, v: Decimal, unit: &str) -> Option<String> {
    let n = v.trunc().to_i64()?;
    if matches!(unit_norm(unit), "h" | "min" | "s" | "ms") {
        return shift_time(d, n, unit);
    }
    let (date, rest) = match d.find('T') {
        Some(i) => (&d[..i], &d[i..]),
        None => (d, ""),
    };
    let p: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (mut y, mut m, mut day) = (p[0], *p.get(1).unwrap_or(&1), *p.get(2).unwrap_or(&1));
    match unit_norm(unit) {
        "year" => y += n,
        "month" => {
            let t = y * 12 + (m - 1) + n;
            y = t.div_euclid(12);
            m = t.rem_euclid(12) + 1;
        }
        "wk" | "d" => {
            if p.len() < 3 {
                return None;
            }
            let days = days_from_civil(y, m, day) + if unit_norm(unit) == "wk" { 7 * n } else { n };
            (y, m, day) = civil_from_days(days);
        }
        _ => return None,
    }
    let last = days_from_civil(
        if m == 12 { y + 1 } else { y },
        if m == 12 { 1 } else { m + 1 },
        1,
    ) - days_from_civil(y, m, 1);
    day = day.min(last);
    Some(match p.len() {
        1 => format!("{y:04}{rest}"),
        2 => format!("{y:04}-{m:02}{rest}"),
        _ => format!("{y:04}-{m:02}-{day:02}{rest}"),
    })
}

// ---- conversions ----

fn to_string(i: &Item) -> Option<String> {
    Some(match i.system() {
        Item::Bool(b) => b.to_string(),
        Item::Int(x) => x.to_string(),
        Item::Dec(d) => d.to_string(),
        Item::Str(s) => s,
        Item::Date(s) | Item::DateTime(s) | Item::Time(s) => s,
        Item::Quantity(v, u) => {
            if u.chars().all(char::is_alphabetic) && unit_norm(&u) != u {
                format!("{v} {u}")
            } else {
                format!("{v} '{u}'")
            }
        }
        Item::Node(_) => return None,
    })
}

fn to_integer(i: &Item) -> Option<i64> {
    match i.system() {
        Item::Int(x) => Some(x),
        Item::Bool(b) => Some(i64::from(b)),
        Item::Str(s) => {
            let t = s.strip_prefix('+').unwrap_or(&s);
            (!t.is_empty()
                && t.trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
        }
        _ => None,
    }
}

fn to_decimal(i: &Item) -> Option<Decimal> {
    match i.system() {
        Item::Int(x) => Some(Decimal::from(x)),
        Item::Dec(d) => Some(d),
        Item::Bool(b) => Some(Decimal::from(i64::from(b))),
        Item::Str(s) => {
            let ok = s
                .trim_start_matches(['+', '-'])
                .split_once('.')
                .map_or_else(
                    || {
                        s.trim_start_matches(['+', '-'])
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    },
                    |(a, b)| {
                        !a.is_empty()
                            && !b.is_empty()
                            && a.bytes().all(|c| c.is_ascii_digit())
                            && b.bytes().all(|c| c.is_ascii_digit())
                    },
                );
            if ok && !s.is_empty() {
                Decimal::from_str(&s).ok()
            } else {
                None
            }
        }
        _ => None,
    }
}

fn to_boolean(i: &Item) -> Option<bool> {
    match i.system() {
        Item::Bool(b) => Some(b),
        Item::Int(1) => Some(true),
        Item::Int(0) => Some(false),
        Item::Dec(d) if d == Decimal::ONE => Some(true),
        Item::Dec(d) if d.is_zero() => Some(false),
        Item::Str(s) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn to_quantity(i: &Item) -> Option<(Decimal, String)> {
    match i.system() {
        Item::Str(s) => {
            let s = s.trim();
            let (n, u) = s.split_once(' ').unwrap_or((s, ""));
            let v = to_decimal(&Item::Str(n.to_string()))?;
            let u = u.trim();
            let unit = if u.is_empty() {
                "1".to_string()
            } else if let Some(q) = u.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
                q.to_string()
            } else if unit_norm(u) != u {
                u.to_string()
            } else {
                return None;
            };
            Some((v, unit))
        }
        Item::Bool(b) => Some((Decimal::from(i64::from(b)), "1".into())),
        other => other.quantity(),
    }
}

fn regex_date() -> &'static regex::Regex {
    static R: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    R.get_or_init(|| regex::Regex::new(r"^\d{4}(-\d{2}(-\d{2})?)?$").unwrap())
}

fn regex_datetime() -> &'static regex::Regex {
    static R: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        regex::Regex::new(
            r"^\d{4}(-\d{2}(-\d{2}(T\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$",
        )
        .unwrap()
    })
}

fn regex_time() -> &'static regex::Regex {
    static R: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    R.get_or_init(|| regex::Regex::new(r"^\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?$").unwrap())
}

// ---- functions ----

fn arity(name: &str, args: &[Expr], min: usize, max: usize) -> Result<(), Error> {
    if args.len() < min || args.len() > max {
        return Err(semantic(format!(
            "{name}() takes {min}..{max} arguments, not {}",
            args.len()
        )));
    }
    Ok(())
}

/// An argument evaluated once on the whole context (not per item).
fn arg<'a>(args: &[Expr], i: usize, env: &Env<'_, 'a>) -> R<'a> {
    let this = env.this.clone().unwrap_or_else(|| env.root.clone());
    let inner = env.with(this.clone(), env.index.unwrap_or(0));
    eval(&args[i], std::slice::from_ref(&this), &inner)
}

fn single_string(c: &[Item], what: &str) -> Result<Option<String>, Error> {
    match singleton(c, what)?.map(Item::system) {
        None => Ok(None),
        Some(Item::Str(s)) => Ok(Some(s)),
        Some(other) => Err(exec(format!("{what} needs a string, not {other:?}"))),
    }
}

fn single_int(c: &[Item], what: &str) -> Result<Option<i64>, Error> {
    match singleton(c, what)?.map(Item::system) {
        None => Ok(None),
        Some(Item::Int(i)) => Ok(Some(i)),
        Some(other) => Err(exec(format!("{what} needs an integer, not {other:?}"))),
    }
}

fn call<'a>(name: &str, input: &[Item<'a>], args: &[Expr], env: &Env<'_, 'a>) -> R<'a> {
    // Functions whose argument is evaluated per item, with $this.
    let per_item = |f: &PerItem<'a>| -> R<'a> {
        let mut out = Vec::new();
        for (i, item) in input.iter().enumerate() {
            let inner = env.with(item.clone(), i);
            let r = eval(&args[0], std::slice::from_ref(item), &inner)?;
            if let Some(x) = f(item, r)? {
                out.push(x);
            }
        }
        Ok(out)
    };
    let str_fn = |f: &dyn Fn(&str) -> Result<Vec<Item<'a>>, Error>| -> R<'a> {
        match single_string(input, name)? {
            None => Ok(vec![]),
            Some(s) => f(&s),
        }
    };
    let math = |f: &dyn Fn(Decimal) -> Option<Item<'a>>| -> R<'a> {
        match singleton(input, name)?.map(Item::system) {
            None => Ok(vec![]),
            Some(Item::Int(i)) => Ok(f(Decimal::from(i)).into_iter().collect()),
            Some(Item::Dec(d)) => Ok(f(d).into_iter().collect()),
            Some(Item::Quantity(v, u)) => Ok(f(v)
                .and_then(|r| match r {
                    Item::Dec(d) => Some(Item::Quantity(d, u)),
                    Item::Int(i) => Some(Item::Quantity(Decimal::from(i), u)),
                    _ => None,
                })
                .into_iter()
                .collect()),
            Some(other) => Err(exec(format!("{name}() needs a number, not {other:?}"))),
        }
    };
    let f64_of = |d: Decimal| d.to_f64();
    let from_f64 = |x: f64| {
        if x.is_finite() {
            Decimal::from_f64(x).map(Item::Dec)
        } else {
            None
        }
    };
    Ok(match name {
        "empty" => {
            arity(name, args, 0, 0)?;
            vec![Item::Bool(input.is_empty())]
        }
        "exists" => {
            arity(name, args, 0, 1)?;
            if args.is_empty() {
                vec![Item::Bool(!input.is_empty())]
            } else {
                let hits = per_item(&|i, r| Ok((truth(&r)? == Some(true)).then(|| i.clone())))?;
                vec![Item::Bool(!hits.is_empty())]
            }
        }
        "all" => {
            arity(name, args, 1, 1)?;
            let hits = per_item(&|i, r| Ok((truth(&r)? == Some(true)).then(|| i.clone())))?;
            vec![Item::Bool(hits.len() == input.len())]
        }
        "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
            arity(name, args, 0, 0)?;
            let want = name.ends_with("True");
            let mut hits = 0;
            for i in input {
                match i.system() {
                    Item::Bool(b) if b == want => hits += 1,
                    Item::Bool(_) => {}
                    other => return Err(exec(format!("{name}() on {other:?}"))),
                }
            }
            vec![Item::Bool(if name.starts_with("all") {
                hits == input.len()
            } else {
                hits > 0
            })]
        }
        "subsetOf" | "supersetOf" => {
            arity(name, args, 1, 1)?;
            let other = arg(args, 0, env)?;
            let (small, big) = if name == "subsetOf" {
                (input, &other[..])
            } else {
                (&other[..], input)
            };
            vec![Item::Bool(small.iter().all(|x| contains_item(big, x)))]
        }
        "count" => {
            arity(name, args, 0, 0)?;
            vec![Item::Int(input.len() as i64)]
        }
        "distinct" => distinct(input.to_vec()),
        "isDistinct" => vec![Item::Bool(distinct(input.to_vec()).len() == input.len())],
        "where" => {
            arity(name, args, 1, 1)?;
            per_item(&|i, r| Ok((truth(&r)? == Some(true)).then(|| i.clone())))?
        }
        "select" => {
            arity(name, args, 1, 1)?;
            let mut out = Vec::new();
            for (i, item) in input.iter().enumerate() {
                let inner = env.with(item.clone(), i);
                out.extend(eval(&args[0], std::slice::from_ref(item), &inner)?);
            }
            out
        }
        "repeat" => {
            arity(name, args, 1, 1)?;
            let mut out: Vec<Item> = Vec::new();
            let mut queue = input.to_vec();
            let mut guard = 0;
            while let Some(item) = queue.pop() {
                guard += 1;
                if guard > 100_000 {
                    return Err(exec("repeat() did not end"));
                }
                let inner = env.with(item.clone(), 0);
                for x in eval(&args[0], std::slice::from_ref(&item), &inner)? {
                    if !contains_item(&out, &x) {
                        out.push(x.clone());
                        queue.push(x);
                    }
                }
            }
            out
        }
        "aggregate" => {
            arity(name, args, 1, 2)?;
            let mut total = if args.len() == 2 {
                arg(args, 1, env)?
            } else {
                vec![]
            };
            for (i, item) in input.iter().enumerate() {
                let mut inner = env.with(item.clone(), i);
                inner.total = Some(total);
                total = eval(&args[0], std::slice::from_ref(item), &inner)?;
            }
            total
        }
        "ofType" => {
            arity(name, args, 1, 1)?;
            let ty = type_arg(&args[0])?;
            input.iter().filter(|i| i.is_type(&ty)).cloned().collect()
        }
        "is" | "as" => {
            arity(name, args, 1, 1)?;
            let ty = type_arg(&args[0])?;
            if name == "as" {
                // The function form filters (R4's invariants use it on collections:
                // `descendants().as(canonical)` in dom-3), the operator form is singular.
                return Ok(input.iter().filter(|i| i.is_type(&ty)).cloned().collect());
            }
            match singleton(input, name)? {
                None => vec![],
                Some(i) => vec![Item::Bool(i.is_type(&ty))],
            }
        }
        "single" => match input.len() {
            0 => vec![],
            1 => input.to_vec(),
            n => return Err(exec(format!("single() on {n} items"))),
        },
        "first" => input.first().cloned().into_iter().collect(),
        "last" => input.last().cloned().into_iter().collect(),
        "tail" => input.iter().skip(1).cloned().collect(),
        "skip" | "take" => {
            arity(name, args, 1, 1)?;
            let n = single_int(&arg(args, 0, env)?, name)?.unwrap_or(0).max(0) as usize;
            if name == "skip" {
                input.iter().skip(n).cloned().collect()
            } else {
                input.iter().take(n).cloned().collect()
            }
        }
        "intersect" => {
            arity(name, args, 1, 1)?;
            let other = arg(args, 0, env)?;
            distinct(
                input
                    .iter()
                    .filter(|x| contains_item(&other, x))
                    .cloned()
                    .collect(),
            )
        }
        "exclude" => {
            arity(name, args, 1, 1)?;
            let other = arg(args, 0, env)?;
            input
                .iter()
                .filter(|x| !contains_item(&other, x))
                .cloned()
                .collect()
        }
        "union" => {
            arity(name, args, 1, 1)?;
            distinct(input.iter().cloned().chain(arg(args, 0, env)?).collect())
        }
        "combine" => {
            arity(name, args, 1, 1)?;
            input.iter().cloned().chain(arg(args, 0, env)?).collect()
        }
        "iif" => {
            arity(name, args, 2, 3)?;
            if input.len() > 1 {
                return Err(exec("iif() on several items"));
            }
            let this = input.first().cloned().or_else(|| env.this.clone());
            let inner = Env {
                root: env.root,
                vars: env.vars,
                this: this.clone(),
                index: env.index,
                total: env.total.clone(),
            };
            let f: Vec<Item> = this.into_iter().collect();
            let criterion = eval(&args[0], &f, &inner)?;
            if criterion
                .iter()
                .any(|c| !matches!(c.system(), Item::Bool(_)))
            {
                return Err(exec("iif() needs a boolean criterion"));
            }
            match truth(&criterion)? {
                Some(true) => eval(&args[1], &f, &inner)?,
                _ if args.len() == 3 => eval(&args[2], &f, &inner)?,
                _ => vec![],
            }
        }
        "not" => boolean(truth(input)?.map(|b| !b)),
        "hasValue" => vec![Item::Bool(
            matches!(input, [Item::Node(n)] if !n.value.is_null() && !n.value.is_object() && !n.value.is_array()),
        )],
        "getValue" => match input {
            [Item::Node(n)] if !n.value.is_null() && !n.value.is_object() => {
                vec![input[0].system()]
            }
            _ => vec![],
        },
        "children" => {
            let mut out = Vec::new();
            for i in input {
                if let Item::Node(n) = i {
                    all_children(n, &mut out);
                }
            }
            out
        }
        "descendants" => {
            let mut out = Vec::new();
            let mut queue: Vec<Item> = input.to_vec();
            while let Some(i) = queue.pop() {
                if let Item::Node(n) = &i {
                    let mut c = Vec::new();
                    all_children(n, &mut c);
                    out.extend(c.iter().cloned());
                    queue.extend(c);
                }
            }
            out
        }
        "extension" => {
            arity(name, args, 1, 1)?;
            let url = single_string(&arg(args, 0, env)?, name)?.unwrap_or_default();
            let mut out = Vec::new();
            for i in input {
                if let Item::Node(n) = i {
                    let holder = if n.value.is_object() {
                        Some(n.value.clone())
                    } else {
                        n.ext.clone()
                    };
                    let Some(list) = holder.and_then(|h| h.part(|h| h.get("extension"))) else {
                        continue;
                    };
                    let count = list.as_array().map_or(0, Vec::len);
                    for k in 0..count {
                        let e = list.part(|l| l.get(k)).expect("index in range");
                        if e.get("url").and_then(Value::as_str) == Some(url.as_str()) {
                            out.push(node(e, "Extension", None));
                        }
                    }
                }
            }
            out
        }
        "trace" => {
            arity(name, args, 1, 2)?;
            input.to_vec()
        }
        "toString" => match singleton(input, name)? {
            None => vec![],
            Some(i) => to_string(i).map(Item::Str).into_iter().collect(),
        },
        "convertsToString" => match singleton(input, name)? {
            None => vec![],
            Some(i) => vec![Item::Bool(to_string(i).is_some())],
        },
        "toInteger" => match singleton(input, name)? {
            None => vec![],
            Some(i) => to_integer(i).map(Item::Int).into_iter().collect(),
        },
        "convertsToInteger" => match singleton(input, name)? {
            None => vec![],
            Some(i) => vec![Item::Bool(to_integer(i).is_some())],
        },
        "toDecimal" => match singleton(input, name)? {
            None => vec![],
            Some(i) => to_decimal(i).map(Item::Dec).into_iter().collect(),
        },
        "convertsToDecimal" => match singleton(input, name)? {
            None => vec![],
            Some(i) => vec![Item::Bool(to_decimal(i).is_some())],
        },
        "toBoolean" => match singleton(input, name)? {
            None => vec![],
            Some(i) => to_boolean(i).map(Item::Bool).into_iter().collect(),
        },
        "convertsToBoolean" => match singleton(input, name)? {
            None => vec![],
            Some(i) => vec![Item::Bool(to_boolean(i).is_some())],
        },
        "toQuantity" | "convertsToQuantity" => match singleton(input, name)? {
            None => vec![],
            Some(i) => {
                let q = to_quantity(i);
                if name == "convertsToQuantity" {
                    vec![Item::Bool(q.is_some())]
                } else {
                    q.map(|(v, u)| Item::Quantity(v, u)).into_iter().collect()
                }
            }
        },
        "toDate" | "convertsToDate" | "toDateTime" | "convertsToDateTime" | "toTime"
        | "convertsToTime" => match singleton(input, name)? {
            None => vec![],
            Some(i) => {
                let s = match i.system() {
                    Item::Str(s) | Item::Date(s) | Item::DateTime(s) | Item::Time(s) => Some(s),
                    _ => None,
                };
                let converted = s.and_then(|s| {
                    match name
                        .trim_start_matches("convertsTo")
                        .trim_start_matches("to")
                    {
                        "Date" => {
                            let d = s.split('T').next().unwrap_or("").to_string();
                            regex_date().is_match(&d).then_some(Item::Date(d))
                        }
                        "DateTime" => regex_datetime().is_match(&s).then_some(Item::DateTime(s)),
                        _ => regex_time().is_match(&s).then_some(Item::Time(s)),
                    }
                });
                if name.starts_with("convertsTo") {
                    vec![Item::Bool(converted.is_some())]
                } else {
                    converted.into_iter().collect()
                }
            }
        },
        "indexOf" => {
            arity(name, args, 1, 1)?;
            let sub = single_string(&arg(args, 0, env)?, name)?;
            str_fn(&|s| {
                Ok(sub
                    .as_ref()
                    .map(|p| {
                        Item::Int(
                            s.find(p.as_str())
                                .map_or(-1, |b| s[..b].chars().count() as i64),
                        )
                    })
                    .into_iter()
                    .collect())
            })?
        }
        "substring" => {
            arity(name, args, 1, 2)?;
            let start = single_int(&arg(args, 0, env)?, name)?;
            let len = if args.len() == 2 {
                single_int(&arg(args, 1, env)?, name)?
            } else {
                None
            };
            str_fn(&|s| {
                let chars: Vec<char> = s.chars().collect();
                let Some(start) = start else {
                    return Ok(vec![]);
                };
                if start < 0 || start as usize >= chars.len() {
                    return Ok(vec![]);
                }
                let end = match len {
                    Some(l) => (start + l.max(0)).min(chars.len() as i64) as usize,
                    None => chars.len(),
                };
                Ok(vec![Item::Str(chars[start as usize..end].iter().collect())])
            })?
        }
        "startsWith" | "endsWith" | "contains" => {
            arity(name, args, 1, 1)?;
            let p = single_string(&arg(args, 0, env)?, name)?;
            str_fn(&|s| {
                Ok(p.as_ref()
                    .map(|p| {
                        Item::Bool(match name {
                            "startsWith" => s.starts_with(p.as_str()),
                            "endsWith" => s.ends_with(p.as_str()),
                            _ => s.contains(p.as_str()),
                        })
                    })
                    .into_iter()
                    .collect())
            })?
        }
        "upper" => str_fn(&|s| Ok(vec![Item::Str(s.to_uppercase())]))?,
        "lower" => str_fn(&|s| Ok(vec![Item::Str(s.to_lowercase())]))?,
        "trim" => str_fn(&|s| Ok(vec![Item::Str(s.trim().to_string())]))?,
        "length" => str_fn(&|s| Ok(vec![Item::Int(s.chars().count() as i64)]))?,
        "toChars" => str_fn(&|s| Ok(s.chars().map(|c| Item::Str(c.to_string())).collect()))?,
        "replace" => {
            arity(name, args, 2, 2)?;
            let (p, r) = (
                single_string(&arg(args, 0, env)?, name)?,
                single_string(&arg(args, 1, env)?, name)?,
            );
            str_fn(&|s| {
                Ok(match (&p, &r) {
                    (Some(p), Some(r)) if p.is_empty() => {
                        let mut out = r.clone();
                        for c in s.chars() {
                            out.push(c);
                            out.push_str(r);
                        }
                        vec![Item::Str(out)]
                    }
                    (Some(p), Some(r)) => vec![Item::Str(s.replace(p.as_str(), r))],
                    _ => vec![],
                })
            })?
        }
        "matches" | "replaceMatches" => {
            arity(name, args, 1, 2)?;
            let p = single_string(&arg(args, 0, env)?, name)?;
            let r = if args.len() == 2 {
                single_string(&arg(args, 1, env)?, name)?
            } else {
                None
            };
            str_fn(&|s| {
                let Some(p) = &p else { return Ok(vec![]) };
                if p.is_empty() && name == "replaceMatches" {
                    return Ok(vec![Item::Str(s.to_string())]);
                }
                let re = regex::Regex::new(&format!("(?s){p}"))
                    .map_err(|e| exec(format!("a bad regular expression: {e}")))?;
                Ok(if name == "matches" {
                    vec![Item::Bool(re.is_match(s))]
                } else {
                    r.as_ref()
                        .map(|r| Item::Str(re.replace_all(s, r.as_str()).into_owned()))
                        .into_iter()
                        .collect()
                })
            })?
        }
        "split" => {
            arity(name, args, 1, 1)?;
            let sep = single_string(&arg(args, 0, env)?, name)?;
            str_fn(&|s| {
                Ok(sep
                    .as_ref()
                    .map(|p| s.split(p.as_str()).map(|x| Item::Str(x.into())).collect())
                    .unwrap_or_default())
            })?
        }
        "join" => {
            arity(name, args, 0, 1)?;
            let sep = if args.is_empty() {
                String::new()
            } else {
                single_string(&arg(args, 0, env)?, name)?.unwrap_or_default()
            };
            let parts: Vec<String> = input.iter().filter_map(to_string).collect();
            vec![Item::Str(parts.join(&sep))]
        }
        "abs" => math(&|d| Some(Item::Dec(d.abs())))?
            .into_iter()
            .map(|i| match (i, input.first().map(Item::system)) {
                (Item::Dec(d), Some(Item::Int(_))) => Item::Int(d.to_i64().unwrap_or(0)),
                (i, _) => i,
            })
            .collect(),
        "ceiling" => math(&|d| d.ceil().to_i64().map(Item::Int))?,
        "floor" => math(&|d| d.floor().to_i64().map(Item::Int))?,
        "truncate" => math(&|d| d.trunc().to_i64().map(Item::Int))?,
        "round" => {
            let dp = if args.is_empty() {
                0
            } else {
                single_int(&arg(args, 0, env)?, name)?.unwrap_or(0)
            };
            if dp < 0 {
                return Err(exec("round() needs a non-negative precision"));
            }
            math(&|d| {
                Some(Item::Dec(d.round_dp_with_strategy(
                    dp as u32,
                    rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                )))
            })?
        }
        "sqrt" => math(&|d| {
            f64_of(d)
                .filter(|x| *x >= 0.0)
                .and_then(|x| from_f64(x.sqrt()))
        })?,
        "exp" => math(&|d| f64_of(d).and_then(|x| from_f64(x.exp())))?,
        "ln" => math(&|d| f64_of(d).and_then(|x| from_f64(x.ln())))?,
        "log" => {
            let base = single_int(&arg(args, 0, env)?, name)
                .ok()
                .flatten()
                .map(|b| b as f64)
                .or_else(|| {
                    arg(args, 0, env)
                        .ok()
                        .and_then(|c| c.first().and_then(|i| num(&i.system())))
                        .and_then(|d| d.to_f64())
                });
            math(&|d| {
                f64_of(d)
                    .zip(base)
                    .and_then(|(x, b)| from_f64(x.ln() / b.ln()))
            })?
        }
        "power" => {
            arity(name, args, 1, 1)?;
            let e = arg(args, 0, env)?;
            let (Some(x), Some(y)) = (
                singleton(input, name)?.map(Item::system),
                singleton(&e, name)?.map(Item::system),
            ) else {
                return Ok(vec![]);
            };
            match (&x, &y) {
                (Item::Int(a), Item::Int(b)) if *b >= 0 => a
                    .checked_pow(*b as u32)
                    .map(Item::Int)
                    .into_iter()
                    .collect(),
                _ => num(&x)
                    .zip(num(&y))
                    .and_then(|(a, b)| {
                        let r = a.to_f64()?.powf(b.to_f64()?);
                        from_f64(r)
                    })
                    .into_iter()
                    .collect(),
            }
        }
        "lowBoundary" | "highBoundary" => {
            arity(name, args, 0, 1)?;
            let p = if args.is_empty() {
                None
            } else {
                single_int(&arg(args, 0, env)?, name)?
            };
            let item = singleton(input, name)?;
            // A date's boundaries are dates (precision 8), a dateTime's are dateTimes (17),
            // though a dateTime without a time compares as a date.
            let is_date = match item {
                Some(Item::Date(_)) => true,
                Some(Item::Node(n)) => n.ty == "date",
                _ => false,
            };
            let p = p.or(is_date.then_some(8));
            match item.map(Item::system) {
                None => vec![],
                Some(i) => boundary(&i, p, name == "highBoundary")
                    .into_iter()
                    .collect(),
            }
        }
        "precision" => match singleton(input, name)?.map(Item::system) {
            None => vec![],
            Some(Item::Dec(d)) => vec![Item::Int(i64::from(d.scale()))],
            Some(Item::Int(_)) => vec![Item::Int(0)],
            Some(Item::Date(s) | Item::DateTime(s)) => {
                vec![Item::Int(
                    s.chars().filter(char::is_ascii_digit).count() as i64
                )]
            }
            Some(Item::Time(s)) => {
                vec![Item::Int(
                    s.chars().filter(char::is_ascii_digit).count() as i64
                )]
            }
            Some(_) => vec![],
        },
        "type" => input
            .iter()
            .map(|i| {
                let full = i.type_names().remove(0);
                let (ns, n) = full.split_once('.').unwrap_or(("System", &full));
                made(serde_json::json!({"namespace": ns, "name": n}), "TypeInfo")
            })
            .collect(),
        "matchesFull" => {
            arity(name, args, 1, 1)?;
            let p = single_string(&arg(args, 0, env)?, name)?;
            str_fn(&|s| {
                let Some(p) = &p else { return Ok(vec![]) };
                let re = regex::Regex::new(&format!("(?s)^(?:{p})$"))
                    .map_err(|e| exec(format!("a bad regular expression: {e}")))?;
                Ok(vec![Item::Bool(re.is_match(s))])
            })?
        }
        "sort" => {
            let mut keyed: Vec<(Vec<Vec<Item>>, Item)> = Vec::new();
            for (i, item) in input.iter().enumerate() {
                let inner = env.with(item.clone(), i);
                let mut keys = Vec::new();
                for a in args {
                    let e = match a {
                        Expr::Negate(x) => x,
                        x => x,
                    };
                    keys.push(eval(e, std::slice::from_ref(item), &inner)?);
                }
                keyed.push((keys, item.clone()));
            }
            let mut failure = None;
            keyed.sort_by(|(ka, a), (kb, b)| {
                if args.is_empty() {
                    return order(a, b).ok().flatten().unwrap_or(Ordering::Equal);
                }
                for (n, arg) in args.iter().enumerate() {
                    // An empty key sorts first in either direction; a descending key
                    // reverses the order of the values only.
                    let descending = matches!(arg, Expr::Negate(_));
                    let o = match (ka[n].first(), kb[n].first()) {
                        (None, None) => Ordering::Equal,
                        (None, _) => Ordering::Less,
                        (_, None) => Ordering::Greater,
                        (Some(x), Some(y)) => match order(x, y) {
                            Ok(o) if descending => o.unwrap_or(Ordering::Equal).reverse(),
                            Ok(o) => o.unwrap_or(Ordering::Equal),
                            Err(e) => {
                                failure = Some(e);
                                Ordering::Equal
                            }
                        },
                    };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                Ordering::Equal
            });
            if let Some(e) = failure {
                return Err(e);
            }
            keyed.into_iter().map(|(_, i)| i).collect()
        }
        "encode" | "decode" | "escape" | "unescape" => {
            arity(name, args, 1, 1)?;
            use base64::Engine as _;
            let format = single_string(&arg(args, 0, env)?, name)?.unwrap_or_default();
            str_fn(&|s| {
                let text = |b: Vec<u8>| String::from_utf8(b).ok().map(Item::Str);
                let b64 = base64::engine::general_purpose::STANDARD;
                let url64 = base64::engine::general_purpose::URL_SAFE;
                Ok(match (name, format.as_str()) {
                    ("encode", "base64") => Some(Item::Str(b64.encode(s))),
                    ("encode", "urlbase64") => Some(Item::Str(url64.encode(s))),
                    ("encode", "hex") => {
                        Some(Item::Str(s.bytes().map(|b| format!("{b:02x}")).collect()))
                    }
                    ("decode", "base64") => b64.decode(s).ok().and_then(text),
                    ("decode", "urlbase64") => url64.decode(s).ok().and_then(text),
                    ("decode", "hex") => (0..s.len())
                        .step_by(2)
                        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                        .collect::<Option<Vec<u8>>>()
                        .and_then(text),
                    ("escape", "html") => Some(Item::Str(
                        s.replace('&', "&amp;")
                            .replace('<', "&lt;")
                            .replace('>', "&gt;")
                            .replace('"', "&quot;")
                            .replace('\'', "&#39;"),
                    )),
                    ("unescape", "html") => Some(Item::Str(
                        s.replace("&lt;", "<")
                            .replace("&gt;", ">")
                            .replace("&quot;", "\"")
                            .replace("&#39;", "'")
                            .replace("&apos;", "'")
                            .replace("&amp;", "&"),
                    )),
                    ("escape", "json") => {
                        let q = serde_json::to_string(s).unwrap_or_default();
                        Some(Item::Str(q[1..q.len() - 1].to_string()))
                    }
                    ("unescape", "json") => Some(Item::Str(
                        serde_json::from_str::<String>(&format!("\"{s}\""))
                            .unwrap_or_else(|_| s.to_string()),
                    )),
                    _ => None,
                }
                .into_iter()
                .collect())
            })?
        }
        "comparable" => {
            arity(name, args, 1, 1)?;
            let other = arg(args, 0, env)?;
            match (singleton(input, name)?, singleton(&other, name)?) {
                (Some(a), Some(b)) => match (a.quantity(), b.quantity()) {
                    (Some(x), Some(y)) => vec![Item::Bool(same_unit(x, y).is_some())],
                    _ => vec![],
                },
                _ => vec![],
            }
        }
        "now" => vec![Item::DateTime(now_utc())],
        "today" => vec![Item::Date(now_utc()[..10].to_string())],
        "timeOfDay" => vec![Item::Time(now_utc()[11..19].to_string())],
        // SQL on FHIR v2: keys that join a resource and the references to it. The key of a
        // resource is `Type/id`; a reference's key is the same for a relative or absolute
        // literal reference (a version suffix dropped), so the two compare equal.
        "getResourceKey" => {
            arity(name, args, 0, 0)?;
            input
                .iter()
                .filter_map(|i| {
                    let Item::Node(n) = i else { return None };
                    let ty = n.value.get("resourceType")?.as_str()?;
                    let id = n.value.get("id")?.as_str()?;
                    Some(Item::Str(format!("{ty}/{id}")))
                })
                .collect()
        }
        "getReferenceKey" => {
            arity(name, args, 0, 1)?;
            let want = match args.first() {
                Some(a) => Some(type_arg(a)?),
                None => None,
            };
            input
                .iter()
                .filter_map(|i| {
                    let Item::Node(n) = i else { return None };
                    let key = reference_key(n.value.get("reference")?.as_str()?)?;
                    match &want {
                        Some(w) if !key.starts_with(&format!("{w}/")) => None,
                        _ => Some(Item::Str(key)),
                    }
                })
                .collect()
        }
        "resolve" | "memberOf" | "conformsTo" | "htmlChecks" | "subsumes" | "subsumedBy" => {
            return Err(semantic(format!(
                "{name}() needs a server or terminology and is not offered"
            )))
        }
        other => return Err(semantic(format!("{other}() is not a FHIRPath function"))),
    })
}

/// The `Type/id` of a literal reference (`Patient/p1`, `https://host/fhir/Patient/p1`,
/// `Patient/p1/_history/2`); none for a contained (`#x`) or logical (`urn:uuid:`) one.
fn reference_key(reference: &str) -> Option<String> {
    let path = reference.split(['?', '#']).next()?;
    let path = match path.find("/_history/") {
        Some(at) => &path[..at],
        None => path,
    };
    let mut parts = path.rsplit('/');
    let id = parts.next().filter(|id| !id.is_empty())?;
    let ty = parts.next()?;
    if !ty.starts_with(|c: char| c.is_ascii_uppercase()) || path.starts_with("urn:") {
        return None;
    }
    Some(format!("{ty}/{id}"))
}

/// `lowBoundary`/`highBoundary`: the least or greatest value the item may stand for at its
/// precision, written at precision `p` (decimal places for numbers, digits for dates and
/// times).
fn boundary<'a>(i: &Item<'a>, p: Option<i64>, high: bool) -> Option<Item<'a>> {
    match i {
        Item::Int(_) | Item::Dec(_) => {
            let x = num(i)?;
            decimal_boundary(x, p.unwrap_or(8), high).map(Item::Dec)
        }
        Item::Quantity(v, u) => {
            decimal_boundary(*v, p.unwrap_or(8), high).map(|d| Item::Quantity(d, u.clone()))
        }
        Item::Date(s) | Item::DateTime(s) => {
            let p = p.unwrap_or(17);
            moment_boundary(s, p, high, false)
        }
        Item::Time(s) => moment_boundary(s, p.unwrap_or(9), high, true),
        _ => None,
    }
}

fn decimal_boundary(x: Decimal, p: i64, high: bool) -> Option<Decimal> {
    if !(0..=28).contains(&p) {
        return None;
    }
    let p = p as u32;
    let s = x.scale();
    // Half a unit of the last digit written either side.
    let half = Decimal::new(5, s + 1);
    let edge = if high { x + half } else { x - half };
    if p < s && x.abs() < Decimal::new(1, p) {
        // Below the precision asked for, the value is zero at that precision.
        let mut z = Decimal::new(0, p);
        if !high && x.is_sign_negative() {
            z.set_sign_negative(true);
        }
        return Some(z);
    }
    let strategy = if high {
        rust_decimal::RoundingStrategy::ToPositiveInfinity
    } else {
        rust_decimal::RoundingStrategy::ToNegativeInfinity
    };
    let mut r = edge.round_dp_with_strategy(p, strategy);
    r.rescale(p);
    Some(r)
}

fn moment_boundary<'a>(s: &str, p: i64, high: bool, time_only: bool) -> Option<Item<'a>> {
    let (body, zone) = match s.find(|c: char| c == 'Z' || ((c == '+' || c == '-') && time_only)) {
        Some(i) if time_only => (&s[..i], Some(&s[i..])),
        _ => {
            // A zone on a dateTime follows the time.
            match s
                .find('T')
                .and_then(|t| s[t..].find(['+', '-', 'Z']).map(|z| t + z))
            {
                Some(i) => (&s[..i], Some(&s[i..])),
                None => (s, None),
            }
        }
    };
    let (date, time) = if time_only {
        ("", body)
    } else {
        match body.split_once('T') {
            Some((d, t)) => (d, t),
            None => (body, ""),
        }
    };
    let mut d: Vec<&str> = if date.is_empty() {
        vec![]
    } else {
        date.split('-').collect()
    };
    let year = d.first().copied().unwrap_or("0000").to_string();
    let month = if d.len() > 1 {
        d[1].to_string()
    } else if high {
        "12".into()
    } else {
        "01".into()
    };
    let last_day = {
        let (y, m) = (year.parse::<i64>().ok()?, month.parse::<i64>().ok()?);
        let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        days_from_civil(next.0, next.1, 1) - days_from_civil(y, m, 1)
    };
    let day = if d.len() > 2 {
        d[2].to_string()
    } else if high {
        format!("{last_day:02}")
    } else {
        "01".into()
    };
    d.clear();
    let t: Vec<&str> = if time.is_empty() {
        vec![]
    } else {
        time.split(':').collect()
    };
    let hour = t.first().map(|x| x.to_string()).unwrap_or_else(|| {
        if high {
            "23".into()
        } else {
            "00".into()
        }
    });
    // An hour without minutes is that hour's first minute (FHIR writes `T08` as `T08:00`);
    // no time at all spans the whole day.
    let minute = t.get(1).map(|x| x.to_string()).unwrap_or_else(|| {
        if high && t.is_empty() {
            "59".into()
        } else {
            "00".into()
        }
    });
    let (sec, ms) = match t.get(2) {
        Some(x) => match x.split_once('.') {
            Some((a, b)) => (a.to_string(), format!("{b:0<3}")),
            None => (
                x.to_string(),
                if high { "999".into() } else { "000".into() },
            ),
        },
        None => (
            if high { "59".into() } else { "00".into() },
            if high { "999".into() } else { "000".into() },
        ),
    };
    let zone = zone.map(String::from).unwrap_or_else(|| {
        if high {
            "-12:00".into()
        } else {
            "+14:00".into()
        }
    });
    if time_only {
        return match p {
            2 => Some(Item::Time(hour)),
            4 => Some(Item::Time(format!("{hour}:{minute}"))),
            6 => Some(Item::Time(format!("{hour}:{minute}:{sec}"))),
            9 => Some(Item::Time(format!("{hour}:{minute}:{sec}.{ms}"))),
            _ => None,
        };
    }
    Some(match p {
        4 => Item::Date(year),
        6 => Item::Date(format!("{year}-{month}")),
        8 => Item::Date(format!("{year}-{month}-{day}")),
        10 => Item::DateTime(format!("{year}-{month}-{day}T{hour}{zone}")),
        12 => Item::DateTime(format!("{year}-{month}-{day}T{hour}:{minute}{zone}")),
        14 => Item::DateTime(format!("{year}-{month}-{day}T{hour}:{minute}:{sec}{zone}")),
        17 => Item::DateTime(format!(
            "{year}-{month}-{day}T{hour}:{minute}:{sec}.{ms}{zone}"
        )),
        _ => return None,
    })
}

fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use crate::Expression;
    use serde_json::json;

    fn eval<'a>(expr: &str, r: &'a serde_json::Value) -> Vec<super::Item<'a>> {
        Expression::parse(expr).unwrap().evaluate(r).unwrap()
    }

    #[test]
    fn choice_elements_and_types_come_from_the_model() {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "w"},
            "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}});
        assert_eq!(
            eval("Observation.value.ofType(Quantity).value", &obs).len(),
            1
        );
        assert_eq!(
            eval("value is Quantity and value > 60 'kg'", &obs),
            [super::Item::Bool(true)]
        );
        assert_eq!(eval("status = 'final'", &obs), [super::Item::Bool(true)]);
        assert!(eval("Patient.name", &obs).is_empty());
    }

    #[test]
    fn dates_compare_by_precision() {
        let p = json!({"resourceType": "Patient", "birthDate": "1974-12-25"});
        assert_eq!(eval("birthDate < @1975", &p), [super::Item::Bool(true)]);
        assert!(eval("@2012-04 = @2012-04-15", &p).is_empty());
        assert_eq!(
            eval("@2015-02-04T14:34:28Z = @2015-02-04T15:34:28+01:00", &p),
            [super::Item::Bool(true)]
        );
    }
}
