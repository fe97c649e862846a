// fhir-kit-client walks a large search with nextPage. Usage: node fhir_kit_client_paging.mjs BASE EXPECTED
import { Client } from 'fhir-kit-client';

async function main() {
  const [baseUrl, expectedText] = process.argv.slice(2);
  const client = new Client({ baseUrl, bearerToken: process.env.TRIALBRIDGE_TOKEN });
  let bundle = await client.search({ resourceType: 'Observation', searchParams: { code: 'http://loinc.org|29463-7', _count: 41 } });
  const ids = [];
  for (;;) {
    for (const e of bundle.entry || []) ids.push(e.resource.id);
    if (!(bundle.link || []).some((l) => l.relation === 'next')) break;
    bundle = await client.nextPage({ bundle });
  }
  const unique = new Set(ids);
  if (ids.length !== Number(expectedText) || unique.size !== ids.length) {
    throw new Error(`got ${ids.length} resources (${unique.size} distinct), expected ${expectedText}`);
  }
  console.log(`fhir-kit-client: ${ids.length} resources, each once`);
}

main().catch((e) => { console.error(e); process.exit(1); });
