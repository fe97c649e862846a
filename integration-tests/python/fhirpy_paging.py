"""fhirpy pages through a large search: .search(...).sort('-date').limit(n) with fetch_all().

Usage: python fhirpy_paging.py FHIR_BASE_URL EXPECTED_COUNT
"""
import os
import sys

from fhirpy import SyncFHIRClient

base, expected = sys.argv[1], int(sys.argv[2])
client = SyncFHIRClient(base, authorization=f"Bearer {os.environ['TRIALBRIDGE_TOKEN']}")
found = client.resources("Observation").search(code="http://loinc.org|29463-7").sort("-date").limit(37).fetch_all()
ids = [o["id"] for o in found]
assert len(ids) == expected, f"{len(ids)} resources, expected {expected}"
assert len(set(ids)) == len(ids), "a resource came twice"
dates = [o["effectiveDateTime"] for o in found]
assert dates == sorted(dates, reverse=True), "not in -date order"
print(f"fhirpy: {len(ids)} resources, each once, newest first")
