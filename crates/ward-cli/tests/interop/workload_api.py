"""Drives ward's SPIFFE Workload API with clients nobody here wrote:
py-spiffe's WorkloadApiClient, unchanged, and grpcio calling the raw
service. Prints one JSON object with what it saw.

usage: workload_api.py SOCKET_PATH AGENT_CERT_PEM MODE
  MODE full:   every call, plus a stream that must see a renewal
  MODE raw:    one raw FetchX509SVID call with the security header (the
               status code is printed; for a caller from another uid)
  MODE token:  only a JWT-SVID for audience "payments"
  MODE check TOKEN: ValidateJWTSVID of TOKEN for audience "payments"
"""
import json
import sys
import threading

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

TD = "ward.internal"


def raw_stub(socket_path):
    channel = grpc.insecure_channel("unix:" + socket_path)
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def raw_code(call, *args, **kw):
    try:
        r = call(*args, **kw)
        if hasattr(r, "__next__"):
            next(r)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def spki(cert):
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ).hex()


def full(socket_path, agent_cert):
    out = {}
    client = WorkloadApiClient(socket_path="unix://" + socket_path)
    svid = client.fetch_x509_svid(timeout=10)
    out["x509_id"] = str(svid.spiffe_id)
    out["x509_serial"] = format(svid.leaf.serial_number, "x")
    out["chain_len"] = len(svid.cert_chain)
    agent = x509.load_pem_x509_certificates(open(agent_cert, "rb").read())[0]
    out["own_key"] = spki(svid.leaf) != spki(agent)
    out["key_matches_cert"] = (
        svid.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ).hex()
        == spki(svid.leaf)
    )
    bundles = client.fetch_x509_bundles(timeout=10)
    out["x509_bundle_tds"] = sorted(str(b.trust_domain) for b in bundles.bundles)
    out["x509_authorities"] = sum(len(b.x509_authorities) for b in bundles.bundles)

    jwt = client.fetch_jwt_svid(audience={"payments"}, timeout=10)
    out["jwt_id"] = str(jwt.spiffe_id)
    out["jwt_aud"] = sorted(jwt.audience)
    again = client.fetch_jwt_svid(audience={"payments"}, timeout=10)
    out["jwt_cached"] = again.token == jwt.token
    out["jwt_valid_for_a"] = str(client.validate_jwt_svid(jwt.token, "payments", timeout=10).spiffe_id)
    try:
        client.validate_jwt_svid(jwt.token, "ledger", timeout=10)
        out["jwt_valid_for_b"] = True
    except Exception as e:
        out["jwt_valid_for_b"] = False
        out["jwt_b_error"] = str(e)
    jwt_bundles = client.fetch_jwt_bundles(timeout=10)
    kids = []
    for b in jwt_bundles.bundles:
        kids.extend(b.jwt_authorities.keys())
    out["jwt_bundle_tds"] = sorted(str(b.trust_domain) for b in jwt_bundles.bundles)
    header = json.loads(
        __import__("base64").urlsafe_b64decode(jwt.token.split(".")[0] + "==")
    )
    out["jwt_kid_published"] = header["kid"] in kids
    out["jwt_token"] = jwt.token

    # Raw gRPC: the security header is required.
    stub = raw_stub(socket_path)
    out["raw_without_header"] = raw_code(
        stub.FetchJWTSVID, workload_pb2.JWTSVIDRequest(audience=["payments"]), timeout=10
    )
    out["raw_with_header"] = raw_code(
        stub.FetchJWTSVID,
        workload_pb2.JWTSVIDRequest(audience=["payments"]),
        metadata=[("workload.spiffe.io", "true")],
        timeout=10,
    )
    out["raw_no_audience"] = raw_code(
        stub.FetchJWTSVID,
        workload_pb2.JWTSVIDRequest(audience=[]),
        metadata=[("workload.spiffe.io", "true")],
        timeout=10,
    )

    # A stream sees the renewed SVID.
    seen = []
    done = threading.Event()

    def on_success(ctx):
        seen.append(format(ctx.default_svid.leaf.serial_number, "x"))
        if len(set(seen)) >= 2:
            done.set()

    def on_error(e):
        out.setdefault("stream_errors", []).append(str(e))

    handle = client.stream_x509_contexts(on_success=on_success, on_error=on_error, retry_connect=True)
    done.wait(timeout=40)
    handle.cancel()
    out["stream_serials"] = sorted(set(seen))
    client.close()
    return out


def main():
    socket_path, agent_cert, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "full":
        out = full(socket_path, agent_cert)
    elif mode == "raw":
        out = {
            "raw_with_header": raw_code(
                raw_stub(socket_path).FetchX509SVID,
                workload_pb2.X509SVIDRequest(),
                metadata=[("workload.spiffe.io", "true")],
                timeout=10,
            )
        }
    elif mode == "token":
        client = WorkloadApiClient(socket_path="unix://" + socket_path)
        out = {"token": client.fetch_jwt_svid(audience={"payments"}, timeout=10).token}
    elif mode == "check":
        client = WorkloadApiClient(socket_path="unix://" + socket_path)
        try:
            client.validate_jwt_svid(sys.argv[4], "payments", timeout=10)
            out = {"valid": True}
        except Exception as e:
            out = {"valid": False, "error": str(e)}
    else:
        raise SystemExit("unknown mode " + mode)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
