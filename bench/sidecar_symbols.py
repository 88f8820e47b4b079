#!/usr/bin/env python3
"""Records the functions a ward sidecar pair runs, for the linker to place
together (crates/ward-cli/link/sidecar-symbols.txt; see
crates/ward-cli/build.rs for why).

Runs the pair of bench/compare.py under valgrind's callgrind (start-up,
HTTP/1.1 load through both sidecars, full mTLS handshakes at B, shutdown),
then the pair of bench/mesh.py, whose sidecars join a control plane
(join token, certificate issuance, configuration watch), then a `ward
agent` driven by `ward-bench workload` (the SPIFFE Workload API), and
writes the symbols of the `ward` binary that executed, grouped so that
each kind of process finds the functions it runs side by side (see
`grouped`).

    cargo build --release -p ward-cli -p ward-bench
    python3 bench/sidecar_symbols.py > crates/ward-cli/link/sidecar-symbols.txt
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402


def executed(path, binary):
    """Names of the functions of `binary` that have a cost in a callgrind
    output file (names are compressed: `fn=(id) name` once, then `(id)`)."""
    objs, fns, cur, names = {}, {}, None, []
    for line in open(path, errors="replace"):
        m = re.match(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if not m:
            continue
        called, kind, ident, name = m.groups()
        table = objs if kind == "ob" else fns
        if name:
            table[ident] = name
        if called:
            continue
        if kind == "ob":
            cur = objs.get(ident)
        elif cur and os.path.realpath(cur) == binary and fns.get(ident):
            names.append(fns[ident])
    return names


def complete(path):
    """Whether callgrind has finished writing `path` (it ends with the
    `totals:` line)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200))
            return b"\ntotals: " in f.read()
    except OSError:
        return False


def main():
    binary = os.path.realpath(c.WARD)
    tmp = tempfile.mkdtemp()
    procs = []
    plain_start = c.start

    def start(procs_, args, **kw):
        if args[0] == c.WARD and "proxy" in args:
            side = "a" if "--upstream" in args else "b"
            args = ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={tmp}/cg-{side}.out"] + args
        return plain_start(procs_, args, **kw)

    c.start = start
    try:
        c.certs(tmp, procs)
        app = plain_start(procs, [c.BENCH, "upstream", "--listen", "127.0.0.1:0"])
        addr = json.loads(app.stdout.readline())["http"]
        t = c.ward_pair(tmp, procs, addr, 1)
        time.sleep(5)
        c.wrk(t.entry, 5, conns=32)
        subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{t.b_port}", "-new",
                        "-cert", f"{tmp}/a.pem", "-key", f"{tmp}/a.key", "-time", "3"], capture_output=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.time() + 120
        for p in procs:
            try:
                p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
    # The control-plane pair: bench/mesh.py with a `ward` that runs its
    # sidecars (and only them) under callgrind.
    wrapper = os.path.join(tmp, "ward-under-callgrind")
    with open(wrapper, "w") as f:
        f.write(f'''#!/bin/sh
case " $* " in
  *" agent "*) exec valgrind --tool=callgrind --demangle=no --callgrind-out-file={tmp}/cg-agent-%p.out {binary} "$@";;
  *" proxy "*) exec valgrind --tool=callgrind --demangle=no --callgrind-out-file={tmp}/cg-cp-%p.out {binary} "$@";;
esac
exec {binary} "$@"
''')
    os.chmod(wrapper, 0o755)
    mesh = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mesh.py")
    subprocess.run([sys.executable, mesh, "--rounds", "1", "--seconds", "3", "--ward", wrapper],
                   capture_output=True, timeout=900, check=True)
    outputs = [f"{tmp}/cg-a.out", f"{tmp}/cg-b.out"]
    outputs += sorted(os.path.join(tmp, n) for n in os.listdir(tmp) if n.startswith("cg-cp-"))
    if len(outputs) < 4:
        sys.exit("the control-plane pair left no callgrind output")
    # The agent: the Workload API under load, 100 streams, new callers.
    subprocess.run([c.BENCH, "workload", "--ward", wrapper, "--seconds", "2"],
                   capture_output=True, timeout=900, check=True)
    agents = sorted(os.path.join(tmp, n) for n in os.listdir(tmp) if n.startswith("cg-agent-"))
    if not agents:
        sys.exit("the agent left no callgrind output")
    outputs += agents
    # valgrind writes its output as the process exits, which on a busy
    # machine can be after the harness has moved on: read only whole files.
    deadline = time.time() + 300
    while not all(complete(p) for p in outputs):
        if time.time() > deadline:
            sys.exit("a callgrind output was not completed: " + ", ".join(p for p in outputs if not complete(p)))
        time.sleep(1)
    for name in grouped(outputs[:2], outputs[2:len(outputs) - len(agents)], agents, binary):
        print(name)


def grouped(standalone, control_plane, agents, binary):
    """The functions in an order that keeps each kind of process's own
    together: the standalone pair's that the agent does not run, then
    those it does, then the control-plane pair's additions the agent runs,
    then the agent's own, then the rest of the control-plane pair's. A
    standalone sidecar runs the first two groups, an agent the middle
    three, a sidecar with a control plane all but the agent's own."""
    def names(paths):
        out, seen = [], set()
        for path in paths:
            for name in executed(path, binary):
                if name not in seen:
                    seen.add(name)
                    out.append(name)
        return out
    pair = names(standalone)
    cp = [n for n in names(control_plane) if n not in set(pair)]
    agent = set(names(agents))
    known = set(pair) | set(cp)
    order = ([n for n in pair if n not in agent] + [n for n in pair if n in agent]
             + [n for n in cp if n in agent] + sorted(agent - known)
             + [n for n in cp if n not in agent])
    print(f"{len(order)} functions ({len(agent)} run by the agent)", file=sys.stderr)
    return order


if __name__ == "__main__":
    main()
