//! Layers 2-4: a walk over a parsed resource along the generated R4 model, checking element
//! names, JSON shapes, cardinality, choice types, primitive formats, bindings, reference
//! targets and narrative, then the invariants of each type it passes (see `invariants`).

use serde_json::{Map, Value};
use std::fmt::Write;
use trialbridge_fhir::structure::{self, BindingStrength, ElementDef, TypeDef, TypeKind};
use trialbridge_fhir::{resource_type, IssueSeverity, IssueType, OutcomeIssue};

use crate::{invariants, narrative, primitive};

/// What the walk knows about the resource it is in (for local references and `dom-3`).
#[derive(Default)]
pub(crate) struct ResourceFrame {
    /// `(id, type)` of each contained resource.
    pub contained: Vec<(String, &'static str)>,
    /// Local references (`#id`) seen anywhere in the resource, contained ones included.
    pub local_refs: Vec<String>,
}

/// How many issues one validation keeps.
pub const KEPT_ISSUES: usize = 1000;

/// One validation run: the issues found and where the walk is.
pub struct Walk<'o> {
    pub(crate) options: &'o crate::Options,
    /// Everything found so far, in document order (at most [`KEPT_ISSUES`]).
    pub issues: Vec<OutcomeIssue>,
    /// Issues found beyond [`KEPT_ISSUES`], and whether any of them was an error: a hostile
    /// body of thousands of bad elements costs a bounded report.
    pub omitted: usize,
    /// Whether an omitted issue was an error.
    pub omitted_error: bool,
    /// The FHIRPath of the current element.
    pub(crate) path: String,
    pub(crate) frames: Vec<ResourceFrame>,
    /// The Bundles being walked, innermost last.
    pub(crate) bundles: Vec<invariants::BundleContext>,
    /// While the `_x` object of a primitive is walked: `Type.x`, its extensions' context.
    primitive_of: Option<String>,
    /// While an `extension` array is walked: the contexts its holder stands in.
    ext_context: Vec<String>,
}

impl<'o> Walk<'o> {
    pub(crate) fn new(options: &'o crate::Options) -> Self {
        Self {
            options,
            issues: Vec::new(),
            omitted: 0,
            omitted_error: false,
            path: String::new(),
            frames: Vec::new(),
            bundles: Vec::new(),
            primitive_of: None,
            ext_context: Vec::new(),
        }
    }

    /// Records an issue at the current path.
    pub(crate) fn issue(
        &mut self,
        severity: IssueSeverity,
        code: IssueType,
        msg: impl Into<String>,
    ) {
        if self.issues.len() >= KEPT_ISSUES {
            self.omitted += 1;
            self.omitted_error |= matches!(severity, IssueSeverity::Error | IssueSeverity::Fatal);
            return;
        }
        self.issues.push(OutcomeIssue {
            severity,
            code,
            diagnostics: msg.into(),
            expression: vec![self.path.clone()],
        });
    }

    pub(crate) fn error(&mut self, code: IssueType, msg: impl Into<String>) {
        self.issue(IssueSeverity::Error, code, msg);
    }

    /// Records an error at the current path plus `.child`.
    pub(crate) fn error_at(&mut self, child: &str, code: IssueType, msg: impl Into<String>) {
        let len = self.path.len();
        self.path.push('.');
        self.path.push_str(child);
        self.error(code, msg);
        self.path.truncate(len);
    }

