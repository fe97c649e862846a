//! What a route's path names, checked once: the resource type (`{rtype}`, an R4 type: 404
//! otherwise) and the logical id (`{id}`, FHIR id syntax: 400 otherwise), as extractors, so
//! that no handler repeats `Path -> known_type -> checked_id`.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use crate::error::StoreError;
use crate::fhir::interactions::{checked_id, known_type};

/// `/fhir/{rtype}`: a known resource type.
pub struct TypeName(pub &'static str);

impl<S: Send + Sync> FromRequestParts<S> for TypeName {
    type Rejection = StoreError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, StoreError> {
        let Path(t) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(known_type(&t)?))
    }
}

/// `/fhir/{rtype}/{id}`: a known resource type and a valid id.
pub struct Instance {
    /// The resource type.
    pub rt: &'static str,
    /// The logical id.
    pub id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Instance {
    type Rejection = StoreError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, StoreError> {
        let Path((t, id)) = Path::<(String, String)>::from_request_parts(parts, state).await?;
        let rt = known_type(&t)?;
        checked_id(rt, &id)?;
        Ok(Self { rt, id })
    }
}

/// `/fhir/{rtype}/{id}/_history/{vid}`: a known type, a valid id and the version as written.
pub struct VersionPath {
    /// The resource type.
    pub rt: &'static str,
    /// The logical id.
    pub id: String,
    /// The version id as written in the URL.
    pub vid: String,
}

impl<S: Send + Sync> FromRequestParts<S> for VersionPath {
    type Rejection = StoreError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, StoreError> {
        let Path((t, id, vid)) =
            Path::<(String, String, String)>::from_request_parts(parts, state).await?;
        let rt = known_type(&t)?;
        checked_id(rt, &id)?;
        Ok(Self { rt, id, vid })
    }
}
