"""Parses HL7 v2 files with python-hl7 (PyPI hl7), each N times; prints mean microseconds per
parse. Segments are separated by CR as MLLP delivers them (the fixtures use LF)."""
import json
import sys
import time

import hl7

n = int(sys.argv[1])
for f in sys.argv[2:]:
    text = open(f, encoding="utf-8-sig").read().replace("\r\n", "\r").replace("\n", "\r")
    for _ in range(200):
        hl7.parse(text)
    t = time.perf_counter()
    for _ in range(n):
        m = hl7.parse(text)
    us = (time.perf_counter() - t) * 1e6 / n
    print(json.dumps({"parser": "python-hl7 " + hl7.__version__, "file": f, "segments": len(m), "us_per_parse": round(us, 2)}))
