"""Summarise benchmarks/testbed_v3_protocols.sh: per-run R rows and gains, mean ± sd over seeds."""
import json
import statistics as st
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/s4extra")
for kind in ("rev", "mixed"):
    runs = [json.loads(p.read_text()) for p in sorted(root.glob(f"{kind}-s*/summary.json"))]
    for r in runs:
        print(kind, "seed", r["seed"], "skills", r["skills"], "R", r["R"], "gains", [round(g, 3) for g in r["target_gain"]],
              "forgetting", r["forgetting"], "worst", r["worst"], "avg", round(r["avg"], 3))
    if len(runs) > 1:
        def ms(key):
            v = [r[key] for r in runs if r.get(key) is not None]
            return f"{st.mean(v):.3f} ± {st.stdev(v):.3f}" if len(v) > 1 else "-"
        gains = list(zip(*[r["target_gain"] for r in runs]))
        print(f"{kind}: n={len(runs)} forgetting {ms('forgetting')} worst {ms('worst')} avg {ms('avg')} phase gains "
              + " / ".join(f"{st.mean(g):+.3f}" for g in gains))
