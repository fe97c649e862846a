"""fhirpy against trialbridge: PATCH (fhirpy sends a JSON merge patch as application/json),
count() (which asks _count=0), and get_or_create (criteria in the URL of a POST, which
trialbridge refuses with a 400 rather than ignore them and make a duplicate).

Usage: python fhirpy_patch_count.py FHIR_BASE_URL
"""
import os
import sys

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome

base = sys.argv[1]
client = SyncFHIRClient(
    base,
    authorization=f"Bearer {os.environ['TRIALBRIDGE_TOKEN']}",
    extra_headers={"Accept": "application/fhir+json"},
)

patient = client.resource("Patient", gender="female", birthDate="1990",
                          identifier=[{"system": "urn:mesemcart:subject", "value": "MC-01-042"}])
patient.save()
print("fhirpy: created", patient.id, flush=True)

patched = patient.patch(gender="male")
assert patched["gender"] == "male", patched
again = client.reference("Patient", patient.id).to_resource()
assert again["gender"] == "male" and again["birthDate"] == "1990", again
assert again["meta"]["versionId"] == "2", again["meta"]
print("fhirpy: patch", flush=True)

n = client.resources("Patient").count()
assert n == 1, n
print("fhirpy: count", flush=True)

try:
    client.resources("Patient").search(identifier="urn:mesemcart:subject|MC-01-099").get_or_create(
        client.resource("Patient", gender="other"))
except OperationOutcome as e:
    assert "If-None-Exist" in str(e), e
    print("fhirpy: get_or_create refused", flush=True)
else:
    raise SystemExit("get_or_create was not refused")
assert client.resources("Patient").count() == 1
print("all steps passed")
