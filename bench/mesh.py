#!/usr/bin/env python3
"""Requests/s, latency and memory through a ward sidecar pair against a
direct connection to the same app, interleaved round by round.

usage: bench/mesh.py [--rounds N] [--seconds S] [--ward target/release/ward]
Needs wrk; uses oha (cargo install oha --locked) for the fixed-rate run
when it is on PATH.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def spawn(args):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "warn"})
    line = p.stdout.readline()
    return p, json.loads(line)


def wrk(url, seconds, conns):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        v = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        lat[pct] = v
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"], "non2xx": int(errors.group(1)) if errors else 0}


def oha_rate(url, seconds, rate):
    if not shutil.which("oha"):
        return None
    out = subprocess.run(["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate), "--latency-correction", "-c", "32", url], capture_output=True, text=True).stdout
    d = json.loads(out)
    p = d["latencyPercentiles"]
    return {"p50_ms": p["p50"] * 1000, "p90_ms": p["p90"] * 1000, "p99_ms": p["p99"] * 1000, "max_ms": d["summary"]["slowest"] * 1000}


def hwm_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--ward", default="target/release/ward")
    ap.add_argument("--workers", default="1")
    ap.add_argument("--policy-scale", action="store_true",
                    help="also measure a second pair whose control plane holds 10,000 policies (10 for the first)")
    a = ap.parse_args()
    ward = a.ward
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    procs = []
    try:
        app, app_info = spawn([ward, "--output", "json", "sample-app", "--name", "upstream", "--listen", "127.0.0.1:0"])
        procs.append(app)

        def pair(name, n_policies):
            """A control plane with n_policies policies and a sidecar pair in front of the app."""
            data = os.path.join(tmp, name)
            srv, _ = spawn([ward, "--output", "json", "server", "--data-dir", data, "--listen", "127.0.0.1:0"])
            procs.append(srv)
            srv.stdout.readline()

            def cli(*args):
                return json.loads(subprocess.run([ward, "--output", "json", "--data-dir", data, *args], capture_output=True, text=True, check=True).stdout)

            for svc in ("payments", "frontend"):
                cli("service", "add", svc)
            docs = [{"apiVersion": "ward/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "payments-from-frontend"},
                     "spec": {"selector": {"service": "payments"}, "action": "ALLOW",
                              "rules": [{"from": [{"source": {"principals": ["ward.internal/ns/default/sa/frontend"]}}],
                                         "to": [{"operation": {"methods": ["GET"], "paths": ["/bytes/*"]}}]}]}},
                    {"apiVersion": "ward/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "no-admin"},
                     "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]}}]
            for i in range(n_policies - len(docs)):
                docs.append({"apiVersion": "ward/v1", "kind": "AuthorizationPolicy", "metadata": {"name": f"svc-{i}-allow"},
                             "spec": {"selector": {"service": f"svc-{i % 1000}"}, "action": "ALLOW" if i % 2 else "DENY",
                                      "rules": [{"from": [{"source": {"principals": [f"ward.internal/ns/default/sa/svc-{(i + 1) % 1000}"]}}],
                                                 "to": [{"operation": {"paths": [f"/api/{i}/*"]}}]}]}})
            pf = os.path.join(tmp, f"{name}-policies.yaml")
            with open(pf, "w") as f:
                f.write("\n---\n".join(json.dumps(d) for d in docs))
            cli("policy", "apply", "-f", pf)
            tok_p = cli("join-token", "create", "--service", "payments")["token"]
            tok_f = cli("join-token", "create", "--service", "frontend")["token"]
            common = ["--output", "json", "--data-dir", data, "proxy", "--worker-threads", a.workers, "--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
            pb, _ = spawn([ward, *common, "--join-token", tok_p, "--service", "payments", "--app", app_info["http"]])
            procs.append(pb)
            pa, pa_info = spawn([ward, *common, "--join-token", tok_f, "--service", "frontend", "--app", "127.0.0.1:9", "--upstream", "payments=127.0.0.1:0"])
            procs.append(pa)
            up = pa_info["proxy"]["upstreams"]["payments.default"]
            for _ in range(400):
                try:
                    if urllib.request.urlopen(f"http://{up}/bytes/1", timeout=1).status == 200:
                        break
                except Exception:
                    time.sleep(0.05)
            else:
                raise SystemExit(f"{name}: the sidecar pair never answered 200")
            return up, pa, pb

        up, pa, pb = pair("ward", 10)
        targets = {"direct": f"http://{app_info['http']}/bytes/1024", "ward": f"http://{up}/bytes/1024"}
        if a.policy_scale:
            up10k, _, pb10k = pair("ward-10k", 10_000)
            targets["ward_10k_policies"] = f"http://{up10k}/bytes/1024"
        results = {t: [] for t in targets}
        for r in range(a.rounds):
            for t, url in targets.items():
                res = wrk(url, a.seconds, 32)
                results[t].append(res)
                print(f"round {r + 1} {t}: {res}", file=sys.stderr)
        rate = {t: oha_rate(url, a.seconds, 2000) for t, url in targets.items() if t != "ward_10k_policies"}
        rss = {"proxy_outbound_kib": hwm_kib(pa.pid), "proxy_inbound_kib": hwm_kib(pb.pid)}

        def med(t, k):
            vals = [x[k] for x in results[t]]
            return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

        report = {
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
            "rounds": a.rounds, "seconds": a.seconds, "connections": 32, "response_bytes": 1024, "proxy_workers": a.workers,
            "throughput": {t: {k: med(t, k) for k in ("rps", "p50_ms", "p99_ms")} for t in targets},
            "ratio_ward_to_direct_rps": med("ward", "rps")["median"] / med("direct", "rps")["median"],
            "fixed_rate_2000": rate,
            "peak_rss": rss,
            "non2xx": {t: sum(x["non2xx"] for x in results[t]) for t in targets},
        }
        if a.policy_scale:
            report["ratio_10k_to_10_policies_rps"] = med("ward_10k_policies", "rps")["median"] / med("ward", "rps")["median"]
            report["peak_rss"]["proxy_inbound_10k_policies_kib"] = hwm_kib(pb10k.pid)
        print(json.dumps(report, indent=2))
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
