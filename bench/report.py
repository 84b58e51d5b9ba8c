#!/usr/bin/env python3
"""Reads sparse_ffn_bench JSON (Google Benchmark --benchmark_out) and prints, per sparse benchmark,
the median time, GB/s on bytes touched, % of BM_stream_read bandwidth and the speedups over the dense
FFN of the same shape and batch from the same run: over OpenBLAS f32, and over the best dense
baseline measured (the fastest of OpenBLAS f32, oneDNN f32 and oneDNN bf16); then the paired figures
(bench_main.cpp: each iteration next to a plain read of its bytes, and with --sffn_pair=all next to the
dense oneDNN bf16 FFN): % of the best reader's rate and the speedup over dense bf16, both medians of
per-iteration ratios, which hold when the host's bandwidth changes between benchmarks; writes PNG plots.

  report.py results.json [--plots DIR] [--markdown]
"""
import argparse
import json
import os
import re
import statistics
import sys
from collections import defaultdict

NAME = re.compile(
    r"^BM_(?P<kind>sparse|dense)_(?P<sel>avg_k|hash|learned_gate|oracle|openblas|onednn)_(?P<dt>f32|bf16|f16|q8|q4)"
    r"/d:(?P<d>\d+)/dff:(?P<f>\d+)(?:/g:(?P<g>\d+)/density:(?P<p>\d+))?/batch:(?P<n>\d+)")
UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def load(path):
    """Median per benchmark (the 'median' aggregate when present, else the median of the runs)."""
    with open(path) as fh:
        data = json.load(fh)
    runs = defaultdict(list)
    medians = {}
    skipped = {}
    for b in data["benchmarks"]:
        name = b.get("run_name", b["name"])
        if b.get("error_occurred"):  # skipped (e.g. oneDNN bf16 on a CPU without AVX-512): say so
            if name not in skipped:
                skipped[name] = b.get("error_message", "")
                print("skipped: %s: %s" % (name, skipped[name]))
            continue
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[name] = b
            continue
        runs[name].append(b)
    rows = {}
    for name in set(runs) | set(medians):
        rep = runs.get(name, [])
        if name in medians:
            m = medians[name]
        else:
            m = dict(rep[0])
            m["real_time"] = statistics.median(r["real_time"] for r in rep)
            if "bytes_per_second" in rep[0]:
                m["bytes_per_second"] = statistics.median(r["bytes_per_second"] for r in rep)
        rows[name] = {
            "ms": m["real_time"] * UNIT_MS[m.get("time_unit", "ns")],
            "gbs": m.get("bytes_per_second", 0.0) / 1e9,
            "density": m.get("density"),
            "touched": m.get("touched"),
            "reps": m.get("repetitions", max(len(rep), 1)),
            "paired_pct": m.get("paired_stream_pct"),
            "paired_gbs": m.get("paired_stream_gbs"),
            "paired_dense": m.get("paired_vs_dense"),
            "paired_dense_ms": m.get("paired_dense_ms"),
        }
    return data.get("context", {}), rows


def parse(name):
    m = NAME.match(name)
    if not m:
        return None
    r = m.groupdict()
    return {"kind": r["kind"], "sel": r["sel"], "dt": r["dt"], "d": int(r["d"]), "f": int(r["f"]),
            "g": int(r["g"]) if r["g"] else None, "p": int(r["p"]) if r["p"] else None, "n": int(r["n"])}


