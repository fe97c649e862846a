"""The SMART on FHIR Python client (fhirclient) discovers how trialbridge is protected: from
the CapabilityStatement's rest.security (oauth-uris) it picks OAuth2 with the issuer's
endpoints, not an open server; /.well-known/smart-configuration answers without a token.

Usage: python fhirclient_discovery.py FHIR_BASE_URL TOKEN_URL AUTHORIZE_URL
"""
import sys

import requests
from fhirclient import client

base, token_url, authorize_url = sys.argv[1:4]
smart = client.FHIRClient(settings={"app_id": "trialbridge-monitor", "api_base": base,
                                    "redirect_uri": "http://localhost:8000/callback"})
smart.prepare()
auth = smart.server.auth
assert type(auth).__name__ == "FHIROAuth2Auth", f"the client decided the server is {type(auth).__name__}"
assert auth._token_uri == token_url, auth._token_uri
url = smart.authorize_url
assert url.startswith(authorize_url + "?"), url
assert "code_challenge" in url or "response_type=code" in url, url
print("fhirclient: OAuth2 discovered", flush=True)

r = requests.get(f"{base}/.well-known/smart-configuration", headers={"Accept": "application/json"})
assert r.status_code == 200, (r.status_code, r.text)
conf = r.json()
assert conf["token_endpoint"] == token_url and conf["authorization_endpoint"] == authorize_url, conf
assert "S256" in conf["code_challenge_methods_supported"], conf
print("all steps passed")
