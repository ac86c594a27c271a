"""Summarise the issue-12 s2 diagnostic runs: repair phase (gen protected) per run."""
import glob, json, math, os, statistics as st, sys
rows = []
for d in sorted(glob.glob(sys.argv[1] + "/*_s[0-9]")):
    if not os.path.exists(f"{d}/summary.json"):
        continue
    recs = [json.loads(x) for x in open(f"{d}/metrics.jsonl")]
    tr = [r for r in recs if r["kind"] == "train" and r["phase"] == 1]
    ev = [r for r in recs if r["kind"] == "eval" and r.get("eval_kind") == "phase_end"]
    g = lambda k: [r[k] for r in tr if k in r]
    mean = lambda v: st.mean(v) if v else float("nan")
    hp, hr = g("safety/heldout_predicted_dJ/gen"), g("safety/heldout_realised_dJ/gen")
    corr = (st.correlation(hp, hr) if len(hp) > 2 and len(set(hp)) > 1 and len(set(hr)) > 1 else float("nan"))
    gen = [e["pass@1"] for e in ev if e.get("skill") == "gen"]
    print(f"{os.path.basename(d):32s} steps {len(tr)} rows {mean(g('safety/num_rows')):5.1f} "
          f"active_frac {mean(g('safety/active_frac')):.2f} max|cos| {mean(g('safety/max_abs_cos')):.3f} "
          f"(max {max(g('safety/max_abs_cos') or [float('nan')]):.3f}) share {mean(g('safety/protected_share')):.4f} "
          f"rel_change {mean(g('safety/rel_change')):.3f} (max {max(g('safety/rel_change') or [float('nan')]):.3f}) "
          f"cos(target,gen) {mean(g('safety/cos/target~gen')):+.3f} "
          f"pred/real dJ {mean(g('safety/predicted_dJ/gen')):+.4f}/{mean(g('safety/realised_dJ/gen')):+.4f} "
          f"heldout pred/real {mean(hp):+.4f}/{mean(hr):+.4f} corr {corr:+.2f} "
          f"update_s p0/p1 {mean([r['time/update_s'] for r in recs if r['kind']=='train' and r['phase']==0]):.2f}/{mean(g('time/update_s')):.2f} "
          f"drift_end {(g('safety/drift/gen') or [float('nan')])[-1]:+.4f} gen pass@1 by phase {gen}"
          + (f" trust kl pred/real max {max(g('safety/trust/kl_predicted/gen')):.5f}/"
             f"{max(g('safety/trust/kl_realised/gen')):.5f} outside_frac {mean(g('safety/trust/outside_frac/gen')):.3f}"
             if g("safety/trust/kl_realised/gen") else ""))
