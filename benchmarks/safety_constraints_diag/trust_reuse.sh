#!/bin/bash
# Issue 12 section 2 diagnostic, continued (session 5): the trust region (safety.trust_region) and reused
# rows (safety.rows_every) on the same setting as rows_bind.sh (sequential gen -> repair, 6 steps a phase).
# Summary: python benchmarks/safety_constraints_diag/summarise.py runs/safety_constraints_diag/trust_reuse
# (output: benchmarks/results/safety_constraints_trust_reuse.txt)
cd "$(dirname "$0")/../.."
mkdir -p runs/safety_constraints_diag/trust_reuse
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
COMMON="protocol.phases=[gen,repair] protocol.steps_per_phase=6 safety.enabled=true safety.diagnostics_every=1 world.n_heldout=8 world.version=2
  safety.constraint=prompt_ll safety.eps_mode=absolute"
for seed in 0 1; do
  for v in "trust_alone:safety.budget=step safety.eps=1.0 safety.trust_region=0.0002" \
           "trust_phase:safety.budget=phase safety.eps=0.0 safety.trust_region=0.0002" \
           "phase_rows5:safety.budget=phase safety.eps=0.0 safety.rows_every=5"; do
    name=${v%%:*}; args=${v#*:}
    out=runs/safety_constraints_diag/trust_reuse/${name}_s${seed}
    rm -rf $out
    nice -n 19 timeout 900 .venv/bin/python -m retainrl train configs/smoke.yaml seed=$seed $COMMON $args \
      --out $out > $out.log 2>&1
    echo "$name seed $seed rc $?"
  done
done
