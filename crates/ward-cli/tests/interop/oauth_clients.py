"""OAuth2 clients nobody here wrote against ward's token endpoint, and
JWT libraries nobody here wrote verifying ward's tokens.

usage:
  oauth_clients.py keygen DIR                      -> writes DIR/client.key, prints the public JWKS
  oauth_clients.py run ISSUER BUNDLE AUDIENCE SECRET_CLIENT SECRET PKJ_CLIENT KEYDIR MTLS_CLIENT CERT KEY
"""
import json
import os
import ssl
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def keygen(d):
    key = ec.generate_private_key(ec.SECP256R1())
    with open(os.path.join(d, "client.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    from jwcrypto import jwk

    pub = jwk.JWK.from_pem(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    d = json.loads(pub.export_public())
    d.update({"kid": "client-key-1", "alg": "ES256", "use": "sig"})
    print(json.dumps({"keys": [d]}))


def run(issuer, bundle, audience, sc, secret, pkj, keydir, mtls, cert, key):
    import jwt
    import requests
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.oauth2.rfc7523 import PrivateKeyJWT
    from jwcrypto import jwk as jjwk
    from jwcrypto import jwt as jjwt
    from oauthlib.oauth2 import BackendApplicationClient
    from requests_oauthlib import OAuth2Session as RoSession

    token_url = issuer + "/oauth2/token"
    meta = requests.get(issuer + "/.well-known/oauth-authorization-server", verify=bundle).json()
    assert meta["token_endpoint"] == token_url, meta
    tokens = {}

    # authlib, client_secret_basic
    s = OAuth2Session(sc, secret, token_endpoint_auth_method="client_secret_basic")
    tokens["authlib_basic"] = s.fetch_token(token_url, grant_type="client_credentials", audience=audience, verify=bundle)["access_token"]

    # requests-oauthlib, client_secret_basic
    ro = RoSession(client=BackendApplicationClient(client_id=sc))
    tokens["requests_oauthlib"] = ro.fetch_token(token_url, client_id=sc, client_secret=secret, include_client_id=False, verify=bundle, audience=audience)["access_token"]

    # authlib, private_key_jwt (RFC 7523)
    from joserfc.jwk import ECKey

    with open(os.path.join(keydir, "client.key"), "rb") as f:
        client_key = ECKey.import_key(f.read())
    s = OAuth2Session(pkj, client_key, token_endpoint_auth_method=PrivateKeyJWT(token_url, alg="ES256"))
    tokens["authlib_private_key_jwt"] = s.fetch_token(token_url, grant_type="client_credentials", audience=audience, verify=bundle)["access_token"]

    # authlib, tls_client_auth (RFC 8705) with the ward-issued certificate:
    # the client sends only its client_id; the TLS layer authenticates it.
    s = OAuth2Session(mtls, token_endpoint_auth_method="none")
    s.cert = (cert, key)
    tokens["authlib_tls_client_auth"] = s.fetch_token(token_url, grant_type="client_credentials", audience=audience, verify=bundle)["access_token"]

    # PyJWT with PyJWKClient on the JWKS URL, and jwcrypto, verify them all.
    ctx = ssl.create_default_context(cafile=bundle)
    jwks_client = jwt.PyJWKClient(issuer + "/oauth2/jwks", ssl_context=ctx)
    jwks = requests.get(issuer + "/oauth2/jwks", verify=bundle).json()
    keyset = jjwk.JWKSet.from_json(json.dumps(jwks))
    out = {}
    for name, tok in tokens.items():
        assert jwt.get_unverified_header(tok)["typ"] == "at+jwt"
        key = jwks_client.get_signing_key_from_jwt(tok)
        claims = jwt.decode(tok, key.key, algorithms=["ES256"], audience=audience, issuer=issuer)
        j = jjwt.JWT(jwt=tok, key=keyset, expected_type="JWS", check_claims={"iss": issuer, "aud": audience})
        assert json.loads(j.claims)["jti"] == claims["jti"]
        out[name] = claims
    assert "cnf" in out["authlib_tls_client_auth"] and "cnf" not in out["authlib_basic"], out
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "keygen":
        keygen(sys.argv[2])
    else:
        run(*sys.argv[2:])
