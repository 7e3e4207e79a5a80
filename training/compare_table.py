#!/usr/bin/env python
"""One markdown table comparing models from their ``evaluate.py --json`` / ``benchmarks/quality.py`` files.

    python training/compare_table.py "paper recipe=runs/eval/paper.json" "v1=runs/eval/v1.json" \\
        "v2=benchmarks/results/quality.json"

Columns: segmentation val mIoU at 1 / 5 / 25 Euler steps (where measured), then per synthesis step count the
layout fidelity, two-sample mean |Δ|, 4-sample pixel std, sharpness ratio and Fréchet distance.
"""

from __future__ import annotations

import json
import sys


def _seg(res: dict) -> dict:
    """{steps: mIoU} from either JSON layout (evaluate.py rows are named, quality.py rows have steps)."""
    out = {}
    for r in res.get("segmentation", []):
        if "steps" in r:
            if r.get("solver", "euler") == "euler":
                out[r["steps"]] = r["miou"]
        elif r["name"].startswith("SemFlow"):
            out[int(r["name"].split()[1])] = r["miou"]
    return out


def table(entries: list[tuple[str, dict]]) -> str:
    head = ["model", "seg mIoU 1 / 5 / 25 steps", "synthesis steps", "layout fidelity", "two-sample mean abs diff",
            "pixel std (4 samples)", "sharpness ratio", "Fréchet distance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in entries:
        seg = _seg(res)
        segs = " / ".join(f"{seg[s]:.3f}" if s in seg else "-" for s in (1, 5, 25))
        rows = [r for r in res.get("synthesis", []) if r.get("solver", "euler") == "euler"]
        for i, r in enumerate(sorted(rows, key=lambda r: r["steps"])):
            lines.append(f"| {name if i == 0 else ''} | {segs if i == 0 else ''} | {r['steps']} | {r['ratio']:.2f} | "
                         f"{r['diversity_abs_diff']:.3f} | {r['diversity_std']:.3f} | {r['sharpness_ratio']:.2f} | "
                         f"{r['frechet_distance']:.2f} |")
        if not rows:
            lines.append(f"| {name} | {segs} | - | - | - | - | - | - |")
    return "\n".join(lines)


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    entries = []
    for a in args:
        name, _, path = a.partition("=")
        with open(path) as f:
            entries.append((name, json.load(f)))
    print(table(entries))


if __name__ == "__main__":
    main()