    /// Validates a resource whose path is already in `self.path`. `contained` is true inside
    /// `contained`, where the enclosing resource's frame applies.
    pub(crate) fn resource(&mut self, m: &Map<String, Value>, contained: bool) {
        let Some(rt) = m.get("resourceType").and_then(Value::as_str) else {
            self.error(IssueType::Structure, "a resource needs a resourceType");
            return;
        };
        let td = match resource_type::canonical(rt).and_then(structure::type_def) {
            Some(td) if td.kind == TypeKind::Resource => td,
            _ => {
                self.error_at(
                    "resourceType",
                    IssueType::Structure,
                    format!("'{rt}' is not an R4 resource type"),
                );
                return;
            }
        };
        if let Some(id) = m.get("id") {
            match id.as_str() {
                Some(s) if trialbridge_fhir::id::is_valid_id(s) => {}
                _ => self.error_at(
                    "id",
                    IssueType::Value,
                    format!("{id} is not a valid id (1-64 of A-Z a-z 0-9 - .)"),
                ),
            }
        }
        if !contained {
            let mut frame = ResourceFrame::default();
            if let Some(Value::Array(list)) = m.get("contained") {
                for c in list {
                    let id = c
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let t = c
                        .get("resourceType")
                        .and_then(Value::as_str)
                        .and_then(resource_type::canonical)
                        .unwrap_or("Resource");
                    frame.contained.push((id, t));
                }
            }
            self.frames.push(frame);
        }
        let is_bundle = td.name == "Bundle";
        if is_bundle {
            self.bundles.push(invariants::BundleContext::new(m));
        }
        self.object(td, m, true);
        invariants::resource(self, td.name, m, contained);
        if is_bundle {
            self.bundles.pop();
        }
        if !contained {
            let frame = self.frames.pop().unwrap_or_default();
            invariants::contained(self, m, &frame);
        }
    }

    /// Validates the members of an object of type `td`.
    pub(crate) fn object(
        &mut self,
        td: &'static TypeDef,
        m: &Map<String, Value>,
        is_resource: bool,
    ) {
        if m.is_empty() {
            self.error(
                IssueType::Invalid,
                "an element must have a value or children (ele-1): remove the empty object",
            );
            return;
        }
        let mut choices: Vec<(&'static str, &str)> = Vec::new();
        for (key, value) in m {
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, underscore) = match key.strip_prefix('_') {
                Some(n) => (n, true),
                None => (key.as_str(), false),
            };
            let Some(el) = td.element(name) else {
                self.error_at(
                    key,
                    IssueType::Structure,
                    format!("unknown element '{key}' in {}", td.name),
                );
                continue;
            };
            if el.prohibited {
                self.error_at(
                    key,
                    IssueType::Structure,
                    format!("'{key}' is not allowed here"),
                );
                continue;
            }
            if !el.choice.is_empty() {
                if let Some((_, other)) =
                    choices.iter().find(|(c, n)| *c == el.choice && *n != name)
                {
                    let msg = format!(
                        "{}[x] may have one type only, but both '{other}' and '{name}' are present",
                        el.choice
                    );
                    self.error_at(el.choice, IssueType::Structure, msg);
                }
                choices.push((el.choice, name));
            }
            let len = self.path.len();
            let holder = matches!(name, "extension" | "modifierExtension") && !underscore;
            let contexts = holder.then(|| self.holder_contexts(td));
            self.push_name(el);
            if underscore {
                // The extensions of a primitive are used in the context `Type.element`.
                let saved = self.primitive_of.replace(format!("{}.{name}", td.name));
                self.primitive_element(el, value, m);
                self.primitive_of = saved;
            } else if let Some(c) = contexts {
                let saved = std::mem::replace(&mut self.ext_context, c);
                self.element(el, value, m);
                self.ext_context = saved;
            } else {
                self.element(el, value, m);
            }
            self.path.truncate(len);
        }
        for el in td.elements.iter().filter(|e| e.min > 0) {
            let (present, shown) = if el.choice.is_empty() {
                let present = m.contains_key(el.name) || m.contains_key(&format!("_{}", el.name));
                (present, el.name.to_string())
            } else {
                // One report per choice element, not one per branch of it.
                let present = choices.iter().any(|(c, _)| *c == el.choice);
                choices.push((el.choice, ""));
                (present, format!("{}[x]", el.choice))
            };
            if !present {
                let at = if el.choice.is_empty() {
                    el.name
                } else {
                    el.choice
                };
                let msg = format!(
                    "{}.{shown} is required (minimum cardinality {})",
                    td.name, el.min
                );
                self.error_at(at, IssueType::Required, msg);
            }
        }
        invariants::element_type(self, td, m);
    }

