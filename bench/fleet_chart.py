#!/usr/bin/env python3
"""Chart of `ward-bench fleet` runs: docs/performance-fleet.png.

    ward-bench fleet --sidecars N --services S > fleet-N.json   (for each N)
    python3 bench/fleet_chart.py fleet-1000.json fleet-10000.json -o docs/performance-fleet.png

Left: p99 time until every concerned sidecar has a change, by change and
fleet size, full snapshots against deltas. Middle: bytes per concerned
sidecar (log scale). Right: server RSS per connected sidecar and the
reconnect storm's duration. matplotlib is installed into bench/.venv.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

runs = [json.load(open(p)) for p in sys.argv[2:]]
runs.sort(key=lambda r: r["ward"]["sidecars"])
changes = ["policy_change_one_service", "endpoint_added", "revocation",
           "jwks_rotation", "ca_rotation"]
labels = ["policy\n(1 service)", "endpoint\nadded", "revocation", "JWKS\nrotation", "CA\nrotation"]
fig, ax = plt.subplots(1, 3, figsize=(15, 4.6))
width = 0.8 / (2 * len(runs))
for k, r in enumerate(runs):
    n = r["ward"]["sidecars"]
    for j, mode in enumerate(["full_snapshots", "ward"]):
        c = r[mode]["changes"]
        off = (2 * k + j) * width - 0.4 + width / 2
        xs = [i + off for i in range(len(changes))]
        name = f"{n:,} sidecars, {'deltas' if mode == 'ward' else 'full snapshots'}"
        ax[0].bar(xs, [c[x]["p99_ms"] for x in changes], width, label=name)
        ax[1].bar(xs, [c[x]["bytes_per_concerned_sidecar"] for x in changes], width, label=name)
for a in ax[:2]:
    a.set_xticks(range(len(changes)))
    a.set_xticklabels(labels, fontsize=8)
ax[0].set_title("p99 until every concerned sidecar has it (ms)")
ax[0].axhline(200, color="grey", lw=0.8, ls="--")
ax[0].legend(fontsize=7)
ax[1].set_yscale("log")
ax[1].set_title("bytes per concerned sidecar")
ax[1].axhline(1024, color="grey", lw=0.8, ls="--")
sizes = [r["ward"]["sidecars"] for r in runs]
for mode, mark in [("full_snapshots", "s--"), ("ward", "o-")]:
    ax[2].plot(sizes, [r[mode]["server_rss_kib_per_sidecar"] for r in runs], mark,
               label=f"RSS KiB per sidecar ({'deltas' if mode == 'ward' else 'full'})")
    ax[2].plot(sizes, [r[mode]["changes"]["reconnect_storm"]["seconds_until_all_back"] for r in runs],
               mark, alpha=0.5, label=f"reconnect storm, s ({'deltas' if mode == 'ward' else 'full'})")
ax[2].axhline(24, color="grey", lw=0.8, ls="--")
ax[2].set_xscale("log")
ax[2].set_xlabel("connected sidecars")
ax[2].set_title("server memory and reconnect storm")
ax[2].legend(fontsize=7)
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=100)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="JSON written by ward-bench fleet")
    p.add_argument("-o", "--output", default=os.path.join(ROOT, "docs/performance-fleet.png"))
    a = p.parse_args()
    venv = os.path.join(ROOT, "bench/.venv")
    py = os.path.join(venv, "bin/python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    subprocess.run([py, "-c", SCRIPT, a.output, *a.runs], check=True)
    print(f"wrote {a.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
