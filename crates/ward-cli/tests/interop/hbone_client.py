"""An HBONE client written with the `h2` package (python-hyper), driving
HTTP/2 CONNECT by hand over mutual TLS 1.3, as Istio's ztunnel speaks it.

    hbone_client.py HOST:PORT ALPN CERT KEY BUNDLE PEER_ID AUTHORITY MODE

Verifies the sidecar's certificate against BUNDLE and its SPIFFE ID, opens
a CONNECT tunnel to AUTHORITY and, by MODE:
- http: sends one HTTP/1.1 request through it and prints the response;
- tcp: sends a line and expects it back (an echo app);
- get: sends a plain GET instead of CONNECT (expects it refused).
Prints one JSON object: {"status", "data"}.
"""
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def main():
    addr, alpn, cert, key, bundle, peer_id, authority, mode = sys.argv[1:9]
    host, port = addr.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # SPIFFE certificates name a URI, not a host: the chain is verified
    # against the bundle and the ID checked below.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(bundle)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols([alpn])
    tls = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10))
    if tls.selected_alpn_protocol() != alpn:
        sys.exit(f"ALPN {tls.selected_alpn_protocol()!r}, wanted {alpn!r}")
    sans = tls.getpeercert().get("subjectAltName", ())
    if ("URI", peer_id) not in sans:
        sys.exit(f"peer presented {sans}, wanted {peer_id}")

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    if mode == "get":
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", "/")]
    else:
        headers = [(":method", "CONNECT"), (":authority", authority)]
    conn.send_headers(sid, headers, end_stream=(mode == "get"))
    tls.sendall(conn.data_to_send())

    state = {"status": None, "data": b"", "ended": False}

    def pump():
        data = tls.recv(65536)
        if not data:
            raise EOFError("the sidecar closed the connection")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                state["status"] = dict(ev.headers)[b":status"].decode()
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                state["data"] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == sid:
                state["ended"] = True
        out = conn.data_to_send()
        if out:
            tls.sendall(out)

    while state["status"] is None:
        pump()
    if state["status"] != "200":
        print(json.dumps({"status": state["status"], "data": state["data"].decode(errors="replace")}))
        return
    if mode == "http":
        req = f"GET /hbone HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        conn.send_data(sid, req.encode())
        tls.sendall(conn.data_to_send())
        while not state["ended"]:
            pump()
    else:
        line = b"ping through an HBONE tunnel\n"
        conn.send_data(sid, line)
        tls.sendall(conn.data_to_send())
        while len(state["data"]) < len(line):
            pump()
        conn.end_stream(sid)
        tls.sendall(conn.data_to_send())
        while not state["ended"]:
            pump()
    print(json.dumps({"status": state["status"], "data": state["data"].decode(errors="replace")}))


if __name__ == "__main__":
    main()