    /// The contexts (as extension definitions name them) an extension held by an element of
    /// type `td` at the current path is used in.
    fn holder_contexts(&self, td: &'static TypeDef) -> Vec<String> {
        let mut c = vec!["Element".to_string()];
        match (td.name, &self.primitive_of) {
            ("Element", Some(p)) => c.push(p.clone()),
            (name, _) => c.push(name.to_string()),
        }
        match td.kind {
            TypeKind::Resource => {
                c.push("Resource".into());
                c.push("DomainResource".into());
            }
            TypeKind::Backbone => c.push("BackboneElement".into()),
            _ => {}
        }
        // The element's path in the resource without indexes (`Patient.name`).
        let mut path = String::new();
        let mut skip = false;
        for ch in self.path.chars() {
            match ch {
                '[' | '(' => skip = true,
                ']' | ')' => skip = false,
                _ if !skip => path.push(ch),
                _ => {}
            }
        }
        c.push(path.replace(".ofType", ""));
        c
    }

    fn push_name(&mut self, el: &ElementDef) {
        self.path.push('.');
        if el.choice.is_empty() {
            self.path.push_str(el.name);
        } else {
            let _ = write!(self.path, "{}.ofType({})", el.choice, el.ty.name);
        }
    }

    fn element(&mut self, el: &'static ElementDef, v: &Value, parent: &Map<String, Value>) {
        match (el.many, v) {
            (true, Value::Array(items)) => {
                if items.is_empty() {
                    self.error(
                        IssueType::Invalid,
                        "an array may not be empty (ele-1): leave the element out instead",
                    );
                }
                let nulls_allowed = parent.contains_key(&format!("_{}", el.name));
                let len = self.path.len();
                for (i, item) in items.iter().enumerate() {
                    let _ = write!(self.path, "[{i}]");
                    if item.is_null() && nulls_allowed {
                    } else {
                        self.value(el, item);
                    }
                    self.path.truncate(len);
                }
            }
            (true, _) => self.error(
                IssueType::Structure,
                format!("'{}' repeats: send a JSON array", el.name),
            ),
            (false, Value::Array(_)) => self.error(
                IssueType::Structure,
                format!(
                    "'{}' has at most one value: send it without an array",
                    el.name
                ),
            ),
            (false, v) => self.value(el, v),
        }
    }

    /// `_name`: the id and extensions of a primitive.
    fn primitive_element(
        &mut self,
        el: &'static ElementDef,
        v: &Value,
        parent: &Map<String, Value>,
    ) {
        let Some(element) = structure::type_def("Element") else {
            return;
        };
        if !matches!(
            structure::type_def(el.ty.name).map(|t| t.kind),
            Some(TypeKind::Primitive)
        ) {
            self.error(
                IssueType::Structure,
                format!("'_{}' is only allowed for primitive elements", el.name),
            );
            return;
        }
        let one = |w: &mut Self, item: &Value| match item {
            Value::Object(m) => w.object(element, m, false),
            _ => w.error(
                IssueType::Structure,
                "the extension part of a primitive must be an object",
            ),
        };
        match (el.many, v) {
            (true, Value::Array(items)) => {
                let values = parent.get(el.name).and_then(Value::as_array);
                let len = self.path.len();
                for (i, item) in items.iter().enumerate() {
                    let _ = write!(self.path, "[{i}]");
                    let value_missing = values.and_then(|v| v.get(i)).is_none_or(Value::is_null);
                    if item.is_null() {
                        if value_missing && values.is_some_and(|v| i < v.len()) {
                            self.error(IssueType::Structure, "a repeating primitive has neither a value nor extensions at this position");
                        }
                    } else {
                        one(self, item);
                        if value_missing {
                            self.missing_code(el);
                        }
                    }
                    self.path.truncate(len);
                }
            }
            (true, _) | (false, Value::Array(_)) => self.error(
                IssueType::Structure,
                format!("'_{}' has the wrong shape", el.name),
            ),
            (false, item) => {
                one(self, item);
                if !parent.contains_key(el.name) {
                    self.missing_code(el);
                }
            }
        }
    }

