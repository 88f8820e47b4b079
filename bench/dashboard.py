#!/usr/bin/env python3
"""The dashboard with a big mesh, measured in the browser.

    .venv/bin/python bench/dashboard.py [--ward target/release/ward] [--services 1000] [--policies 10000] [--runs 10]

Starts two `ward server --ui-listen` processes: one empty (the baseline)
and one loaded with SERVICES services and POLICIES policies through the
admin API. For each, Debian's Chromium (headless, Selenium) signs in and
then navigates to every page RUNS times, and reads when the page first
showed its data (the page's `ward:shown:<page>` performance mark,
milliseconds from the start of the navigation). Prints JSON: p50, p95 and
max per page and server, and the loaded/empty ratio. Needs selenium and
chromium + chromium-driver (as the tests do).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "crates", "ward-cli", "tests", "interop"))
import dashboard as ui  # noqa: E402  (the tests' browser set-up)

from selenium.webdriver.common.by import By  # noqa: E402

PAGES = ["overview", "traffic", "policies", "audit", "clients"]


def start(ward, data):
    p = subprocess.Popen(
        [ward, "--output", "json", "--data-dir", data, "server", "--listen", "127.0.0.1:0", "--ui-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=dict(os.environ, RUST_LOG="warn"),
    )
    api = url = ready = None
    while api is None or url is None or ready is None:
        line = p.stdout.readline()
        if not line:
            raise SystemExit("ward server exited")
        ev = json.loads(line)
        if ev.get("event") == "listening":
            api = ev["url"]
        if ev.get("event") == "dashboard":
            url = ev["url"]
        if ev.get("event") == "root_fingerprint":
            ready = True
    return p, api, url


def load(api, data, services, policies):
    token = open(os.path.join(data, "admin.token")).read().strip()
    s = requests.Session()
    # Per request: a CA bundle named in the environment would override
    # the session's.
    ca = os.path.join(data, "bundle.pem")
    s.headers["authorization"] = f"Bearer {token}"
    for i in range(services):
        r = s.post(f"{api}/api/v1/services", json={"name": f"svc-{i}"}, verify=ca)
        r.raise_for_status()
    docs = []
    for i in range(policies):
        svc = i % services
        docs.append({
            "apiVersion": "ward/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": f"p-{i}", "namespace": "default"},
            "spec": {
                "selector": {"service": f"svc-{svc}"},
                "action": "ALLOW",
                "rules": [{
                    "from": [{"source": {"principals": [f"ward.internal/ns/default/sa/svc-{(svc + 1) % services}"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": [f"/api/{i}/*"]}}],
                }],
            },
        })
    r = s.post(f"{api}/api/v1/policies/apply", json={"policies": docs}, timeout=600, verify=ca)
    r.raise_for_status()


def measure(url, data, runs):
    d = ui.browser(url, os.path.join(data, "bundle.pem"))
    token = open(os.path.join(data, "admin.token")).read().strip()
    out = {}
    try:
        d.get(url)
        ui.sign_in(d, token)
        ui.wait(d, lambda _: d.find_elements(By.CSS_SELECTOR, "#data[data-loaded]"), what="the first page")
        for page in PAGES:
            times = []
            for _ in range(runs):
                d.get("about:blank")
                d.get(f"{url}#/{page}")
                mark = f"ward:shown:{page}"
                ui.wait(d, lambda _: d.execute_script(
                    "return performance.getEntriesByName(arguments[0]).length > 0", mark), what=page)
                times.append(d.execute_script("return performance.getEntriesByName(arguments[0])[0].startTime", mark))
            times.sort()
            out[page] = {
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))], 1),
                "max_ms": round(times[-1], 1),
            }
    finally:
        d.quit()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ward", default="target/release/ward")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    result = {"services": a.services, "policies": a.policies, "runs": a.runs}
    procs = []
    try:
        for name, size in [("empty", None), ("loaded", (a.services, a.policies))]:
            data = tempfile.mkdtemp(prefix=f"ward-ui-{name}-")
            p, api, url = start(a.ward, data)
            procs.append(p)
            if size:
                t = time.time()
                load(api, data, *size)
                result["load_secs"] = round(time.time() - t, 1)
            result[name] = measure(url, data, a.runs)
        result["loaded_over_empty_p50"] = {
            page: round(result["loaded"][page]["p50_ms"] / max(result["empty"][page]["p50_ms"], 0.1), 2)
            for page in PAGES
        }
    finally:
        for p in procs:
            p.terminate()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
