#!/usr/bin/env python3
"""ward against nginx and HAProxy mTLS pairs, side by side on loopback.

    python3 bench/compare.py [--rounds 5] [--seconds 10] [--workers 2] [--idle 10000] [--app-conns 2000] [--app harness|nginx] [--out bench/results]

Every target carries the same path: load generator -> proxy A (plaintext
in) -> mTLS (TLS 1.3, P-256, client certificate required) -> proxy B ->
the harness's own upstream app (`ward-bench upstream`, 1 KiB responses).
`direct` is the load generator against the app. `ward` runs as users run
it (default flags and log filter, stderr to a file; the access log is off
by default, `--access-log` turns it on), `ward-quiet` with its logs at
warn. `--app nginx` puts a 1-worker nginx (`return 200`, 1 KiB)
in place of the harness's app. All proxies use the same
certificates (issued by a ward server) and the same number of workers.
A target that fails its correctness probe is not measured.

Installs nginx, HAProxy and wrk with apt-get, and oha with cargo, when
missing; builds ward and ward-bench in release mode. Writes JSON, a
markdown table and (with matplotlib, installed into bench/.venv) a PNG.
"""
import argparse
import json
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARD = os.path.join(ROOT, "target/release/ward")
BENCH = os.path.join(ROOT, "target/release/ward-bench")
TICK = os.sysconf("SC_CLK_TCK")
BODY = b"x" * 1024


def sh(*args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def ensure_tools():
    missing = [p for p, b in (("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk")) if not shutil.which(b) and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("oha") and not os.path.exists(os.path.expanduser("~/.cargo/bin/oha")):
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True)
    os.environ["PATH"] += ":/usr/sbin:" + os.path.expanduser("~/.cargo/bin")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "ward-cli", "-p", "ward-bench"], check=True, cwd=ROOT)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def cpu_secs(pids):
    t = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except OSError:
            pass
    return t / TICK


def machine_idle():
    """The machine's idle and total CPU time so far (/proc/stat, in ticks)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return v[3] + v[4], sum(v[:8])


def status_kib(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except OSError:
                pass
    return out


class Target:
    def __init__(self, name, entry, b_port=None, a_pids=(), b_pids=()):
        self.name, self.entry, self.b_port = name, entry, b_port
        self.a_pids, self.b_pids = list(a_pids), list(b_pids)

    def pids(self):
        return self.a_pids + self.b_pids


def start(procs, args, log_to=None, **kw):
    """Starts `args`. With `log_to`, as users run it: the default log
    filter and stderr going to that file; otherwise with logs at warn,
    discarded."""
    if log_to:
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        err = open(log_to, "w")
    else:
        env, err = {**os.environ, "RUST_LOG": "warn"}, subprocess.DEVNULL
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env, **kw)
    procs.append(p)
    return p


def certs(tmp, procs):
    """a and b from one ward CA; `stranger` from another CA."""
    out = {}
    for ca in ("ca1", "ca2"):
        data = os.path.join(tmp, ca)
        srv = start(procs, [WARD, "--output", "json", "server", "--data-dir", data, "--listen", "127.0.0.1:0"])
        srv.stdout.readline()
        names = ("a", "b") if ca == "ca1" else ("stranger",)
        for n in names:
            sh(WARD, "--data-dir", data, "service", "add", n)
            sh(WARD, "--data-dir", data, "cert", "issue", "--spiffe-id", f"spiffe://ward.internal/ns/default/sa/{n}", "--dns-name", f"{n}.internal",
               "--ttl", "24h", "--out-cert", f"{tmp}/{n}.pem", "--out-key", f"{tmp}/{n}.key", "--out-bundle", f"{tmp}/{ca}-bundle.pem")
            with open(f"{tmp}/{n}.combined.pem", "w") as f:
                f.write(open(f"{tmp}/{n}.pem").read() + open(f"{tmp}/{n}.key").read())
        srv.terminate()
        srv.wait()
    out["bundle"] = f"{tmp}/ca1-bundle.pem"
    return out


def allow_a(tmp):
    """A policy file for proxy B: requests from A allowed (default deny)."""
    pol = f"{tmp}/allow-a.yaml"
    open(pol, "w").write('apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: from-a }\nspec:\n  rules:\n  - from: [{ source: { principals: ["ward.internal/ns/default/sa/a"] } }]\n')
    return pol


def ward_pair(tmp, procs, app, workers, name="ward", quiet=False, a_flags=()):
    """A ward pair as users run it (default flags, stderr to a file), or
    with `quiet` its logs at warn (`ward-quiet`); `a_flags` are added to
    proxy A's."""
    logs = lambda side: None if quiet else f"{tmp}/{name}-{side}.log"
    pol = allow_a(tmp)
    bp = free_port()
    common = ["--output", "json", "--trust-bundle", f"{tmp}/ca1-bundle.pem", "proxy", "--worker-threads", str(workers), "--admin", "127.0.0.1:0"]
    b = start(procs, [WARD, *common, "--cert", f"{tmp}/b.pem", "--key", f"{tmp}/b.key", "--service", "b", "--inbound", f"127.0.0.1:{bp}", "--app", app, "--policy-file", pol], log_to=logs("b"))
    b.stdout.readline()
    ap = free_port()
    a = start(procs, [WARD, *common, "--cert", f"{tmp}/a.pem", "--key", f"{tmp}/a.key", "--service", "a", "--inbound", "127.0.0.1:0", "--app", "127.0.0.1:9",
                      "--upstream", f"b=127.0.0.1:{ap},endpoint=127.0.0.1:{bp},id=spiffe://ward.internal/ns/default/sa/b", *a_flags], log_to=logs("a"))
    a.stdout.readline()
    return Target(name, f"127.0.0.1:{ap}", bp, [a.pid], [b.pid])