    /// A coded primitive with only extensions still needs a code if its binding is required.
    fn missing_code(&mut self, el: &'static ElementDef) {
        if let Some(b) = &el.binding {
            if b.strength == BindingStrength::Required && el.ty.name == "code" {
                self.error(
                    IssueType::CodeInvalid,
                    format!(
                        "no code provided, and a code is required from the value set {}",
                        b.value_set.url
                    ),
                );
            }
        }
    }

    fn value(&mut self, el: &'static ElementDef, v: &Value) {
        let ty = structure::model_name(el.ty.name);
        let Some(td) = structure::type_def(ty) else {
            return;
        };
        match td.kind {
            TypeKind::Primitive => self.primitive(el, ty, v),
            TypeKind::Resource | TypeKind::Abstract => match v {
                Value::Object(m) => {
                    let contained = el.name == "contained";
                    if contained {
                        invariants::contained_resource(self, m);
                    }
                    self.resource(m, contained);
                }
                _ => self.error(IssueType::Structure, "a resource must be a JSON object"),
            },
            TypeKind::Complex | TypeKind::Backbone => match v {
                Value::Object(m) => {
                    self.object(td, m, false);
                    self.typed(el, ty, m);
                }
                _ => self.error(
                    IssueType::Structure,
                    format!("{ty} must be a JSON object, not {}", kind_of(v)),
                ),
            },
        }
    }

    fn primitive(&mut self, el: &'static ElementDef, ty: &str, v: &Value) {
        let result = match (ty, v) {
            ("boolean", Value::Bool(_)) => Ok(()),
            ("integer" | "unsignedInt" | "positiveInt", Value::Number(n)) => {
                primitive::integer(ty, &n.to_string())
            }
            ("decimal", Value::Number(_)) => Ok(()),
            ("boolean" | "integer" | "unsignedInt" | "positiveInt" | "decimal", other) => {
                let want = if ty == "boolean" {
                    "true or false"
                } else {
                    "a JSON number"
                };
                self.error(
                    IssueType::Structure,
                    format!("a {ty} must be {want}, not {}", kind_of(other)),
                );
                return;
            }
            ("xhtml", Value::String(s)) => {
                narrative::check(self, s);
                Ok(())
            }
            (_, Value::String(s)) => {
                let r = primitive::check(ty, s);
                if r.is_ok() {
                    self.text_rules(ty, s);
                }
                if r.is_ok() && ty == "code" {
                    self.code_binding(el, None, s);
                }
                r
            }
            (_, other) => {
                self.error(
                    IssueType::Structure,
                    format!("a {ty} must be a JSON string, not {}", kind_of(other)),
                );
                return;
            }
        };
        if let Err(why) = result {
            let shown = match v {
                Value::String(s) if s.chars().count() > 80 => {
                    format!("\"{}...\"", s.chars().take(80).collect::<String>())
                }
                other => other.to_string(),
            };
            self.error(
                IssueType::Value,
                format!("{shown} is not a valid {ty}: {why}"),
            );
        }
    }

    /// Rules on string content beyond the lexical form.
    fn text_rules(&mut self, ty: &str, s: &str) {
        const MAX: usize = 1024 * 1024;
        if s.len() > MAX && ty != "base64Binary" {
            self.error(
                IssueType::TooLong,
                format!(
                    "a {ty} is longer than the permitted maximum of 1 MB ({} bytes)",
                    s.len()
                ),
            );
        }
        if ty == "markdown" && has_html_tag(s) {
            let msg = "the markdown contains what looks like an embedded HTML tag; it will be shown escaped";
            if self.options.no_html_in_markdown {
                self.error(IssueType::Value, msg);
            } else {
                self.issue(IssueSeverity::Warning, IssueType::Value, msg);
            }
        }
        // dom-3 counts `#id` (and `#`, the resource itself) in canonical, uri and url values
        // as references to a contained resource, like Reference.reference.
        if matches!(ty, "canonical" | "uri" | "url") {
            if let (Some(local), Some(frame)) = (s.strip_prefix('#'), self.frames.last_mut()) {
                frame.local_refs.push(local.to_string());
            }
        }
        if ty == "url" && is_example_url(s) {
            let msg = format!("example URLs do not belong in real data ({s})");
            if self.options.extensions == crate::ExtensionPolicy::Strict {
                self.error(IssueType::Value, msg);
            } else {
                self.issue(IssueSeverity::Warning, IssueType::Value, msg);
            }
        }
    }

