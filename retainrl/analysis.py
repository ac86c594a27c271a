"""Interference between skills, two ways (S x S tables, row = the skill trained / whose gradient,
column = the skill affected):

(a) gradient cosine: per skill, the gradient of its RLVR surrogate J_s (GRPO advantages on fresh
    rollouts of `prompts` training prompts x `samples`, the same estimate the skill-safe layer
    uses) over the LoRA parameters; entry [i][j] = cos(grad J_i, grad J_j). Negative: a step
    that helps i hurts j to first order.
    With --checkpoints, the same matrix is also computed at each given adapter: a run's
    phase-end files RUN/ckpt/phase<l>.safetensors (the trainer keeps one per phase) or its latest
    RUN/ckpt/state.safetensors, so the interference can be followed through training.
(b) empirical transfer: from the base model, train each skill alone for K steps (the run's
    config with protocol single) and measure the change of every skill's held-out pass@1;
    entry [i][j] = pass@1_j after training i - pass@1_j before.

    retainrl analyze CONFIG [key=value ...] --out DIR [--transfer-steps K] [--checkpoints A.safetensors,B.safetensors]
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from retainrl.config import load_config
from retainrl.safety.estimates import SkillMemory
from retainrl.parallel import flat_grad
from retainrl.seeds import derive_seed
from retainrl.train import checkpoint
from retainrl.train.config import RunConfig
from retainrl.train.trainer import Trainer
from retainrl.verify import Sandbox


def gradient_cosines(trainer: Trainer, sandbox, prompts: int = 16, samples: int = 4, seed: int = 0) -> list[list[float]]:
    """S x S cosine matrix of the skills' surrogate gradients at the trainer's current parameters."""
    params = trainer.policy.trainable_parameters()
    grads = []
    for i, skill in enumerate(trainer.skills):
        mem = SkillMemory(skill, trainer.train_tasks[skill], prompts, samples,
                          seed=derive_seed(seed, "analysis/prompts", skill))
        mem.refresh(trainer.policy, sandbox, trainer.cfg.sampling, seed=derive_seed(seed, "analysis/rollouts", skill),
                    step=0)
        for p in params:
            p.grad = None
        (-mem.surrogate(trainer.policy, list(range(len(mem.tasks) * samples)), is_clip=2.0)).backward()
        grads.append(-flat_grad(params).double())  # grad J_s
    for p in params:
        p.grad = None
    G = torch.stack(grads)
    norms = G.norm(dim=1)
    cos = (G @ G.T) / (norms[:, None] * norms[None, :]).clamp(min=1e-30)
    cos[norms == 0, :] = float("nan")
    cos[:, norms == 0] = float("nan")
    return cos.tolist()


def empirical_transfer(config, overrides: list[str], steps: int, out: Path,
                       skills: list[str]) -> tuple[list[str], list[list[float]]]:
    """Train each of `skills` (the run's skills, e.g. all four of world v2) alone for `steps` steps
    from the base model; return (skills, S x S deltas)."""
    matrix = []
    for skill in skills:
        cfg = load_config(RunConfig, config, list(overrides) + ["protocol.kind=single", f"protocol.phases=[{skill}]",
                                                                 f"protocol.steps_per_phase={steps}", "eval.every=0",
                                                                 f"name=transfer-{skill}"])
        summary = Trainer(cfg, out / f"train_{skill}").run()
        before, after = summary["R"][0], summary["R"][-1]
        order = summary["skills"]
        matrix.append([after[order.index(s)] - before[order.index(s)] for s in skills])
    return skills, matrix


def worst_pair(skills: list[str], matrix: list[list[float]]) -> str:
    pairs = [(matrix[i][j], skills[i], skills[j]) for i in range(len(skills)) for j in range(len(skills))
             if i != j and matrix[i][j] == matrix[i][j]]
    if not pairs:
        return "no off-diagonal entries"
    v, a, b = min(pairs)
    return f"training {a} hurts {b} most ({v:+.3f})"


def load_adapter_file(path: str | Path) -> tuple[dict, str]:
    """(adapter state, label) from a phase-end file or a trainer checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    st = checkpoint.load(path, required=("adapter",))  # verified, never unpickled
    return st["adapter"], f"{path.parent.parent.name}/{path.stem}@step{st.get('global_step', '?')}"


def analyze(config, overrides: list[str], out_dir, transfer_steps: int = 0, prompts: int = 16,
            samples: int = 4, checkpoints: list[str] = ()) -> dict:
    from retainrl.report.plots import plot_interference

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(RunConfig, config, list(overrides) + ["protocol.kind=single", "protocol.phases=[gen]"])
    trainer = Trainer(cfg, out / "base")
    at: dict[str, list[list[float]]] = {}
    with Sandbox(workers=cfg.sandbox_workers) as sb:
        cos = gradient_cosines(trainer, sb, prompts, samples, seed=cfg.seed)
        for i, path in enumerate(checkpoints):
            adapter, label = load_adapter_file(path)
            trainer.policy.load_adapter_state(adapter)
            at[label] = gradient_cosines(trainer, sb, prompts, samples, seed=cfg.seed)
            plot_interference(at[label], trainer.skills, f"Gradient cosine between skills ({label})",
                              out / f"gradient_cosine_ckpt{i}.png")
    result = {"skills": trainer.skills, "gradient_cosine": cos,
              "gradient_cosine_note": worst_pair(trainer.skills, cos).replace("hurts", "conflicts with")}
    if at:
        result["gradient_cosine_at"] = at
    plot_interference(cos, trainer.skills, "Gradient cosine between skills (base model)", out / "gradient_cosine.png")
    if transfer_steps > 0:
        skills, transfer = empirical_transfer(config, overrides, transfer_steps, out, list(trainer.skills))
        result.update({"transfer_steps": transfer_steps, "empirical_transfer": transfer,
                       "empirical_transfer_note": worst_pair(skills, transfer)})
        plot_interference(transfer, skills, f"Change of pass@1 after {transfer_steps} steps on one skill",
                          out / "empirical_transfer.png")
    (out / "interference.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="retainrl analyze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--transfer-steps", type=int, default=0, help="K for the empirical transfer matrix (0: skip)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per skill for the gradient estimates")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--checkpoints", default="", help="comma list of adapter files (RUN/ckpt/phase1.pt, "
                                                       "RUN/ckpt/state.safetensors): gradient cosines at each too")
    a = ap.parse_intermixed_args(argv)  # overrides may follow the options
    ckpts = [c for c in a.checkpoints.split(",") if c]
    res = analyze(a.config, a.overrides, a.out, a.transfer_steps, a.prompts, a.samples, ckpts)
    print(json.dumps(res, indent=2))
    return 0
