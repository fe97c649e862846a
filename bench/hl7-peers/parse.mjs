// Parses HL7 v2 files with npm hl7v2 1.8.0, each N times; prints mean microseconds per parse.
// Segments are separated by CR as MLLP delivers them (the fixtures use LF).
import { HL7Message } from 'hl7v2';
import fs from 'node:fs';
const [n, ...files] = process.argv.slice(2);
for (const f of files) {
  const text = fs.readFileSync(f, 'utf8').replace(/^\uFEFF/, '').replace(/\r?\n/g, '\r');
  for (let i = 0; i < 200; i++) HL7Message.parse(text); // warm-up
  const t = process.hrtime.bigint();
  let segments = 0;
  for (let i = 0; i < +n; i++) segments = HL7Message.parse(text).segments.length;
  const us = Number(process.hrtime.bigint() - t) / 1e3 / +n;
  console.log(JSON.stringify({ parser: 'npm hl7v2 1.8.0', file: f, segments, us_per_parse: +us.toFixed(2) }));
}
