"""Mints access tokens with PyJWT (a library nobody here wrote) for every
algorithm ward verifies, and prints the JWKS and tokens as JSON.

usage: mint_pyjwt.py NOW
"""
import json
import sys

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

now = int(sys.argv[1])
keys = {
    "ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
    "ES384": (ec.generate_private_key(ec.SECP384R1()), ECAlgorithm),
    "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
    "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    "PS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAPSSAlgorithm),
}
base = {"iss": "https://issuer.example", "sub": "svc", "aud": "payments", "exp": now + 300, "iat": now, "jti": "j", "client_id": "svc"}
variants = {
    "valid": {},
    "wrong_iss": {"iss": "https://evil.example"},
    "wrong_aud": {"aud": "ledger"},
    "expired": {"exp": now - 120},
    "not_yet": {"nbf": now + 600},
    "future_iat": {"iat": now + 600},
    "exp_string": {"exp": str(now + 300)},
}
jwks, tokens = [], {}
for alg, (key, algo) in keys.items():
    kid = "k-" + alg
    jwk = json.loads(algo.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig"})
    jwks.append(jwk)
    for name, change in variants.items():
        claims = {**base, **change}
        tokens[f"{alg}/{name}"] = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})
    tokens[f"{alg}/wrong_typ"] = jwt.encode(base, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})
print(json.dumps({"jwks": {"keys": jwks}, "tokens": tokens}))
