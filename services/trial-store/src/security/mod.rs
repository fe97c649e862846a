//! Security: who is calling ([`Caller`], the permission checks, the site of a written
//! resource) and the audit trail ([`audit`]). Used by the other rooms; imports none of them
//! (only the shared `error` vocabulary).

pub mod audit;
mod caller;
pub mod sign_in;

pub use caller::{in_site_namespace, named_site, resource_site, site_namespace, Caller};