def ward_quiet_pair(tmp, procs, app, workers):
    return ward_pair(tmp, procs, app, workers, name="ward-quiet", quiet=True)


def ward_hbone_pair(tmp, procs, app, workers):
    """The ward pair with A sending over HBONE (HTTP/2 CONNECT) instead of
    ward-mux/2; default flags otherwise."""
    return ward_pair(tmp, procs, app, workers, name="ward-hbone", a_flags=("--peer-transport", "hbone"))


def nginx_app(tmp, procs):
    """The second upstream app, nobody's here: nginx, 1 worker, `return
    200` with the same 1 KiB body."""
    port = free_port()
    d = os.path.join(tmp, "nginx-app")
    os.makedirs(d, exist_ok=True)
    body = f"""  server {{ listen 127.0.0.1:{port}; location / {{ default_type text/plain; return 200 "{BODY.decode()}"; }} }}"""
    conf = os.path.join(d, "nginx.conf")
    open(conf, "w").write(NGINX_COMMON.format(workers=1, dir=d, body=body))
    start(procs, ["nginx", "-p", d, "-c", conf, "-g", "daemon off;"])
    time.sleep(0.5)
    return f"127.0.0.1:{port}"


NGINX_COMMON = """worker_processes {workers};
worker_rlimit_nofile 19990;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
{body}
}}
"""


def nginx_pair(tmp, procs, app, workers):
    bp, ap = free_port(), free_port()
    confs = {
        "b": f"""  upstream app {{ server {app}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{bp} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {tmp}/b.pem; ssl_certificate_key {tmp}/b.key;
    ssl_client_certificate {tmp}/ca1-bundle.pem; ssl_verify_client on; ssl_verify_depth 3;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""",
        "a": f"""  upstream b {{ server 127.0.0.1:{bp}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{ap};
    location / {{
      proxy_pass https://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;
      proxy_ssl_certificate {tmp}/a.pem; proxy_ssl_certificate_key {tmp}/a.key;
      proxy_ssl_trusted_certificate {tmp}/ca1-bundle.pem; proxy_ssl_verify on; proxy_ssl_verify_depth 3;
      proxy_ssl_name b.internal; proxy_ssl_server_name on;
    }}
  }}""",
    }
    pids = {}
    for side in ("b", "a"):
        d = f"{tmp}/nginx-{side}"
        os.makedirs(d, exist_ok=True)
        conf = f"{d}/nginx.conf"
        open(conf, "w").write(NGINX_COMMON.format(workers=workers, dir=d, body=confs[side]))
        m = start(procs, ["nginx", "-p", d, "-c", conf, "-g", "daemon off;"])
        wait_port(bp if side == "b" else ap)
        pids[side] = [m.pid] + children(m.pid)
    return Target("nginx", f"127.0.0.1:{ap}", bp, pids["a"], pids["b"])


