//! FHIR R4 (4.0.1) JSON as trialbridge speaks it.
//!
//! This crate is the only place that knows FHIR JSON details: which resource types exist,
//! what an id looks like, how an OperationOutcome is shaped, which search parameters the
//! specification defines and how their values are pulled out of a resource. It does no I/O.
//!
//! Resources are kept as `serde_json::Value` built with `preserve_order` and
//! `arbitrary_precision`, so that element order and decimal text (`1.50`) survive a round trip.

pub mod generated {
    //! Tables generated from the official R4 definitions by `codegen/generate.py`.
    pub mod compartments;
    pub mod profiles;
    pub mod resource_types;
    pub mod search_parameters;
    pub mod structure;
    pub mod value_sets;
}
pub mod bundle;
pub mod date;
pub mod id;
pub mod index;
pub mod instant;
pub mod json;
pub mod outcome;
pub mod path;
pub mod reference;
pub mod resource_type;
pub mod search;
pub mod search_param;
pub mod structure;

pub use outcome::{IssueSeverity, IssueType, OperationOutcome, OutcomeIssue};
pub use resource_type::is_resource_type;
