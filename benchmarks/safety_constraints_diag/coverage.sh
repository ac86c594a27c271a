#!/bin/bash
# Issue 12 section 2 diagnostic (docs/LOG.md, 2026-12-01). Summary: python benchmarks/safety_constraints_diag/summarise.py runs/safety_constraints_diag/<rows_bind|coverage>
# coverage: constrain all 28 constraint prompts per step instead of 8 (prompt_ll, budget step, eps 0)
cd "$(dirname "$0")/../.."
mkdir -p runs/safety_constraints_diag/rows_bind runs/safety_constraints_diag/coverage
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
for seed in 0 1; do
  out=runs/safety_constraints_diag/coverage/prompt_ll_step_s$seed
  rm -rf $out
  nice -n 10 timeout 900 .venv/bin/python -m retainrl train configs/smoke.yaml seed=$seed protocol.phases=[gen,repair] \
    protocol.steps_per_phase=6 safety.enabled=true safety.diagnostics_every=1 world.n_heldout=8 world.version=2 safety.constraint=prompt_ll \
    safety.budget=step safety.eps_mode=absolute safety.eps=0.0 safety.batch_prompts=28 --out $out > $out.log 2>&1
  echo "seed $seed rc $?"
done
