"""Issue 12, the coverage hypothesis, tested offline (no training): would an activation subspace per
LoRA layer (GPM / Adam-NSCL style) keep a protected skill's *unseen* prompts, where the per-prompt
rows keep only the prompts they name?

    nice -n 19 python benchmarks/act_subspace_offline.py --run runs/ssv2/grr/w0/plain/s0 [--phase 2]
        [--energies 0.5,0.8,0.9,0.95,0.97,0.99] [--modes input,both] [--passk 0.5] [--out FILE.json]

A finished plain sequential run gives theta_{L-1} and theta_L (ckpt/phase<l>.safetensors, the
adapters at the phase ends; theta_0 is the base model), so Delta = theta_L - theta_{L-1} is plain
GRPO's real update of phase L (`--phase`). At theta_{L-1} a memory of each earlier skill's
verified-correct answers is built (AnswerMemory: `--basis` prompts for the subspace, `--heldout`
other prompts never used for it); the target skill's answers are taken at theta_L. Per LoRA module
(W = W0 + s B A; A r x n_in, B n_out x r) the uncentered covariances of the protected answers'
layer inputs x (at lora_A) and output gradients dy of sum_p J_p (at lora_B), summed over the
protected skills, give bases U (n_in x k_x), V (n_out x k_g), k by GPM's energy rule (the fewest
eigenvectors holding >= eps of the trace, capped at `--max_frac` of the space). The step is
projected factor by factor:

    both  (V^T dW U = 0 to first order):  dB <- dB - P_g dB Q_A,  dA <- dA - R_B dA P_x
    input (GPM on the LoRA tangent, dW U = 0): the same with V = I (then dB <- dB (I - Q_A) ~ 0)

with P_x = U U^T, P_g = V V^T, Q_A the projector onto col(A U), R_B onto col(B^T V) (r x r, at
theta_{L-1}). Reported per (mode, eps): the share of ||Delta||^2 removed; h = the share of plain's
change of the protected skills' J (token-mean answer log-likelihood, mean over their prompts) that
remains, on the basis prompts and on the held-out prompts; a = the share of plain's gain of the
target's J that remains; and the same h and a for a plain step shrink theta_{L-1} + c Delta with c
chosen so that a matches (the control: a projection that only shrinks the step is no better than a
smaller learning rate). The hypothesis is supported where the held-out h is well below the
shrink's h at the same a. `--passk EPS`: greedy pass@1 of every skill on the run's held-out tasks
at theta_{L-1}, theta_L and the projected step of each mode at that eps (the measure that counts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retainrl.analysis import load_adapter_file  # noqa: E402
from retainrl.config import load_config  # noqa: E402
from retainrl.evaluate import evaluate_skill  # noqa: E402
from retainrl.policy.model import load_policy  # noqa: E402
from retainrl.policy.rollout import SamplingConfig  # noqa: E402
from retainrl.safety.estimates import AnswerMemory  # noqa: E402
from retainrl.safety.subspace import basis, covariances, lora_modules, project_lora  # noqa: E402
from retainrl.train.config import RunConfig  # noqa: E402
from retainrl.train.trainer import build_tasks  # noqa: E402
from retainrl.verify import Sandbox  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished plain sequential run")
    ap.add_argument("--phase", type=int, default=2, help="the phase whose update is projected (>= 2)")
    ap.add_argument("--energies", default="0.5,0.8,0.9,0.95,0.97,0.99")
    ap.add_argument("--modes", default="input,both")
    ap.add_argument("--basis", type=int, default=28)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max_frac", type=float, default=1.0)
    ap.add_argument("--passk", type=float, default=None, help="eps at which pass@1 is measured")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    run, L = Path(a.run), a.phase
    cfg = load_config(RunConfig, run / "config.yaml", ["sandbox_workers=1"])
    phases = cfg.phase_skills()
    if not 2 <= L <= len(phases) or any(len(p) != 1 for p in phases):
        raise SystemExit(f"{run}: phases {phases}; --phase must name a later phase of one skill")
    protected, target = [p[0] for p in phases[:L - 1]], phases[L - 1][0]
    train, heldout = build_tasks(cfg)
    policy = load_policy(cfg.model)
    names = policy.named_trainable()
    th0 = {n: p.detach().clone() for n, p in names.items()}  # the base model's adapter (B = 0)
    load = lambda l: th0 if l == 0 else load_adapter_file(run / "ckpt" / f"phase{l}.safetensors")[0]  # noqa: E731
    th1, th2 = load(L - 1), load(L)
    mods = lora_modules(policy.model)
    t0 = time.time()
    with Sandbox(workers=1) as sb:
        policy.load_adapter_state(th1)
        mem = {s_: AnswerMemory(s_, train[s_], a.basis, a.heldout, a.samples, seed=cfg.seed + 101 + i)
               for i, s_ in enumerate(protected)}
        for i, m in enumerate(mem.values()):
            m.refresh(policy, sb, cfg.sampling, seed=cfg.seed + 202 + i, step=0)
        policy.load_adapter_state(th2)
        tgt = AnswerMemory(target, train[target], 24, 0, a.samples, seed=cfg.seed + 303)
        tgt.refresh(policy, sb, cfg.sampling, seed=cfg.seed + 304, step=0)
        b_idx = {s_: [p for p in range(len(m.tasks)) if m.answers[p] is not None] for s_, m in mem.items()}
        h_idx = {s_: m.heldout_prompts() for s_, m in mem.items()}
        r_idx = [p for p in range(len(tgt.tasks)) if tgt.answers[p] is not None]
        print(f"phase {L} ({target}), protecting {protected}: basis {({k: len(v) for k, v in b_idx.items()})}, "
              f"held-out {({k: len(v) for k, v in h_idx.items()})}, target {len(r_idx)} prompts with answers "
              f"({time.time() - t0:.0f} s)", flush=True)

        def J(state) -> dict[str, float]:
            policy.load_adapter_state(state)
            with torch.no_grad():
                mean = lambda idx: sum(float(mem[k].values(policy, v).sum()) for k, v in idx.items()) / \
                    max(1, sum(len(v) for v in idx.values()))  # noqa: E731
                return {"basis": mean(b_idx), "heldout": mean(h_idx), "target": float(tgt.values(policy, r_idx).mean())}

        def passk(state) -> dict[str, float]:
            policy.load_adapter_state(state)
            return {s_: evaluate_skill(policy, heldout[s_], sb, sampling)["pass@1"] for s_ in protected + [target]}

        sampling = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.sampling.temperature,
                                  max_prompt_tokens=cfg.sampling.max_prompt_tokens)
        j1, j2 = J(th1), J(th2)
        delta = {n: th2[n] - th1[n] for n in names}
        share = lambda j: {k: (j[k] - j1[k]) / (j2[k] - j1[k]) for k in j1}  # noqa: E731
        policy.load_adapter_state(th1)
        C = None
        for s_, m in mem.items():
            Cs = covariances(policy, [m.answers[p] for p in b_idx[s_]], mods)
            C = Cs if C is None else {k: (C[k][0] + Cs[k][0], C[k][1] + Cs[k][1]) for k in C}
        keyA = {name: f"{name}.lora_A.default.weight" for name in mods}
        keyB = {name: f"{name}.lora_B.default.weight" for name in mods}
        assert all(keyA[m] in names and keyB[m] in names for m in mods), "LoRA parameter names"
        total = sum(float(d.pow(2).sum()) for d in delta.values())
        rows, passes = [], {}
        if a.passk is not None:
            passes["before"], passes["plain"] = passk(th1), passk(th2)
        for mode in a.modes.split(","):
            for eps in [float(e) for e in a.energies.split(",")]:
                new = dict(th1)
                removed, ks = 0.0, {}
                for m in mods:
                    U = basis(C[m][0], eps, a.max_frac)
                    V = basis(C[m][1], eps, a.max_frac) if mode == "both" else None
                    A1, B1 = th1[keyA[m]].double(), th1[keyB[m]].double()
                    dA0, dB0 = delta[keyA[m]].double(), delta[keyB[m]].double()
                    dA, dB = project_lora(dA0, dB0, A1, B1, U, V)
                    removed += float((dA0 - dA).pow(2).sum() + (dB0 - dB).pow(2).sum())
                    new[keyA[m]] = (A1 + dA).to(th1[keyA[m]].dtype)
                    new[keyB[m]] = (B1 + dB).to(th1[keyB[m]].dtype)
                    ks.setdefault(m.rsplit(".", 1)[-1], []).append((U.shape[1], U.shape[0], V.shape[1] if V is not None else None))
                proj = share(J(new))
                # the control: the plain step shrunk until it keeps the same share of the target's gain
                c = max(0.0, min(1.0, proj["target"]))
                shrunk = {n: th1[n] + c * delta[n] for n in names}
                shrink = share(J(shrunk))
                row = {"mode": mode, "energy": eps, "removed_share": removed / total, "h_basis": proj["basis"],
                       "h_heldout": proj["heldout"], "a_target": proj["target"], "shrink_c": c,
                       "shrink_h_basis": shrink["basis"], "shrink_h_heldout": shrink["heldout"],
                       "shrink_a_target": shrink["target"],
                       "k": {kind: [round(sum(x[0] for x in v) / len(v), 1), v[0][1],
                                    None if v[0][2] is None else round(sum(x[2] for x in v) / len(v), 1)]
                             for kind, v in ks.items()}}
                if a.passk is not None and abs(eps - a.passk) < 1e-9:
                    passes[f"{mode}-{eps}"], passes[f"shrink-{mode}-{eps}"] = passk(new), passk(shrunk)
                rows.append(row)
                print(f"{mode:5s} eps {eps:.2f}: removed {row['removed_share']:.2f} | protected J change kept: basis "
                      f"{row['h_basis']:+.2f} held-out {row['h_heldout']:+.2f} | target gain kept {row['a_target']:+.2f} | "
                      f"shrink c={c:.2f}: basis {shrink['basis']:+.2f} held-out {shrink['heldout']:+.2f} target "
                      f"{shrink['target']:+.2f} | k {row['k']}", flush=True)
    for k, v in passes.items():
        print(f"pass@1 {k:18s} " + " ".join(f"{s_} {x:.3f}" for s_, x in v.items()))
    print(f"J at theta_{L - 1} {j1}, theta_{L} {j2}")
    result = {"run": str(run), "phase": L, "protected": protected, "target": target, "J_before": j1, "J_plain": j2,
              "rows": rows, "pass@1": passes,
              "n_prompts": {"basis": {k: len(v) for k, v in b_idx.items()}, "heldout": {k: len(v) for k, v in h_idx.items()},
                            "target": len(r_idx)}}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
