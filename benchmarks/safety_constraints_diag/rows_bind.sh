#!/bin/bash
# Issue 12 section 2 diagnostic (docs/LOG.md, 2026-12-01). Summary: python benchmarks/safety_constraints_diag/summarise.py runs/safety_constraints_diag/<rows_bind|coverage>
# issue 12 s2 diagnostic: sequential gen -> repair on the bundled model, old row vs new rows
cd "$(dirname "$0")/../.."
mkdir -p runs/safety_constraints_diag/rows_bind runs/safety_constraints_diag/coverage
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
COMMON="protocol.phases=[gen,repair] protocol.steps_per_phase=6 safety.enabled=true safety.diagnostics_every=1 world.n_heldout=8 world.version=2"
for seed in 0 1; do
  for v in "skill_mean:step:relative" "prompt_ll:step:absolute" "prompt_ll:phase:absolute" "prompt_ll_subspace:step:absolute" "prompt_ll_subspace:phase:absolute"; do
    IFS=: read c b m <<< "$v"
    out=runs/safety_constraints_diag/rows_bind/${c}_${b}_s${seed}
    rm -rf $out
    nice -n 10 timeout 900 .venv/bin/python -m retainrl train configs/smoke.yaml seed=$seed $COMMON \
      safety.constraint=$c safety.budget=$b safety.eps_mode=$m safety.eps=0.0 --out $out > $out.log 2>&1
    echo "$c $b seed $seed rc $?"
  done
done