def haproxy_pair(tmp, procs, app, workers):
    bp, ap = free_port(), free_port()
    common = f"""global
  nbthread {workers}
  # HAProxy reserves two descriptors per connection; under a hard limit
  # of 20,000 that allows 9,993.
  maxconn 9990
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
"""
    confs = {
        "b": common + f"""frontend fb
  bind 127.0.0.1:{bp} ssl crt {tmp}/b.combined.pem ca-file {tmp}/ca1-bundle.pem verify required ssl-min-ver TLSv1.3
  default_backend app
backend app
  http-reuse always
  server app {app}
""",
        "a": common + f"""frontend fa
  bind 127.0.0.1:{ap}
  default_backend b
backend b
  http-reuse always
  server b 127.0.0.1:{bp} ssl crt {tmp}/a.combined.pem ca-file {tmp}/ca1-bundle.pem verify required verifyhost b.internal sni str(b.internal) ssl-min-ver TLSv1.3
""",
    }
    pids = {}
    for side in ("b", "a"):
        conf = f"{tmp}/haproxy-{side}.cfg"
        open(conf, "w").write(confs[side])
        log = open(f"{tmp}/haproxy-{side}.log", "w")
        p = subprocess.Popen(["haproxy", "-db", "-f", conf], stdout=log, stderr=log)
        procs.append(p)
        try:
            wait_port(bp if side == "b" else ap)
        except SystemExit:
            raise SystemExit("haproxy did not start:\n" + open(f"{tmp}/haproxy-{side}.log").read())
        pids[side] = [p.pid]
    return Target("haproxy", f"127.0.0.1:{ap}", bp, pids["a"], pids["b"])


def curl_b(t, tmp, cert=None):
    args = ["curl", "-sk", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", f"https://127.0.0.1:{t.b_port}/probe"]
    if cert:
        args[1:1] = ["--cert", f"{tmp}/{cert}.pem", "--key", f"{tmp}/{cert}.key"]
    r = subprocess.run(args, capture_output=True, text=True)
    return r.stdout.strip()


def probe(t, tmp):
    """None when the target is correct, else what is wrong."""
    try:
        body = urllib.request.urlopen(f"http://{t.entry}/probe", timeout=5).read()
    except Exception as e:
        return f"request through the pair failed: {e}"
    if body != BODY:
        return "wrong body through the pair"
    if t.b_port is None:
        return None
    if curl_b(t, tmp, "a") != "200":
        return "proxy B refused a valid client certificate"
    if curl_b(t, tmp) == "200":
        return "proxy B accepted a client without a certificate"
    if curl_b(t, tmp, "stranger") == "200":
        return "proxy B accepted a certificate from another CA"
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{t.b_port}", "-cert", f"{tmp}/a.pem", "-key", f"{tmp}/a.key", "-brief"],
                         input="", capture_output=True, text=True, timeout=10)
    if "TLSv1.3" not in out.stdout + out.stderr:
        return "TLS 1.3 was not negotiated"
    return None


def wrk(entry, seconds, conns=32):
    out = sh("wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", f"http://{entry}/")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        lat[pct] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "requests": total, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "errors": (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errs.groups()) if errs else 0)}


def oha_rate(entry, seconds, rate):
    out = sh("oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate), "--latency-correction", "-c", "32", f"http://{entry}/")
    d = json.loads(out)
    p = d["latencyPercentiles"]
    return {"p50_ms": p["p50"] * 1000, "p90_ms": p["p90"] * 1000, "p99_ms": p["p99"] * 1000, "max_ms": d["summary"]["slowest"] * 1000}


def handshakes(t, tmp, seconds):
    """CPU seconds of proxy B per 1,000 full mTLS handshakes (openssl s_time -new)."""
    before = cpu_secs(t.b_pids)
    out = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{t.b_port}", "-new", "-cert", f"{tmp}/a.pem", "-key", f"{tmp}/a.key", "-time", str(seconds)],
                         capture_output=True, text=True).stdout
    cpu = cpu_secs(t.b_pids) - before
    m = re.search(r"(\d+) connections in [\d.]+s", out)
    n = int(m.group(1)) if m else 0
    return {"handshakes": n, "cpu_s_per_1000": round(cpu / n * 1000, 3) if n else None}


