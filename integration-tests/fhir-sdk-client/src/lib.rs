//! No library: this crate holds `tests/fhir_sdk.rs`, which drives the trial store with
//! fhir-sdk's typed R4B client and models. It is a crate of its own so that fhir-sdk's
//! generated models (a long compile) are built only for that test.
