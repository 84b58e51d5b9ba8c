#!/usr/bin/env python3
"""Plots the whole-model study (scripts/minilm_whole_model.sh's whole_model.json): mean cosine of the
sparse model's sentence embeddings to the dense model's against the share of FFN block bytes computed.
Needs matplotlib (e.g. in the study's venv: OUT_DIR/venv/bin/pip install matplotlib).

  python3 scripts/minilm_plot.py whole_model.json out.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

j = json.load(open(sys.argv[1]))
lines = [
    ("no_pins", "oracle", "uniform", "oracle, no pins, uniform k", "0.5", "--"),
    ("no_pins", "avg_k", "uniform", "Avg-K, no pins, uniform k", "tab:red", ":"),
    ("pinned", "avg_k", "uniform", "Avg-K, pinned, uniform k", "tab:red", "--"),
    ("pinned", "avg_k", "e2e", "Avg-K, pinned, end-to-end budgets", "tab:red", "-"),
    ("pinned", "linear", "uniform", "linear router, pinned, uniform k", "tab:blue", "--"),
    ("pinned", "linear", "budget", "linear router, pinned, budgets on local errors", "tab:blue", ":"),
    ("pinned", "linear", "e2e", "linear router, pinned, end-to-end budgets", "tab:blue", "-"),
    ("pinned", "oracle", "e2e", "oracle, pinned, end-to-end budgets", "k", "-"),
    ("pinned", "linear", "refined", "linear router, pinned, refined budgets (--refine)", "tab:green", "-"),
]
fig, ax = plt.subplots(figsize=(7.5, 4.8))
for pins, router, mode, label, color, style in lines:
    pts = sorted((r["density"], r["mean_cos"]) for r in j["rows"]
                 if r["pins"] == pins and r["router"] == router and r["k_mode"] == mode)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, marker="o", ms=3, label=label)
ax.axhline(j["target"], color="0.7", lw=0.8)
ax.set_xlabel("share of FFN block bytes computed (average over the 6 layers)")
ax.set_ylabel("mean cosine to the dense embeddings")
ax.set_title(f"all-MiniLM-L6-v2, every FFN sparse (g={j['g']}, routers fitted to {j.get('router_target', 'mass')}), "
             f"{j['eval_tokens']} held-out tokens", fontsize=10)
ax.set_ylim(0.45, 1.005)
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
