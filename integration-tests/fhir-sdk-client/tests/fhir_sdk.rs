//! fhir-sdk (crates.io), the Rust FHIR client the design card names, against the trial store.
//!
//! fhir-sdk has no R4 models: its versions are STU3, R4B and R5, and its R4B client declares
//! `fhirVersion=4.3` in `Accept` and `Content-Type` on every request. The trial store serves
//! FHIR 4.0 (R4) only, and R4 (http.html, "FHIR Version parameter") has a server answer a
//! version it does not serve with 406 (415 for a body): so the typed client is told exactly
//! that, in an OperationOutcome naming the header, and that is what the first test checks.
//! The second shows what does work: fhir-sdk's typed R4B models for the resources whose shape
//! R4B did not change (Patient, Observation) build resources the store accepts and read what
//! it serves, over plain R4 HTTP.

use fhir_sdk::client::{Client, Error, ResourceWrite};
use fhir_sdk::r4b::codes::{AdministrativeGender, ObservationStatus};
use fhir_sdk::r4b::resources::{Observation, Patient};
use fhir_sdk::r4b::types::{CodeableConcept, Coding, HumanName, Quantity, Reference};
use fhir_sdk::version::FhirR4B;
use integration_tests::{client, TestStore};

fn sdk_client(s: &TestStore) -> Client<FhirR4B> {
    let settings = fhir_sdk::client::RequestSettings::default().header(
        fhir_sdk::header::AUTHORIZATION,
        format!("Bearer {}", integration_tests::system_token())
            .parse()
            .unwrap(),
    );
    Client::builder()
        .base_url(format!("{}/", s.base).parse().unwrap())
        .request_settings(settings)
        .build()
        .unwrap()
}

/// The status and the diagnostics of a refusal, whatever form fhir-sdk gives it.
fn refusal(e: &Error) -> (u16, String) {
    match e {
        Error::OperationOutcomeR4B(status, outcome) => (
            status.as_u16(),
            outcome
                .issue
                .iter()
                .flatten()
                .filter_map(|i| i.diagnostics.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Error::Response(status, body) => (status.as_u16(), body.clone()),
        other => panic!("not a refusal: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_r4b_client_is_told_the_store_serves_r4_only() {
    let s = TestStore::start().await;
    let sdk = sdk_client(&s);
    let e = sdk.capabilities().await.unwrap_err();
    let (status, why) = refusal(&e);
    assert_eq!(status, 406, "{why}");
    assert!(
        why.contains("fhirVersion=4.3") && why.contains("4.0"),
        "{why}"
    );
    // A write: the body's version is refused too, and nothing is stored.
    let mut patient = Patient::builder().active(true).build().unwrap();
    let e = patient.create(&sdk).await.unwrap_err();
    let (status, why) = refusal(&e);
    assert!(matches!(status, 406 | 415), "{status} {why}");
    assert!(why.contains("fhirVersion"), "{why}");
    let r = integration_tests::get_json(&s.url("Patient?_summary=count")).await;
    assert_eq!(r["total"], 0, "{r}");
}

/// Writes an R4B-built resource with plain R4 HTTP; it must be created.
async fn put(s: &TestStore, path: &str, resource: &impl serde::Serialize) {
    let r = client()
        .put(s.url(path))
        .header("content-type", "application/fhir+json")
        .body(serde_json::to_string(resource).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Reads `path` with plain R4 HTTP into an R4B model.
async fn get<T: serde::de::DeserializeOwned>(s: &TestStore, path: &str) -> T {
    serde_json::from_value(integration_tests::get_json(&s.url(path)).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_r4b_models_write_and_read_patients_and_observations() {
    let s = TestStore::start().await;
    let patient = Patient::builder()
        .id("sdk-p".to_owned())
        .gender(AdministrativeGender::Female)
        .name(vec![Some(
            HumanName::builder()
                .family("Muster".to_owned())
                .build()
                .unwrap(),
        )])
        .build()
        .unwrap();
    put(&s, "Patient/sdk-p", &patient).await;
    let observation = Observation::builder()
        .id("sdk-o".to_owned())
        .status(ObservationStatus::Final)
        .code(
            CodeableConcept::builder()
                .coding(vec![Some(
                    Coding::builder()
                        .system("http://loinc.org".to_owned())
                        .code("72514-3".to_owned())
                        .build()
                        .unwrap(),
                )])
                .build()
                .unwrap(),
        )
        .subject(
            Reference::builder()
                .reference("Patient/sdk-p".to_owned())
                .build()
                .unwrap(),
        )
        .value(fhir_sdk::r4b::resources::ObservationValue::Quantity(
            Quantity::builder()
                .value(4.0)
                .unit("{score}".to_owned())
                .system("http://unitsofmeasure.org".to_owned())
                .code("{score}".to_owned())
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    put(&s, "Observation/sdk-o", &observation).await;
    // Read back into the typed models: what the store serves is what was built, plus meta.
    let read: Patient = get(&s, "Patient/sdk-p").await;
    assert_eq!(read.gender, Some(AdministrativeGender::Female));
    assert_eq!(
        read.meta.as_ref().and_then(|m| m.version_id.as_deref()),
        Some("1")
    );
    let read: Observation = get(&s, "Observation/sdk-o").await;
    assert_eq!(read.status, ObservationStatus::Final);
    assert_eq!(read.subject, observation.subject);
    // A searchset Bundle of the store reads as an R4B Bundle.
    let bundle: fhir_sdk::r4b::resources::Bundle =
        get(&s, "Observation?subject=Patient/sdk-p").await;
    let entries: Vec<_> = bundle.entry.iter().flatten().collect();
    assert_eq!(entries.len(), 1);
    assert!(matches!(
        entries[0].resource.as_ref(),
        Some(fhir_sdk::r4b::resources::Resource::Observation(o)) if o.id.as_deref() == Some("sdk-o")
    ));
}
