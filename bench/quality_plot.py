#!/usr/bin/env python3
"""Plots a MoEfication quality report (moefy --report report.json): relative output error and
activation-mass coverage vs density, one line per split × selector.

  quality_plot.py report.json [--out quality.png]
"""
import argparse
import json
import sys
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--out", default="quality.png")
    a = ap.parse_args()
    rows = json.load(open(a.json))["rows"]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available (apt-get install python3-matplotlib)", file=sys.stderr)
        return 1
    series = defaultdict(list)
    for r in rows:
        series[(r["split"], r["selector"])].append((100 * r["density"], r["rel_error"], r["coverage"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"random": ":", "kmeans": "-", "coactivation": "--"}
    for (split, sel), pts in sorted(series.items()):
        pts.sort()
        ls = styles.get(split, "-.")
        ax1.plot([p for p, _, _ in pts], [e for _, e, _ in pts], ls, marker="o", ms=3, label="%s / %s" % (split, sel))
        ax2.plot([p for p, _, _ in pts], [c for _, _, c in pts], ls, marker="o", ms=3, label="%s / %s" % (split, sel))
    ax1.set_xlabel("blocks kept (%)")
    ax1.set_ylabel("relative L2 error of the FFN output")
    ax1.set_yscale("log")
    ax2.set_xlabel("blocks kept (%)")
    ax2.set_ylabel("share of activation mass covered")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
