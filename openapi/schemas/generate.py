#!/usr/bin/env python3
"""Writes the MesemCart trial-profile JSON Schemas of this folder from the measure table
below (codes from the study's ValueSet mesemcart-observation-codes, units and ranges from
DOMAIN.md section 3). Run from this folder; the output is committed."""
import json

BASE = "https://fhir.mesemcart-sponsor.example"
MEAS = BASE + "/CodeSystem/mesemcart-measures"
GRADES = BASE + "/CodeSystem/mesemcart-grades"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def coding(system, code):
    return {"type": "object", "required": ["system", "code"],
            "properties": {"system": {"const": system}, "code": {"const": code}}}


def has_code(system, code):
    return {"required": ["code"], "properties": {"code": {"required": ["coding"], "properties": {
        "coding": {"contains": coding(system, code)}}}}}


def quantity(unit, minimum=None, maximum=None, exclusive_min=None, integer=False):
    v = {"type": "integer" if integer else "number"}
    if minimum is not None:
        v["minimum"] = minimum
    if maximum is not None:
        v["maximum"] = maximum
    if exclusive_min is not None:
        v["exclusiveMinimum"] = exclusive_min
    return {"required": ["valueQuantity"], "properties": {"valueQuantity": {
        "type": "object", "required": ["value", "system", "code"],
        "properties": {"value": v, "system": {"const": UCUM}, "code": {"const": unit}}}}}


def graded():
    return {"required": ["valueCodeableConcept"], "properties": {"valueCodeableConcept": {
        "required": ["coding"], "properties": {"coding": {"contains": {
            "properties": {"system": {"const": GRADES}}, "required": ["system", "code"]}}}}}}


# (system, code, what the rule says, schema the value must meet)
MEASURES = [
    (LOINC, "29463-7", "body weight in kg", quantity("kg", exclusive_min=0, maximum=400)),
    (LOINC, "8302-2", "body height in cm", quantity("cm", exclusive_min=0, maximum=260)),
    (LOINC, "39156-5", "BMI in kg/m2", quantity("kg/m2", exclusive_min=0, maximum=150)),
    (LOINC, "38214-3", "pain VAS 0-100 mm", quantity("mm", 0, 100)),
    (LOINC, "72514-3", "pain NRS 0-10", quantity("{score}", 0, 10)),
    (SCT, "736534008", "EQ-5D-5L index -0.661..1", quantity("1", -0.661, 1)),
    (MEAS, "ikdc-subjective", "IKDC 0-100", quantity("{score}", 0, 100)),
    (MEAS, "lysholm", "Lysholm 0-100", quantity("{score}", 0, 100)),
    (MEAS, "tegner", "Tegner integer 0-10", quantity("{score}", 0, 10, integer=True)),
    (MEAS, "koos-pain", "KOOS 0-100", quantity("{score}", 0, 100)),
    (MEAS, "koos-symptoms", "KOOS 0-100", quantity("{score}", 0, 100)),
    (MEAS, "koos-adl", "KOOS 0-100", quantity("{score}", 0, 100)),
    (MEAS, "koos-sport-rec", "KOOS 0-100", quantity("{score}", 0, 100)),
    (MEAS, "koos-qol", "KOOS 0-100", quantity("{score}", 0, 100)),
    (MEAS, "mocart-2-total", "MOCART 2.0 0-100", quantity("{score}", 0, 100)),
    (MEAS, "icrs-cartilage-repair", "ICRS repair assessment 0-12", quantity("{score}", 0, 12, integer=True)),
    (MEAS, "defect-area", "defect area > 0 cm2", quantity("cm2", exclusive_min=0, maximum=50)),
    (MEAS, "age-at-consent", "age at consent in years", quantity("a", 0, 130)),
    (MEAS, "icrs-grade", "ICRS grade from mesemcart-grades", graded()),
    (MEAS, "icrs-ocd-grade", "ICRS-OCD grade from mesemcart-grades", graded()),
]

STUDY_REF = {"type": "object", "required": ["reference"], "properties": {"reference": {
    "type": "string", "pattern": "^ResearchStudy/mesemcart(-site-[0-9]{2})?$"}}}
PATIENT_REF = {"type": "object", "required": ["reference"], "properties": {"reference": {
    "type": "string", "pattern": "^Patient/[A-Za-z0-9.-]{1,64}$"}}}
STUDY_LINK = {"type": "array", "contains": {"type": "object", "required": ["url", "valueReference"],
    "properties": {"url": {"const": STUDY_EXT}, "valueReference": STUDY_REF}}}

