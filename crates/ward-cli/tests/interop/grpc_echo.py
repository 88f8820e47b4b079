"""Calls ward.demo.v1.Echo with Python's grpcio (stubs generated here with
grpcio-tools) through a ward sidecar's upstream port.

usage: grpc_echo.py PROTO_ROOT HOST:PORT EXPECTED_PEER_ID
"""
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def main() -> None:
    root, target, expected = sys.argv[1], sys.argv[2], sys.argv[3]
    out = tempfile.mkdtemp()
    rc = protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}", os.path.join(root, "ward/demo/v1/demo.proto")])
    assert rc == 0, rc
    sys.path.insert(0, out)
    pb = importlib.import_module("ward.demo.v1.demo_pb2")
    stubs = importlib.import_module("ward.demo.v1.demo_pb2_grpc")

    with grpc.insecure_channel(target) as ch:
        stub = stubs.EchoStub(ch)
        r = stub.Echo(pb.EchoRequest(message="from python"), timeout=10)
        assert r.message == "from python" and r.peer_id == expected and r.service == "payments", r
        try:
            stub.Echo(pb.EchoRequest(message="fail"), timeout=10)
            raise AssertionError("expected FAILED_PRECONDITION")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e.code()
            trailers = dict(e.trailing_metadata() or ())
            assert trailers.get("x-demo-detail") == "failed-on-purpose", trailers
        items = []
        try:
            for m in stub.Count(pb.CountRequest(count=50, final_code=14), timeout=10):
                items.append(m.index)
            raise AssertionError("expected UNAVAILABLE at the end of the stream")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e.code()
        assert items == list(range(50)), items
    print("ok")


if __name__ == "__main__":
    main()