    /// Checks of particular data types beyond their elements: bindings and references.
    fn typed(&mut self, el: &'static ElementDef, ty: &str, m: &Map<String, Value>) {
        match ty {
            "Coding" => {
                if let Some(system) = m.get("system").and_then(Value::as_str) {
                    self.code_system(system);
                }
                if let Some(code) = m.get("code").and_then(Value::as_str) {
                    let system = m.get("system").and_then(Value::as_str);
                    self.code_binding(el, system, code);
                }
            }
            "Attachment" => self.attachment(m),
            "CodeableConcept" => self.concept_binding(el, m),
            "Reference" => self.reference(el, m),
            "Extension" => self.extension(m),
            _ => {}
        }
        // SimpleQuantity: a Quantity profile that element types name (Range.low, ...).
        match el.ty.name {
            "SimpleQuantity" if m.contains_key("comparator") => self.error(
                IssueType::Invariant,
                "sqty-1: The comparator is not used on a SimpleQuantity",
            ),
            _ => {}
        }
    }

    /// An extension must be defined: by the R4 core (its value type is checked too) or by a
    /// domain the deployment accepts (the study's own canonical base, national profiles).
    fn extension(&mut self, m: &Map<String, Value>) {
        let Some(url) = m.get("url").and_then(Value::as_str) else {
            return;
        };
        if !url.contains(':') {
            return; // the name of a part of a complex extension
        }
        if let Some(def) = structure::core_extension(url) {
            if let Some(allowed) = def.contexts {
                let here = &self.ext_context;
                if !here.is_empty() && !allowed.iter().any(|a| here.iter().any(|h| h == a)) {
                    let msg = format!(
                        "the extension {url} is not allowed on {} (its definition allows it on {})",
                        here.get(1).map_or("this element", String::as_str),
                        allowed.join(", ")
                    );
                    // Like an unknown extension: refused in strict mode (the HL7 Java
                    // validator's default), a warning otherwise, as R4 asks receivers not to
                    // reject resources for their extensions.
                    if self.options.extensions == crate::ExtensionPolicy::Strict {
                        self.error(IssueType::Structure, msg);
                    } else {
                        self.issue(IssueSeverity::Warning, IssueType::Structure, msg);
                    }
                }
            }
            if let Some(key) = m.keys().find(|k| k.starts_with("value")) {
                let ty = &key["value".len()..];
                let ok = def
                    .value_types
                    .iter()
                    .any(|t| structure::json_type_suffix(t) == ty);
                if !ok {
                    self.error(
                        IssueType::Structure,
                        format!(
                            "the extension {url} allows values of type [{}], not {ty}",
                            def.value_types.join(", ")
                        ),
                    );
                }
            }
            return;
        }
        if self
            .options
            .extension_domains
            .iter()
            .any(|d| url.starts_with(d.as_str()))
        {
            return;
        }
        let modifier = self
            .path
            .rsplit('.')
            .next()
            .is_some_and(|leaf| leaf.starts_with("modifierExtension"));
        let domains = self.options.extension_domains.join(", ");
        if modifier {
            self.error(
                IssueType::Structure,
                format!("the modifier extension {url} is not defined by FHIR R4 or an accepted domain ({domains}); a modifier changes the meaning of what holds it, so it cannot be accepted unknown"),
            );
        } else if self.options.extensions == crate::ExtensionPolicy::Strict {
            self.error(
                IssueType::Structure,
                format!("the extension {url} is not defined by FHIR R4 or an accepted domain ({domains}), so it is not allowed here (strict extensions)"),
            );
        } else {
            self.issue(
                IssueSeverity::Warning,
                IssueType::Informational,
                format!("the extension {url} is not defined by FHIR R4 or an accepted domain ({domains}); it is kept as sent, unchecked"),
            );
        }
    }

