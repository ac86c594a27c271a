"""Issue 15's equivalence measurement: the same sequential job (gen -> repair -> reason, the demo's
settings) run by TRL's GRPOTrainer with retainrl's callback and by retainrl's own trainer, plain
and skill-safe, over seeds; mean ± sd of forgetting and target gain per side and method, and
whether the two sides agree within the seed spread.

    for s in 0 1 2; do OMP_NUM_THREADS=1 python examples/trl_sequential_skill_safe.py --seed $s --out runs/eq15/trl/s$s; done
    python -m retainrl demo --methods plain,safe --seeds 0,1,2 --out runs/eq15/retainrl
    python benchmarks/trl_vs_retainrl.py --trl runs/eq15/trl --retainrl runs/eq15/retainrl

Reads TRL's <trl>/s<k>/<plain|skill_safe>/summary.json and retainrl's
<retainrl>/<plain|safe>/seed<k>/summary.json (several --retainrl folders may be given).
"Agree" means |mean_TRL - mean_retainrl| <= the larger of the two seed standard deviations.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

METRICS = ("forgetting", "target_gain_mean", "avg", "worst")
METHODS = {"plain": ("plain", "plain"), "skill-safe": ("skill_safe", "safe")}   # name: (TRL folder, retainrl folder)


def value(summary: dict, key: str) -> float:
    if key == "target_gain_mean":
        return st.mean(summary["target_gain"])
    return summary[key]


def load(paths: list[Path]) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(paths)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trl", required=True)
    ap.add_argument("--retainrl", nargs="+", required=True)
    a = ap.parse_args()
    for name, (trl_dir, own_dir) in METHODS.items():
        trl = load(list(Path(a.trl).glob(f"s*/{trl_dir}/summary.json")))
        own = load([p for root in a.retainrl for p in Path(root).glob(f"{own_dir}/seed*/summary.json")])
        print(f"## {name}: TRL n={len(trl)}, retainrl n={len(own)}")
        for key in METRICS:
            x, y = [value(s, key) for s in trl], [value(s, key) for s in own]
            if len(x) < 2 or len(y) < 2:
                print(f"  {key}: too few seeds")
                continue
            mx, sx, my, sy = st.mean(x), st.stdev(x), st.mean(y), st.stdev(y)
            verdict = "agree" if abs(mx - my) <= max(sx, sy) else "DIFFER"
            print(f"  {key:17s} TRL {mx:+.3f} ± {sx:.3f}   retainrl {my:+.3f} ± {sy:.3f}   "
                  f"diff {mx - my:+.3f}  {verdict}   (TRL {', '.join(f'{v:+.3f}' for v in x)}; "
                  f"retainrl {', '.join(f'{v:+.3f}' for v in y)})")


if __name__ == "__main__":
    main()
