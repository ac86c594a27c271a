#!/bin/bash
# Issue 11 (docs/LOG.md, 2026-12-01): the reverse order reason -> repair -> gen and the mixed protocol
# (60 steps, the sequential budget) on the v3 testbed, plain GRPO, seeds 0-2, two runs at a time.
# Summary: python benchmarks/testbed_v3_protocols.py runs/s4extra
cd "$(dirname "$0")/.."
mkdir -p runs/s4extra
run() { .venv/bin/python -m retainrl train configs/seq_v3.yaml "$@" > "${@: -1}.log" 2>&1; }
for s in 0 1 2; do
  run seed=$s protocol.phases=[reason,repair,gen] sandbox_workers=1 --out runs/s4extra/rev-s$s &
  run seed=$s protocol.kind=mixed protocol.steps_per_phase=60 sandbox_workers=1 --out runs/s4extra/mixed-s$s &
  wait
done