def rotated(targets, r):
    """The targets in the order of round `r`: each round starts one further
    along, so that no target is always measured right after the same one
    (`direct` saturates the app and both CPUs just before)."""
    k = r % len(targets)
    return targets[k:] + targets[:k]


def handshake_rounds(targets, tmp, rounds, seconds):
    """`handshakes` of every target in interleaved rounds, as the throughput
    is measured: one sample each would meet the machine's drift at a
    different moment per target. Per target, the rounds and their median
    (min–max)."""
    got = {t.name: [] for t in targets}
    for r in range(rounds):
        for t in rotated(targets, r):
            h = handshakes(t, tmp, seconds)
            got[t.name].append(h)
            print(f"handshakes round {r + 1} {t.name}: {h}", file=sys.stderr)
    out = {}
    for name, rs in got.items():
        cpu = [h["cpu_s_per_1000"] for h in rs if h["cpu_s_per_1000"]]
        out[name] = {"rounds": rs, "cpu_s_per_1000": med(cpu) if cpu else None}
    return out


async def open_many(n, connect):
    """Opens n connections with `connect`, 64 at a time; returns those
    that opened."""
    import asyncio
    sem = asyncio.Semaphore(64)

    async def one():
        async with sem:
            return await connect()
    got = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    return [c for c in got if not isinstance(c, BaseException)]


def rss_kib(pids):
    return sum(status_kib(p, "VmRSS") for p in pids)


