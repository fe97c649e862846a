"""Drives a running trialbridge store with fhirpy (a third-party FHIR client).

Usage: python fhirpy_walkthrough.py FHIR_BASE_URL
Exits non-zero (with the failing step) if any interaction misbehaves.
"""
import os
import sys

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import BaseFHIRError, OperationOutcome, ResourceNotFound

base = sys.argv[1]
# A bearer token from the test (a system token). Updating the Patient needs no reason; deleting
# recorded clinical data does (GCP): the delete goes with an X-Reason-For-Change header.
auth = f"Bearer {os.environ['TRIALBRIDGE_TOKEN']}"
client = SyncFHIRClient(base, authorization=auth, extra_headers={"Accept": "application/fhir+json"})


def step(name):
    print(f"fhirpy: {name}", flush=True)


step("create")
patient = client.resource(
    "Patient",
    identifier=[{"system": "urn:mesemcart:subject", "value": "MC-01-007"}],
    gender="female",
    birthDate="1990",
)
patient.save()
pid = patient.id
assert pid, "server assigned no id"
assert patient["meta"]["versionId"] == "1", patient["meta"]

step("read")
read = client.reference("Patient", pid).to_resource()
assert read["gender"] == "female" and read["birthDate"] == "1990", read

step("update with If-Match")
matching = SyncFHIRClient(base, authorization=auth, extra_headers={"If-Match": 'W/"1"'})
updated = matching.resource("Patient", **{**read.serialize(), "gender": "other"})
updated.save()
assert updated["meta"]["versionId"] == "2", updated["meta"]

step("stale If-Match is refused")
try:
    updated2 = matching.resource("Patient", **{**updated.serialize(), "gender": "male"})
    updated2.save()
    raise AssertionError("a stale If-Match was accepted")
except BaseFHIRError as e:  # fhirpy reports a 412 as MultipleResourcesFound
    assert '"code":"conflict"' in str(e), e

step("history")
history = client.execute(f"Patient/{pid}/_history", method="get")
versions = [e["resource"]["meta"]["versionId"] for e in history["entry"]]
assert versions == ["2", "1"], versions

step("transaction")
bundle = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:6c3f7a4e-0c1d-4a57-9a40-1a2b3c4d5e6f",
            "resource": {"resourceType": "Observation", "status": "final",
                         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                         "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}]},
                         "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2026-03-02",
                         "valueQuantity": {"value": 24.5, "unit": "kg/m2", "system": "http://unitsofmeasure.org", "code": "kg/m2"}},
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "resource": {"resourceType": "Observation", "id": "walk-height", "status": "final",
                         "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                         "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                         "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2026-03-02",
                         "valueQuantity": {"value": 172, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}},
            "request": {"method": "PUT", "url": "Observation/walk-height"},
        },
    ],
}
response = client.execute("", method="post", data=bundle)
assert response["type"] == "transaction-response", response
statuses = [e["response"]["status"] for e in response["entry"]]
assert statuses == ["201 Created", "201 Created"], statuses

step("search and fetch_all")
found = client.resources("Observation").search(subject=f"Patient/{pid}").limit(1).fetch_all()
assert sorted(o["code"]["coding"][0]["code"] for o in found) == ["39156-5", "8302-2"], found

step("delete without a reason is refused")
try:
    client.reference("Patient", pid).to_resource().delete()
    raise AssertionError("a delete without a reason for change was accepted")
except OperationOutcome as e:
    assert "X-Reason-For-Change" in str(e), e

step("delete with a reason")
with_reason = SyncFHIRClient(
    base,
    authorization=auth,
    extra_headers={"Accept": "application/fhir+json", "X-Reason-For-Change": "entered in error"},
)
with_reason.reference("Patient", pid).to_resource().delete()
try:
    client.reference("Patient", pid).to_resource()
    raise AssertionError("a deleted Patient was still readable")
except (ResourceNotFound, OperationOutcome, BaseFHIRError):
    pass

print("fhirpy: all steps passed")
