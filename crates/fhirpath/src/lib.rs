//! FHIRPath (N1 2.0.0 with the FHIR R4 additions) over FHIR R4 JSON.
//!
//! An expression is parsed once ([`Expression::parse`]) and evaluated on any number of
//! resources ([`Expression::evaluate`]); element types come from the generated R4 model of
//! `trialbridge-fhir` (choice elements such as `Observation.value` resolve to `valueQuantity`,
//! `ofType(Quantity)` and `is`/`as` know each node's FHIR type). No I/O: `resolve()` and the
//! terminology functions are not offered, and say so when called.
//!
//! The official FHIRPath R4 test cases run in `tests/official.rs`; their pass rate, group by
//! group, is the measure of what is built.

mod eval;
pub mod invariants;
pub mod parse;
pub mod patch;

pub use eval::{Item, Json, Node};
pub use parse::Expr;

use std::collections::HashMap;

/// Why an expression cannot be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not FHIRPath.
    #[error("syntax: {0}")]
    Syntax(String),
    /// The expression is well-formed but means nothing (an unknown function, wrong argument
    /// count).
    #[error("semantics: {0}")]
    Semantic(String),
    /// A member name that the element's type does not have (`Patient.foo`): the model says
    /// it can never hold a value. Callers that walk nested structures where a name exists at
    /// some levels only (a SQL on FHIR `repeat`) read it as empty.
    #[error("semantics: {ty} has no element '{name}'")]
    NoSuchElement {
        /// The type navigated from.
        ty: String,
        /// The member name.
        name: String,
    },
    /// Evaluation failed (a collection of several items where one is required, ...).
    #[error("evaluation: {0}")]
    Execution(String),
}

/// A parsed expression, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Expression {
    text: String,
    expr: Expr,
}

/// Values of `%name` variables (beyond `%resource`, `%context`, `%ucum`, `%sct`, `%loinc`).
pub type Variables<'a> = HashMap<String, Vec<Item<'a>>>;

impl Expression {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        Ok(Self {
            text: text.to_string(),
            expr: parse::parse(text)?,
        })
    }

    pub(crate) fn expr(&self) -> &Expr {
        &self.expr
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates on `resource` (a FHIR R4 resource as JSON, also `%resource` and `%context`).
    pub fn evaluate<'a>(&self, resource: &'a serde_json::Value) -> Result<Vec<Item<'a>>, Error> {
        self.evaluate_with(resource, &Variables::new())
    }

    /// Evaluates with `focus` as the context (`$this`) inside `resource` (`%resource`, from
    /// [`Item::resource`]): how a ViewDefinition evaluates a column inside a `forEach`.
    pub fn evaluate_at<'a>(
        &self,
        focus: &Item<'a>,
        resource: &Item<'a>,
        vars: &Variables<'a>,
    ) -> Result<Vec<Item<'a>>, Error> {
        eval::evaluate_at(&self.expr, focus, resource, vars)
    }

    /// Evaluates with more `%` variables.
    pub fn evaluate_with<'a>(
        &self,
        resource: &'a serde_json::Value,
        vars: &Variables<'a>,
    ) -> Result<Vec<Item<'a>>, Error> {
        eval::evaluate(&self.expr, resource, vars)
    }
}