def table(context, rows, markdown):
    # The reference read bandwidth: the fastest of the BM_stream_read/<reader> variants.
    streams = {k: v["gbs"] for k, v in rows.items() if k.startswith("BM_stream_read")}
    stream = max(streams.values()) if streams else None
    dense = defaultdict(dict)  # (d, f, n) -> {"openblas f32": ms, "onednn bf16": ms, ...}
    for name, v in rows.items():
        p = parse(name)
        if p and p["kind"] == "dense":
            dense[(p["d"], p["f"], p["n"])]["%s %s" % (p["sel"], p["dt"])] = v["ms"]
    out = []
    for name, v in rows.items():
        p = parse(name)
        if not p or p["kind"] != "sparse":
            continue
        base = dense.get((p["d"], p["f"], p["n"]), {})
        blas = base.get("openblas f32")
        best = min(base.values()) if base else None
        v = dict(v, vs_best=best / v["ms"] if best else None)
        out.append((p, v, blas / v["ms"] if blas else None))
    out.sort(key=lambda e: (e[0]["d"], e[0]["f"], e[0]["sel"], e[0]["dt"], e[0]["g"], e[0]["p"], e[0]["n"]))
    hdr = ["selector", "dtype", "d×d_ff", "g", "density %", "batch", "median ms", "GB/s", "% stream",
           "vs OpenBLAS", "vs best dense", "touched", "reps"]
    fmt = "{:<13}{:<6}{:<12}{:>4}{:>10}{:>6}{:>11}{:>7}{:>9}{:>12}{:>14}{:>8}{:>6}"
    print("machine: %s, %s CPUs @ %s MHz, threads %s, ISA %s, bf16 value pass %s, activation %s" % (
        context.get("host_name", "?"), context.get("num_cpus", "?"), context.get("mhz_per_cpu", "?"),
        context.get("sparse_ffn.threads", "?"), context.get("sparse_ffn.isa", "?"),
        context.get("sparse_ffn.bf16_value_pass", "?"), context.get("sparse_ffn.activation", "?")))
    if stream:
        print("BM_stream_read: %.1f GB/s (best of %s)" % (stream, ", ".join(
            "%s %.1f" % (k.split("/", 1)[-1], g) for k, g in sorted(streams.items()))))
    # One thread's micro-kernels alone (bench_kernels.cpp): GB/s from L2 and from memory.
    kernels = defaultdict(dict)  # (pass, dtype) -> {"l2": GB/s, "dram": GB/s}
    for name, v in rows.items():
        k = re.match(r"^BM_kernel_(keys|values)/(\w+)/(l2|dram)(?:/tokens:(\d+))?(?:/|$)", name)
        if k:
            where = k.group(3) + (" %s tokens" % k.group(4) if k.group(4) else "")
            kernels[(k.group(1), k.group(2))][where] = v["gbs"]
    for (pas, dt), g in sorted(kernels.items()):
        # l2, dram, then the token groups from L2 by size
        order = sorted(g, key=lambda w: ({"l2": 0, "dram": 1}.get(w, 2), int(w.split()[1]) if " " in w else 0))
        print("kernel %s %s, one thread: %s" % (pas, dt, ", ".join("%s %.1f GB/s" % (w, g[w]) for w in order)))
    for (d, f, n), libs in sorted(dense.items()):
        best = min(libs, key=libs.get)
        print("dense %d×%d batch %d: %s (best: %s)" % (
            d, f, n, ", ".join("%s %.2f ms" % (k, libs[k]) for k in sorted(libs)), best))
    print("| " + " | ".join(hdr) + " |" if markdown else fmt.format(*hdr))
    if markdown:
        print("|" + "---|" * len(hdr))
    for p, v, sp in out:
        cells = [p["sel"], p["dt"], "%d×%d" % (p["d"], p["f"]), str(p["g"]), str(p["p"]), str(p["n"]),
                 "%.2f" % v["ms"], "%.1f" % v["gbs"],
                 "%.0f%%" % (100 * v["gbs"] / stream) if stream else "-",
                 "%.2f×" % sp if sp else "-", "%.2f×" % v["vs_best"] if v["vs_best"] else "-",
                 "%.0f%%" % (100 * v["touched"]) if v["touched"] is not None else "-", str(v["reps"])]
        print("| " + " | ".join(cells) + " |" if markdown else fmt.format(*cells))
    paired = [(p, v) for p, v, _ in out if v.get("paired_pct") is not None or v.get("paired_dense") is not None]
    if paired:
        print("paired (each iteration next to a plain read of its bytes%s; medians of per-iteration ratios):" % (
            " and the dense oneDNN bf16 FFN" if any(v.get("paired_dense") for _, v in paired) else ""))
        phdr = ["selector", "dtype", "d×d_ff", "g", "density %", "batch", "median ms", "stream GB/s",
                "% stream", "dense bf16 ms", "vs dense bf16"]
        pfmt = "{:<13}{:<6}{:<12}{:>4}{:>10}{:>6}{:>11}{:>12}{:>10}{:>14}{:>14}"
        print("| " + " | ".join(phdr) + " |" if markdown else pfmt.format(*phdr))
        if markdown:
            print("|" + "---|" * len(phdr))
        for p, v in paired:
            opt = lambda x, f: f % x if x is not None else "-"
            cells = [p["sel"], p["dt"], "%d×%d" % (p["d"], p["f"]), str(p["g"]), str(p["p"]), str(p["n"]),
                     "%.2f" % v["ms"], opt(v.get("paired_gbs"), "%.1f"), opt(v.get("paired_pct"), "%.0f%%"),
                     opt(v.get("paired_dense_ms"), "%.2f"), opt(v.get("paired_dense"), "%.2f×")]
            print("| " + " | ".join(cells) + " |" if markdown else pfmt.format(*cells))
    return out, stream


def plots(out, stream, directory):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not available: no plots (apt-get install python3-matplotlib)", file=sys.stderr)
        return
    os.makedirs(directory, exist_ok=True)

    def line_plot(series, name, title, xlabel, ylabel, logx=False, extra=None):
        if not series:
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=label)
        if extra:
            extra(ax, series)
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(directory, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print("wrote", path)

    by_density, by_batch, by_g = defaultdict(list), defaultdict(list), defaultdict(list)
    for p, v, sp in out:
        shape = "%d×%d" % (p["d"], p["f"])
        if p["dt"] == "f32" and p["g"] == 64 and p["n"] == 1 and sp:
            by_density["%s %s" % (p["sel"], shape)].append((p["p"], sp))
        if p["sel"] == "avg_k" and p["g"] == 64 and p["p"] == 25:
            by_batch["%s %s" % (p["dt"], shape)].append((p["n"], v["gbs"]))
        if p["sel"] == "avg_k" and p["dt"] == "f32" and p["p"] == 25 and sp:
            by_g["batch %d, %s" % (p["n"], shape)].append((p["g"], sp))

    def bytes_bound(ax, series):
        xs = sorted({a for pts in series.values() for a, _ in pts})
        ax.plot(xs, [100.0 / x for x in xs], "k--", lw=1, label="bytes bound (100 / density)")

    def stream_line(ax, series):
        if stream:
            ax.axhline(stream, color="k", ls="--", lw=1, label="stream read")

    line_plot(by_density, "speedup_vs_density.png", "f32, g=64, batch 1", "blocks kept (%)",
              "speedup vs dense OpenBLAS", extra=bytes_bound)
    line_plot(by_batch, "gbs_vs_batch.png", "avg_k, g=64, 25% of blocks", "batch", "GB/s on bytes touched",
              logx=True, extra=stream_line)
    by_g = {k: v for k, v in by_g.items() if len(v) > 1}  # only actual sweeps
    line_plot(by_g, "block_size_sweep.png", "avg_k, f32, 25% of blocks", "block size g",
              "speedup vs dense OpenBLAS", logx=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--plots", help="directory for PNG plots")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    a = ap.parse_args()
    context, rows = load(a.json)
    out, stream = table(context, rows, a.markdown)
    if a.plots:
        plots(out, stream, a.plots)


if __name__ == "__main__":
    main()
