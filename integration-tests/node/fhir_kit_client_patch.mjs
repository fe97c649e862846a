// fhir-kit-client's patch (a JSON Patch, application/json-patch+json). Usage: node fhir_kit_client_patch.mjs BASE
import { Client } from 'fhir-kit-client';

async function main() {
  const [baseUrl] = process.argv.slice(2);
  const client = new Client({ baseUrl, bearerToken: process.env.TRIALBRIDGE_TOKEN });
  const created = await client.create({ resourceType: 'Patient', body: { resourceType: 'Patient', gender: 'female', birthDate: '1990' } });
  const patched = await client.patch({
    resourceType: 'Patient',
    id: created.id,
    jsonPatch: [
      { op: 'test', path: '/gender', value: 'female' },
      { op: 'replace', path: '/gender', value: 'male' },
      { op: 'add', path: '/active', value: true },
    ],
  });
  if (patched.gender !== 'male' || patched.active !== true || patched.meta.versionId !== '2') {
    throw new Error(`unexpected patch result ${JSON.stringify(patched)}`);
  }
  // A failing test operation changes nothing and is an error.
  let refused = false;
  try {
    await client.patch({ resourceType: 'Patient', id: created.id, jsonPatch: [{ op: 'test', path: '/gender', value: 'female' }, { op: 'remove', path: '/birthDate' }] });
  } catch (e) {
    refused = true;
  }
  const now = await client.read({ resourceType: 'Patient', id: created.id });
  if (!refused || now.birthDate !== '1990' || now.meta.versionId !== '2') {
    throw new Error(`a failed test op must change nothing: ${JSON.stringify(now)}`);
  }
  console.log('fhir-kit-client: patch');
}

main().catch((e) => { console.error(e); process.exit(1); });
