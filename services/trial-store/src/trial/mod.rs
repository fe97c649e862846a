//! The trial's semantics on top of FHIR's: the MesemCart protocol rules (plugged into every
//! write through `fhir::WriteRules`), the study definition and its loading, and the monitor's
//! operations (source data verification, version differences, verification marks).

pub mod monitor;
pub mod protocol;
pub mod study;