    /// R4 (datatypes.html#Coding): the system is an absolute URI naming a code system; a
    /// relative name (`loinc`) or a ValueSet's canonical is not one.
    fn code_system(&mut self, system: &str) {
        let problem = if !system.contains(':') {
            Some(format!(
                "the code system '{system}' is not an absolute URI (LOINC is http://loinc.org)"
            ))
        } else if system.contains("/ValueSet/") {
            Some(format!(
                "'{system}' is a ValueSet, not a code system: a Coding names the code system its code is from"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            self.error_at("system", IssueType::Value, p);
        }
    }

    /// R4 (datatypes.html#Attachment): `size` is the number of bytes of the data and `hash`
    /// its SHA-1 in base64, when they are given beside inline data.
    fn attachment(&mut self, m: &Map<String, Value>) {
        use base64::Engine as _;
        use sha1::Digest as _;
        let Some(data) = m.get("data").and_then(Value::as_str) else {
            return;
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
            return; // the base64Binary check reports it
        };
        if let Some(size) = m.get("size").and_then(Value::as_u64) {
            if size != bytes.len() as u64 {
                self.error_at(
                    "size",
                    IssueType::Value,
                    format!(
                        "size {size} does not match the data ({} bytes)",
                        bytes.len()
                    ),
                );
            }
        }
        if let Some(hash) = m.get("hash").and_then(Value::as_str) {
            let actual =
                base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(&bytes));
            if hash != actual {
                self.error_at(
                    "hash",
                    IssueType::Value,
                    format!("hash {hash} is not the SHA-1 of the data ({actual})"),
                );
            }
        }
    }

    fn code_binding(&mut self, el: &'static ElementDef, system: Option<&str>, code: &str) {
        let Some(b) = &el.binding else { return };
        let vs = b.value_set;
        match b.strength {
            BindingStrength::Required => {
                if !vs.contains(system, code) {
                    self.error(
                        IssueType::CodeInvalid,
                        format!(
                            "'{code}'{} is not in the required value set {}{}",
                            system.map(|s| format!(" ({s})")).unwrap_or_default(),
                            vs.url,
                            allowed(vs)
                        ),
                    );
                }
            }
            BindingStrength::Extensible => {
                if let Some(s) = system {
                    if vs.has_system(s) && !vs.contains(Some(s), code) {
                        self.issue(
                            IssueSeverity::Warning,
                            IssueType::CodeInvalid,
                            format!(
                                "'{code}' is not a code of {s} in the extensible value set {}",
                                vs.url
                            ),
                        );
                    }
                }
            }
        }
    }

    fn concept_binding(&mut self, el: &'static ElementDef, m: &Map<String, Value>) {
        let Some(b) = &el.binding else { return };
        let codings: Vec<(Option<&str>, &str)> = m
            .get("coding")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| {
                        Some((
                            c.get("system").and_then(Value::as_str),
                            c.get("code")?.as_str()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let vs = b.value_set;
        match b.strength {
            BindingStrength::Required => {
                if !codings.iter().any(|(s, c)| vs.contains(*s, c)) {
                    let shown: Vec<String> = codings
                        .iter()
                        .map(|(s, c)| format!("{}#{c}", s.unwrap_or("")))
                        .collect();
                    self.error(
                        IssueType::CodeInvalid,
                        format!(
                            "no coding{} is from the required value set {}{}",
                            if shown.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", shown.join(", "))
                            },
                            vs.url,
                            allowed(vs)
                        ),
                    );
                }
            }
            BindingStrength::Extensible => {
                for (s, c) in &codings {
                    if let Some(s) = s {
                        if vs.has_system(s)
                            && !vs.contains(Some(s), c)
                            && !codings.iter().any(|(s2, c2)| vs.contains(*s2, c2))
                        {
                            self.issue(
                                IssueSeverity::Warning,
                                IssueType::CodeInvalid,
                                format!(
                                    "'{c}' is not a code of {s} in the extensible value set {}",
                                    vs.url
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    fn reference(&mut self, el: &'static ElementDef, m: &Map<String, Value>) {
        let targets = el.ty.targets;
        let any = targets.is_empty() || targets.contains(&"Resource");
        let reference = m.get("reference").and_then(Value::as_str);
        let mut target: Option<&'static str> = None;
        if let Some(r) = reference {
            if let Some(local) = r.strip_prefix('#') {
                if let Some(frame) = self.frames.last_mut() {
                    frame.local_refs.push(local.to_string());
                    if !local.is_empty() {
                        match frame.contained.iter().find(|(id, _)| id == local) {
                            Some((_, t)) => target = Some(t),
                            None => {
                                self.error_at(
                                    "reference",
                                    IssueType::NotFound,
                                    format!("'{r}' points at no contained resource (ref-1)"),
                                );
                                return;
                            }
                        }
                    }
                }
            } else if r.starts_with("urn:") {
                target = self.bundles.last().and_then(|b| b.by_full_url(r));
                if target.is_none() && self.bundles.last().is_some_and(|b| b.self_contained()) {
                    self.error_at(
                        "reference",
                        IssueType::NotFound,
                        format!("'{r}' is not an entry of this Bundle"),
                    );
                    return;
                }
            } else {
                target = reference_type(r);
                if target.is_none() && !r.contains(':') {
                    self.error_at(
                        "reference",
                        IssueType::Value,
                        format!("'{r}' is not a reference of the form Type/id"),
                    );
                    return;
                }
                // R4 asks a document to carry what its Composition references, not the
                // signer (`Bundle.signature.who`, `onBehalfOf`): those may live elsewhere.
                let tail = match self.path.rsplit_once(".entry[") {
                    Some((_, rest)) => rest.split_once("].resource").map_or("", |(_, t)| t),
                    None => self.path.split_once('.').map_or("", |(_, t)| t),
                };
                let in_signature = tail.trim_start_matches('.').starts_with("signature");
                if let Some(problem) = self
                    .bundles
                    .last()
                    .filter(|_| !in_signature)
                    .and_then(|b| b.resolve_relative(r))
                {
                    self.error_at("reference", IssueType::NotFound, problem);
                    return;
                }
            }
        }
        if let Some(t) = m.get("type").and_then(Value::as_str) {
            if let Some(found) = target {
                if found != t && found != "Resource" {
                    self.error_at(
                        "type",
                        IssueType::Invalid,
                        format!("type '{t}' does not match the reference to a {found}"),
                    );
                }
            }
            if target.is_none() {
                target = resource_type::canonical(t);
            }
        }
        if let Some(t) = target {
            if !any && t != "Resource" && !targets.contains(&t) {
                self.error(
                    IssueType::Structure,
                    format!(
                        "this reference may point at {}, not at {t}",
                        targets.join(", ")
                    ),
                );
            }
        }
    }
}

/// The resource type of a literal reference: `Type/id`, `Type/id/_history/v` or an absolute
/// URL ending in one of them.
pub(crate) fn reference_type(r: &str) -> Option<&'static str> {
    let r = r.split(['?', '#']).next().unwrap_or(r);
    let (t, id) = trialbridge_fhir::reference::literal_target(r)?;
    trialbridge_fhir::id::is_valid_id(id).then_some(t)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn allowed(vs: &structure::ValueSetDef) -> String {
    let codes: Vec<&str> = vs
        .includes
        .iter()
        .filter_map(|i| i.codes)
        .flatten()
        .copied()
        .take(12)
        .collect();
    if codes.is_empty() {
        String::new()
    } else {
        format!(
            " (allowed: {}{})",
            codes.join(", "),
            if codes.len() == 12 { ", ..." } else { "" }
        )
    }
}

fn has_html_tag(s: &str) -> bool {
    s.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || w[1] == b'/'))
}

fn is_example_url(s: &str) -> bool {
    let host = s
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', ':', '?']).next())
        .unwrap_or("");
    ["example.org", "example.com", "example.net"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}