def idle_memory(t, tmp, n):
    """KiB of proxy B's RSS per idle mTLS connection, n held open at once."""
    import asyncio
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=f"{tmp}/ca1-bundle.pem")
    ctx.check_hostname = False
    ctx.load_cert_chain(f"{tmp}/a.pem", f"{tmp}/a.key")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    before = rss_kib(t.b_pids)

    async def run():
        conns = await open_many(n, lambda: asyncio.open_connection("127.0.0.1", t.b_port, ssl=ctx))
        await asyncio.sleep(2)
        after = rss_kib(t.b_pids)
        for _, w in conns:
            w.close()
        return len(conns), after
    held, after = asyncio.run(run())
    return {"connections": held, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": round((after - before) / held, 2) if held else None}


def app_conn_memory(t, n):
    """KiB of proxy A's RSS per connection from the app, n held open at
    once: idle, then kept alive after one request each (what an app's
    connection pool to its sidecar costs)."""
    import asyncio
    host, port = t.entry.rsplit(":", 1)
    before = rss_kib(t.a_pids)

    async def run():
        conns = await open_many(n, lambda: asyncio.open_connection(host, int(port)))
        await asyncio.sleep(2)
        idle = rss_kib(t.a_pids)
        sem = asyncio.Semaphore(64)

        async def request(r, w):
            async with sem:
                w.write(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                head = await r.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length: *(\d+)", head)
                await r.readexactly(int(m.group(1)) if m else 0)
        done = await asyncio.gather(*(request(r, w) for r, w in conns), return_exceptions=True)
        await asyncio.sleep(2)
        kept = rss_kib(t.a_pids)
        for _, w in conns:
            w.close()
        return len(conns), sum(1 for d in done if d is None), idle, kept
    held, answered, idle, kept = asyncio.run(run())
    per = lambda after: round((after - before) / held, 2) if held else None
    return {"connections": held, "answered": answered, "rss_before_kib": before,
            "idle_kib_per_connection": per(idle), "kept_alive_kib_per_connection": per(kept)}


def med(vals):
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 2),
                    help="workers of every proxy [default: ward's own, the cores, at most 2]")
    ap.add_argument("--idle", type=int, default=None,
                    help="idle connections for metric (e) [default: 10,000, or 9,000 when the descriptor limit is 20,000 or less]")
    ap.add_argument("--app-conns", type=int, default=2000,
                    help="connections from the app held open on proxy A, idle and then kept alive [default: 2,000]")
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--app", choices=("harness", "nginx"), default="harness",
                    help="the upstream app: the harness's own (ward-bench upstream) or nginx with 1 worker")
    a = ap.parse_args()
    ensure_tools()
    # 10,000 idle connections need as many descriptors in the client and
    # in proxy B (root may raise the hard limit; others get what they have).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (65536, max(hard, 65536)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.idle is None:
        a.idle = 10000 if resource.getrlimit(resource.RLIMIT_NOFILE)[1] > 20000 else 9000
    tmp = tempfile.mkdtemp()
    procs = []
    try:
        certs(tmp, procs)
        if a.app == "nginx":
            app_addr = nginx_app(tmp, procs)
            app_pids = [procs[-1].pid] + children(procs[-1].pid)
        else:
            app = start(procs, [BENCH, "upstream", "--listen", "127.0.0.1:0"])
            app_addr = json.loads(app.stdout.readline())["http"]
            app_pids = [app.pid]
        targets = [Target("direct", app_addr)]
        for make in (ward_pair, ward_quiet_pair, ward_hbone_pair, nginx_pair, haproxy_pair):
            t = make(tmp, procs, app_addr, a.workers)
            time.sleep(0.5)
            why = probe(t, tmp)
            if why:
                print(f"{t.name}: not measured: {why}", file=sys.stderr)
                continue
            print(f"{t.name}: probe passed", file=sys.stderr)
            targets.append(t)
        for t in targets:  # warm up pools and caches
            wrk(t.entry, 1)
        runs = {t.name: [] for t in targets}
        for r in range(a.rounds):
            for t in rotated(targets, r):
                parts = {k: v for k, v in (("a", t.a_pids), ("b", t.b_pids), ("app", app_pids)) if v}
                c0, (i0, s0) = {k: cpu_secs(v) for k, v in parts.items()}, machine_idle()
                res = wrk(t.entry, a.seconds)
                per_1000 = {k: (cpu_secs(v) - c0[k]) * 1e6 / res["requests"] for k, v in parts.items()}
                res["cpu_ms_per_1000"] = per_1000["a"] + per_1000["b"] if t.pids() else None
                res["cpu_ms_per_1000_by_process"] = per_1000
                # A closed loop that leaves CPUs idle is bound by its
                # hand-offs, not by its CPU.
                i1, s1 = machine_idle()
                res["machine_idle_pct"] = 100 * (i1 - i0) / (s1 - s0)
                runs[t.name].append(res)
                print(f"round {r + 1} {t.name}: {res}", file=sys.stderr)
        report = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                              "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                              "haproxy": sh("haproxy", "-v").splitlines()[0], "openssl": sh("openssl", "version").strip()},
                  "rounds": a.rounds, "seconds": a.seconds, "workers": a.workers, "app": a.app, "targets": {}}
        for t in targets:
            rs = runs[t.name]
            e = {"throughput_rps": {**med([x["rps"] for x in rs]), "rounds": [x["rps"] for x in rs]}, "p50_ms": med([x["p50_ms"] for x in rs]),
                 "p99_ms": med([x["p99_ms"] for x in rs]), "machine_idle_pct": med([x["machine_idle_pct"] for x in rs]),
                 "errors": sum(x["errors"] for x in rs)}
            e["cpu_ms_per_1000_requests_by_process"] = {k: med([x["cpu_ms_per_1000_by_process"][k] for x in rs]) for k in rs[0]["cpu_ms_per_1000_by_process"]}
            if t.pids():
                e["cpu_ms_per_1000_requests"] = med([x["cpu_ms_per_1000"] for x in rs])
                e["peak_rss_kib"] = {"a": sum(status_kib(p, "VmHWM") for p in t.a_pids), "b": sum(status_kib(p, "VmHWM") for p in t.b_pids)}
                # The peak mixes heap with code, and how much of a binary's
                # code a process maps depends on how the file sits in the
                # page cache (docs/performance.md): the two, after the rounds.
                e["rss_parts_kib"] = {side: {kind: sum(status_kib(p, key) for p in pids) for kind, key in (("anon", "RssAnon"), ("file", "RssFile"))}
                                      for side, pids in (("a", t.a_pids), ("b", t.b_pids))}
            report["targets"][t.name] = e
        for t in targets:
            report["targets"][t.name]["fixed_rate"] = oha_rate(t.entry, a.seconds, a.rate)
        # Handshakes and idle connections do not log per request, and go
        # to proxy B, which is the same for every ward pair.
        hs = [t for t in targets[1:] if t.name not in ("ward-quiet", "ward-hbone")]
        for name, rs in handshake_rounds(hs, tmp, a.rounds, a.seconds).items():
            report["targets"][name]["handshakes"] = rs
        for t in targets[1:]:
            if t.name not in ("ward-quiet", "ward-hbone"):
                report["targets"][t.name]["idle"] = idle_memory(t, tmp, a.idle)
                report["targets"][t.name]["app_conns"] = app_conn_memory(t, a.app_conns)
        report["grpc_tcp"] = grpc_tcp(tmp, procs, a)
        ratios(report)
        write(report, a.out)
    finally:
        for p in procs:
            try:
                p.terminate()
            except Exception:
                pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except Exception:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def grpc_tcp(tmp, procs, a):
    """(f): gRPC unary calls/s and TCP MB/s, direct and through a ward pair."""
    sample = start(procs, [WARD, "--output", "json", "sample-app", "--name", "grpc", "--listen", "127.0.0.1:0"])
    grpc_app = json.loads(sample.stdout.readline())["http"]
    echo = start(procs, [BENCH, "upstream", "--listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0"])
    tcp_app = json.loads(echo.stdout.readline())["tcp"]
    pol = allow_a(tmp)
    common = ["--output", "json", "--trust-bundle", f"{tmp}/ca1-bundle.pem", "proxy", "--worker-threads", str(a.workers), "--admin", "127.0.0.1:0", "--policy-file", pol]
    bg, bt = free_port(), free_port()
    start(procs, [WARD, *common, "--cert", f"{tmp}/b.pem", "--key", f"{tmp}/b.key", "--service", "b", "--inbound", f"127.0.0.1:{bg}", "--app", grpc_app]).stdout.readline()
    start(procs, [WARD, *common, "--cert", f"{tmp}/b.pem", "--key", f"{tmp}/b.key", "--service", "b", "--inbound", f"127.0.0.1:{bt}", "--app", tcp_app, "--app-protocol", "tcp"]).stdout.readline()
    ug, ut = free_port(), free_port()
    bid = "id=spiffe://ward.internal/ns/default/sa/b"
    start(procs, [WARD, *common, "--cert", f"{tmp}/a.pem", "--key", f"{tmp}/a.key", "--service", "a", "--inbound", "127.0.0.1:0", "--app", "127.0.0.1:9",
                  "--upstream", f"b=127.0.0.1:{ug},endpoint=127.0.0.1:{bg},{bid}",
                  "--upstream", f"b.tcp=127.0.0.1:{ut},protocol=tcp,endpoint=127.0.0.1:{bt},{bid}"]).stdout.readline()
    # TCP over HBONE, to the same B.
    uh = free_port()
    start(procs, [WARD, *common, "--cert", f"{tmp}/a.pem", "--key", f"{tmp}/a.key", "--service", "a", "--inbound", "127.0.0.1:0", "--app", "127.0.0.1:9",
                  "--peer-transport", "hbone", "--upstream", f"b.tcp=127.0.0.1:{uh},protocol=tcp,endpoint=127.0.0.1:{bt},{bid}"]).stdout.readline()
    time.sleep(1)
    # Interleaved rounds like the other metrics, half as long each; the
    # ratio is the median of each round's ward / direct.
    s = str(max(2, a.seconds // 2))
    loads = (("grpc_unary_per_sec", "grpc-load", grpc_app, [("ward", f"127.0.0.1:{ug}")]),
             ("tcp_mb_per_sec", "tcp-load", tcp_app, [("ward", f"127.0.0.1:{ut}"), ("ward-hbone", f"127.0.0.1:{uh}")]))
    samples = {key: {"direct": [], "ratio": [], **{n: [] for n, _ in through}} for key, _, _, through in loads}
    for r in range(a.rounds):
        for key, cmd, direct, through in loads:
            got = samples[key]
            for name, target in (("direct", direct), *through):
                got[name].append(json.loads(sh(BENCH, cmd, "--target", target, "--seconds", s))[key])
            got["ratio"].append(got["ward"][-1] / got["direct"][-1])
            print(f"round {r + 1} {key}: " + ", ".join(f"{n} {got[n][-1]}" for n in got if n != "ratio"), file=sys.stderr)
    out = {key: {name: med(v) for name, v in got.items() if name != "ratio"} for key, got in samples.items()}
    out["grpc_ratio"] = round(statistics.median(samples["grpc_unary_per_sec"]["ratio"]), 3)
    out["tcp_ratio"] = round(statistics.median(samples["tcp_mb_per_sec"]["ratio"]), 3)
    t = samples["tcp_mb_per_sec"]
    out["tcp_hbone_vs_mux"] = round(statistics.median(h / m for h, m in zip(t["ward-hbone"], t["ward"])), 3)
    return out


def round_ratios(ward, peers, better):
    """Per round, ward's value over the better (`min` or `max`) of the
    peers' values in that round; rounds where one failed are left out."""
    return [x / better(p[i] for p in peers) for i, x in enumerate(ward) if x and all(p[i] for p in peers)]


def ratios(r):
    t = r["targets"]
    peers = [p for p in ("nginx", "haproxy") if p in t]
    w = t.get("ward")
    if not w:
        return
    best = lambda key, f, better: (min if better == "low" else max)((f(t[p]) for p in peers), default=None)
    rps = lambda x: x["throughput_rps"]["median"]
    out = {"throughput_vs_direct": rps(w) / rps(t["direct"])}
    if peers:
        out["throughput_vs_best_peer"] = rps(w) / best("rps", rps, "high")
        tp = round_ratios(w["throughput_rps"]["rounds"], [t[p]["throughput_rps"]["rounds"] for p in peers], max)
        if tp:
            out["throughput_vs_best_peer_min"], out["throughput_vs_best_peer_max"] = min(tp), max(tp)
        out["p99_at_rate_vs_best_peer"] = w["fixed_rate"]["p99_ms"] / best("p99", lambda x: x["fixed_rate"]["p99_ms"], "low")
        cpu = lambda x: [h["cpu_s_per_1000"] for h in x["handshakes"]["rounds"]]
        hs = round_ratios(cpu(w), [cpu(t[p]) for p in peers], min)
        if hs:
            out["handshake_cpu_vs_best_peer"] = statistics.median(hs)
            out["handshake_cpu_vs_best_peer_min"], out["handshake_cpu_vs_best_peer_max"] = min(hs), max(hs)
        out["cpu_per_request_vs_best_peer"] = w["cpu_ms_per_1000_requests"]["median"] / min(t[p]["cpu_ms_per_1000_requests"]["median"] for p in peers)
    q = t.get("ward-quiet")
    if q:
        # What the default access log costs, against logs at warn.
        out["default_throughput_vs_quiet"] = rps(w) / rps(q)
        out["default_cpu_per_request_vs_quiet"] = w["cpu_ms_per_1000_requests"]["median"] / q["cpu_ms_per_1000_requests"]["median"]
    h = t.get("ward-hbone")
    if h:
        # HBONE against ward-mux/2 between the same sidecars.
        out["hbone_throughput_vs_mux"] = rps(h) / rps(w)
        out["hbone_cpu_per_request_vs_mux"] = h["cpu_ms_per_1000_requests"]["median"] / w["cpu_ms_per_1000_requests"]["median"]
        out["hbone_p99_at_rate_vs_mux"] = h["fixed_rate"]["p99_ms"] / w["fixed_rate"]["p99_ms"]
        out["hbone_peak_rss_a_vs_mux"] = h["peak_rss_kib"]["a"] / w["peak_rss_kib"]["a"]
        out["hbone_peak_rss_b_vs_mux"] = h["peak_rss_kib"]["b"] / w["peak_rss_kib"]["b"]
    spread = lambda x: (x["throughput_rps"]["max"] - x["throughput_rps"]["min"]) / x["throughput_rps"]["median"]
    for name in t:
        if name != "direct":
            out[f"spread_{name}"] = spread(t[name])
    r["ratios"] = {k: round(v, 3) for k, v in out.items()}


def write(r, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    base = os.path.join(out_dir, f"compare-{stamp}" + ("-nginx-app" if r.get("app") == "nginx" else ""))
    json.dump(r, open(base + ".json", "w"), indent=2)
    t = r["targets"]
    f = lambda v, d=0: "–" if v is None else f"{v:,.{d}f}"
    hs_cell = lambda h: "–" if not h or not h["cpu_s_per_1000"] else (
        f"{f(h['cpu_s_per_1000']['median'], 3)} ({f(h['cpu_s_per_1000']['min'], 3)}–{f(h['cpu_s_per_1000']['max'], 3)})")
    app_conns = lambda c: "–" if not c else f"{f(c['idle_kib_per_connection'], 1)} / {f(c['kept_alive_kib_per_connection'], 1)}"
    lines = [f"{r['rounds']} rounds × {r['seconds']} s, upstream app {r.get('app', 'harness')}, {r['workers']} worker(s) per proxy, {r['machine']['cpus']} CPUs; {r['machine']['nginx']}; {r['machine']['haproxy']}; {r['machine']['openssl']}", "",
             "| target | req/s median (min–max) | machine idle | p50 | p99 | p99 @ rate | CPU ms / 1k req | peak RSS A / B (MiB) | CPU s / 1k handshakes, median (min–max) | KiB / idle conn | KiB / app conn on A, idle / kept alive |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in t.items():
        tp = e["throughput_rps"]
        rss = e.get("peak_rss_kib")
        lines.append(f"| {name} | {f(tp['median'])} ({f(tp['min'])}–{f(tp['max'])}) | {e['machine_idle_pct']['median']:.0f} % | {e['p50_ms']['median']:.2f} ms | {e['p99_ms']['median']:.2f} ms | "
                     f"{e['fixed_rate']['p99_ms']:.2f} ms | {f(e.get('cpu_ms_per_1000_requests', {}).get('median'), 1)} | "
                     f"{f(rss['a'] / 1024, 1) + ' / ' + f(rss['b'] / 1024, 1) if rss else '–'} | "
                     f"{hs_cell(e.get('handshakes'))} | {f(e.get('idle', {}).get('kib_per_connection'), 1)} | "
                     f"{app_conns(e.get('app_conns'))} |")
    parts = lambda e: " / ".join(f"{f(e['rss_parts_kib'][k]['anon'] / 1024, 1)} + {f(e['rss_parts_kib'][k]['file'] / 1024, 1)}" for k in ("a", "b"))
    lines += ["", "Resident after the rounds, anonymous + file-backed MiB, A / B: " +
              "; ".join(f"{name} {parts(e)}" for name, e in t.items() if "rss_parts_kib" in e)]
    g = r["grpc_tcp"]
    gu, tm = g["grpc_unary_per_sec"], g["tcp_mb_per_sec"]
    split = lambda e: " / ".join(f(e["cpu_ms_per_1000_requests_by_process"].get(k, {}).get("median"), 1) for k in ("a", "b", "app"))
    lines += ["", "CPU ms per 1,000 requests by process, A / B / the app (medians): " +
              "; ".join(f"{name} {split(e)}" for name, e in t.items() if "cpu_ms_per_1000_requests_by_process" in e)]
    lines += ["", f"gRPC unary (median of {r['rounds']} rounds): direct {f(gu['direct']['median'])}/s, ward pair {f(gu['ward']['median'])}/s "
              f"(ward / direct per round, median: {g['grpc_ratio']}×); "
              f"TCP: direct {tm['direct']['median']:.1f} MB/s, ward pair {tm['ward']['median']:.1f} MB/s ({g['tcp_ratio']}×), "
              f"over HBONE {tm['ward-hbone']['median']:.1f} MB/s ({g['tcp_hbone_vs_mux']}× a connection of its own)", "",
              "Ratios: " + ", ".join(f"{k} {v}" for k, v in r.get("ratios", {}).items())]
    md = "\n".join(lines) + "\n"
    open(base + ".md", "w").write(md)
    print(md)
    chart(r, base + ".png")
    print(f"wrote {base}.json, .md, .png", file=sys.stderr)


def chart(r, path):
    venv = os.path.join(ROOT, "bench/.venv")
    py = os.path.join(venv, "bin/python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    script = """
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
r = json.load(open(sys.argv[1]))
t = r["targets"]
names = list(t)
fig, ax = plt.subplots(1, 3, figsize=(13, 4))
ax[0].bar(names, [t[n]["throughput_rps"]["median"] for n in names]); ax[0].set_title("req/s (32 conns, 1 KiB)")
ax[1].bar(names, [t[n]["fixed_rate"]["p99_ms"] for n in names]); ax[1].set_title("p99 ms at fixed rate")
px = [n for n in names if "peak_rss_kib" in t[n]]
ax[2].bar(px, [max(t[n]["peak_rss_kib"].values()) / 1024 for n in px]); ax[2].set_title("peak RSS per proxy (MiB)")
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=100)
"""
    tmpjson = path + ".json.tmp"
    json.dump(r, open(tmpjson, "w"))
    subprocess.run([py, "-c", script, tmpjson, path], check=True)
    os.remove(tmpjson)


if __name__ == "__main__":
    main()