OBSERVATION = {
    "$schema": DRAFT,
    "$id": BASE + "/StructureDefinition/mesemcart-observation",
    "title": "MesemCart trial Observation",
    "description": "A trial Observation: linked to the MesemCart study (workflow-researchStudy), about a Patient, coded from ValueSet mesemcart-observation-codes, with the measure's UCUM unit and range. Applies to Observations that claim this profile or carry the workflow-researchStudy extension pointing at a MesemCart study.",
    "type": "object",
    "required": ["resourceType", "extension", "status", "code", "subject", "effectiveDateTime"],
    "properties": {
        "resourceType": {"const": "Observation"},
        "status": {"enum": ["preliminary", "final", "amended", "corrected", "entered-in-error"]},
        "effectiveDateTime": {"type": "string"},
        "extension": STUDY_LINK,
        "subject": PATIENT_REF,
        "code": {"type": "object", "required": ["coding"], "properties": {"coding": {
            "type": "array", "contains": {"anyOf": [coding(s, c) for s, c, _, _ in MEASURES]}}}},
    },
    "allOf": [{"if": has_code(s, c), "then": then, "description": d} for s, c, d, then in MEASURES],
}

RESEARCH_SUBJECT = {
    "$schema": DRAFT,
    "$id": BASE + "/StructureDefinition/mesemcart-research-subject",
    "title": "MesemCart ResearchSubject",
    "description": "A MesemCart subject: the pseudonymous subject id (MC-<site>-<number>) as identifier, enrolled at a site study (ResearchStudy/mesemcart-site-NN), an individual, and a reason when off-study. Applies to ResearchSubjects that claim this profile or whose study is a MesemCart study.",
    "type": "object",
    "required": ["resourceType", "identifier", "status", "study", "individual"],
    "properties": {
        "resourceType": {"const": "ResearchSubject"},
        "status": {"type": "string"},
        "identifier": {"type": "array", "contains": {"type": "object", "required": ["system", "value"], "properties": {
            "system": {"const": BASE + "/sid/subject"},
            "value": {"type": "string", "pattern": "^MC-[0-9]{2}-[0-9]{3}$"}}}},
        "study": {"type": "object", "required": ["reference"], "properties": {"reference": {
            "type": "string", "pattern": "^ResearchStudy/mesemcart-site-[0-9]{2}$"}}},
        "individual": PATIENT_REF,
    },
    "allOf": [{
        "if": {"properties": {"status": {"const": "off-study"}}, "required": ["status"]},
        "then": {"required": ["extension"], "properties": {"extension": {"contains": {
            "type": "object", "required": ["url"],
            "properties": {"url": {"const": BASE + "/StructureDefinition/off-study-reason"}}}}}},
        "description": "off-study needs the off-study-reason extension",
    }],
}

IMPLANTATION = {
    "$schema": DRAFT,
    "$id": BASE + "/StructureDefinition/mesemcart-implantation",
    "title": "MesemCart implantation Procedure",
    "description": "The implantation of MesemCart: coded mesemcart-implantation, about a Patient, performed at a date, linked to the study, naming the cell-product batch (a contained Medication with batch.lotNumber) and the collagen-carrier lot (a contained Device with lotNumber), both referenced from usedReference. Applies to Procedures with that code or that claim this profile.",
    "type": "object",
    "required": ["resourceType", "status", "code", "subject", "contained", "usedReference", "extension"],
    "anyOf": [{"required": ["performedDateTime"]}, {"required": ["performedPeriod"]}],
    "properties": {
        "resourceType": {"const": "Procedure"},
        "status": {"type": "string"},
        "code": {"type": "object", "required": ["coding"], "properties": {"coding": {
            "contains": coding(MEAS, "mesemcart-implantation")}}},
        "subject": PATIENT_REF,
        "extension": STUDY_LINK,
        "contained": {"type": "array", "allOf": [
            {"contains": {"type": "object", "required": ["resourceType", "batch"], "properties": {
                "resourceType": {"const": "Medication"},
                "batch": {"type": "object", "required": ["lotNumber"], "properties": {
                    "lotNumber": {"type": "string", "minLength": 1}}}}}},
            {"contains": {"type": "object", "required": ["resourceType", "lotNumber"], "properties": {
                "resourceType": {"const": "Device"}, "lotNumber": {"type": "string", "minLength": 1}}}},
        ]},
        "usedReference": {"type": "array", "minItems": 2, "items": {"type": "object", "required": ["reference"],
            "properties": {"reference": {"type": "string", "pattern": "^#"}}}},
    },
}

if __name__ == "__main__":
    for name, schema in [("mesemcart-observation", OBSERVATION),
                         ("mesemcart-research-subject", RESEARCH_SUBJECT),
                         ("mesemcart-implantation", IMPLANTATION)]:
        with open(name + ".schema.json", "w", encoding="utf-8") as f:
            json.dump(schema, f, indent=2, ensure_ascii=False)
            f.write("\n")
