#!/usr/bin/env python3
"""Writes N Observations as NDJSON by varying subject, date and value of the 1,000 real
Observations in bench/data/observations-1000.ndjson (deterministic: the same N gives the same file).

    python3 bench/gen_observations.py 1000000 /tmp/obs-1m.ndjson

Subjects cycle through Patient/p00000..p00999 (100 Observations each per 100,000); effective dates spread over 2020-2025; numeric
valueQuantity values are scaled by a factor between 0.8 and 1.2.
"""
import json
import random
import sys

n = int(sys.argv[1])
out = sys.argv[2]
base = [json.loads(line) for line in open("bench/data/observations-1000.ndjson", encoding="utf-8")]
# As bench/lib.sh writable_data: the invalid performer (an Encounter) of the clinical-gender
# example becomes a Practitioner, so that every server stores every Observation.
for o in base:
    if o.get("performer") == [{"reference": "Encounter/example"}]:
        o["performer"] = [{"reference": "Practitioner/example"}]
rng = random.Random(42)
with open(out, "w", encoding="utf-8") as f:
    for i in range(n):
        o = dict(base[i % len(base)])
        o["id"] = f"gen-{i:07d}"
        o["subject"] = {"reference": f"Patient/p{i % 1000:05d}"}
        for k in ("effectivePeriod", "effectiveInstant", "effectiveTiming"):
            o.pop(k, None)
        day = rng.randrange(0, 6 * 365)
        y, d = 2020 + day // 365, day % 365
        month, dom = 1 + d // 31 if d // 31 < 12 else 12, 1 + d % 28
        o["effectiveDateTime"] = f"{y:04d}-{month:02d}-{dom:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"
        q = o.get("valueQuantity")
        if isinstance(q, dict) and isinstance(q.get("value"), (int, float)):
            q = dict(q)
            q["value"] = round(q["value"] * rng.uniform(0.8, 1.2), 2)
            o["valueQuantity"] = q
        # A contained resource that only the replaced subject pointed at would now be
        # unreferenced (dom-3): keep only the contained resources something still refers to.
        if "contained" in o:
            text = json.dumps({k: v for k, v in o.items() if k != "contained"})
            kept = [c for c in o["contained"] if f'"#{c.get("id")}"' in text]
            if kept:
                o["contained"] = kept
            else:
                del o["contained"]
        f.write(json.dumps(o, separators=(",", ":")) + "\n")
