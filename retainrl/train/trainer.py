"""The training loop: phases of RLVR steps, an evaluation schedule, checkpoints and resume.

One step = sample prompts (TaskSampler) -> n rollouts each (policy.rollout.generate) ->
verdicts (verify.checks.verify_many, in the Sandbox) -> rewards -> advantages and losses
(train.objective, pure functions from rl/) -> optional continual-learning penalty
(baselines/) -> gradient checks, clipping -> optimizer step.

Evaluation: every `eval.every` steps and at every phase boundary (row l of R is the state
after phase l, row 0 the model before training), every skill on its fixed held-out set.
Faults: a NaN/inf loss or gradient skips the step (logged, counted); a verifier error scores
the sample 0 (counted); checkpoints are atomic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from retainrl.config import dump_yaml, to_dict
from retainrl.data.world import WorldConfig, make_world
from retainrl.evaluate import evaluate
from retainrl.metrics.retention import summarize
from retainrl.policy.model import load_policy
from retainrl.policy.rollout import SamplingConfig, generate
from retainrl.train import objective
from retainrl.train.config import RunConfig
from retainrl.train.progress import Progress
from retainrl.train.runio import MetricsLog, TensorBoard, atomic_torch_save, atomic_write_text, load_checkpoint
from retainrl.safety.layer import SafetyLayer
from retainrl.train.sampler import TaskSampler
from retainrl.verify import Sandbox
from retainrl.verify.checks import verify_many


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, salt: str = "rollout") -> int:
    return int(hashlib.sha256(f"{seed}/{step}/{salt}".encode()).hexdigest()[:12], 16)


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: str | Path):
        self.cfg, self.out = cfg, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.phases = cfg.phase_skills()
        self.skills = cfg.all_skills()
        for extra in ("gen", "repair", "reason"):  # every world skill is evaluated, trained or not
            if extra not in self.skills:
                self.skills.append(extra)
        _seed_all(cfg.seed)
        # PPO needs the value head whatever the model section says
        self.policy = load_policy(dataclasses.replace(cfg.model, value_head=cfg.model.value_head or cfg.rl.algo == "ppo"))
        w = cfg.world
        world = make_world(WorldConfig(seed=w.seed, n_train=w.n_train, n_heldout=w.n_heldout,
                                       difficulty=w.difficulty, skills=tuple(self.skills)))
        self.train_tasks = {s: world[s]["train"] for s in self.skills}
        self.heldout = {s: world[s]["heldout"] for s in self.skills}
        self.sampler = TaskSampler(self.train_tasks, cfg.seed)
        params = self.policy.trainable_parameters()
        if cfg.rl.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.rl.lr)
        else:
            self.opt = torch.optim.AdamW(params, lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay)
        self.method = objective.make_method(cfg, self.policy)
        self.safety = SafetyLayer(cfg, self) if cfg.safety.enabled else None
        self.eval_sampling = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens,
                                            max_prompt_tokens=cfg.sampling.max_prompt_tokens,
                                            stop_strings=cfg.sampling.stop_strings)
        # progress state (all of it goes into the checkpoint)
        self.global_step = 0
        self.phase = 0          # index of the phase being trained
        self.phase_step = 0     # steps done inside it
        self.R: list[list[float]] = []          # rows: before training, after each phase
        self.curves: dict[str, list[float]] = {s: [] for s in self.skills}
        self.counters = {"tokens": 0, "verify_cpu_s": 0.0, "verifier_errors": 0, "skipped_steps": 0,
                         "samples": 0}

    # ------------------------------------------------------------------------------------
    def state(self, metrics_lines: int) -> dict:
        return {"adapter": self.policy.adapter_state(), "optimizer": self.opt.state_dict(),
                "method": self.method.state(), "sampler": self.sampler.state(),
                "safety": self.safety.state() if self.safety is not None else None,
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
                "global_step": self.global_step, "phase": self.phase, "phase_step": self.phase_step,
                "R": self.R, "curves": self.curves, "counters": self.counters, "metrics_lines": metrics_lines,
                "config": to_dict(self.cfg)}

    def load_state(self, st: dict) -> None:
        self.policy.load_adapter_state(st["adapter"])
        self.opt.load_state_dict(st["optimizer"])
        self.method.load_state(st["method"])
        if self.safety is not None:
            self.safety.load_state(st["safety"])
        self.sampler.set_state(st["sampler"])
        random.setstate(st["rng"]["python"])
        np.random.set_state(st["rng"]["numpy"])
        torch.set_rng_state(st["rng"]["torch"])
        for k in ("global_step", "phase", "phase_step", "R", "curves", "counters"):
            setattr(self, k, st[k])

    def checkpoint(self, log: MetricsLog) -> None:
        atomic_torch_save(self.state(log.count), self.out / "ckpt" / "state.pt")

    # ------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        ckpt = load_checkpoint(self.out / "ckpt" / "state.pt")
        if ckpt is not None:
            if ckpt["config"] != to_dict(cfg):
                raise ValueError(f"{self.out} holds a run with a different config; use a new --out")
            self.load_state(ckpt)
        dump_yaml(cfg, self.out / "config.yaml")
        log = MetricsLog(self.out / "metrics.jsonl", keep_lines=ckpt["metrics_lines"] if ckpt else 0)
        tb = TensorBoard(self.out / "tb", cfg.tensorboard)
        progress = Progress(enabled=cfg.progress, total=len(self.phases) * cfg.protocol.steps_per_phase,
                            done=self.global_step)
        try:
            with Sandbox(workers=cfg.sandbox_workers) as sandbox:
                self.sandbox = sandbox
                if not self.R:  # row 0: the model before training
                    self.R.append(self._evaluate(log, tb, progress, kind="phase_end"))
                    self.checkpoint(log)
                while self.phase < len(self.phases):
                    while self.phase_step < cfg.protocol.steps_per_phase:
                        rec = self.train_step()
                        log.write(rec)
                        tb.scalars(self.global_step, rec)
                        progress.step(rec, self._status_line())
                        if cfg.eval.every and self.global_step % cfg.eval.every == 0 \
                                and self.phase_step < cfg.protocol.steps_per_phase:
                            self._evaluate(log, tb, progress, kind="periodic")
                        if self.global_step % cfg.checkpoint_every == 0:
                            self.checkpoint(log)
                    self.R.append(self._evaluate(log, tb, progress, kind="phase_end"))
                    self.phase += 1
                    self.phase_step = 0
                    self.method.on_phase_start(self)
                    self.checkpoint(log)
        finally:
            progress.close()
            tb.close()
            log.close()
        summary = self.summary()
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
        return summary

    def summary(self) -> dict:
        phases = [p[0] if len(p) == 1 else p for p in self.phases]
        out = summarize(self.skills, phases, self.R, curves=self.curves)
        gains = [g for g in (out.get("target_gain") or []) if g is not None]
        out["target_gain_mean"] = sum(gains) / len(gains) if gains else None
        out.update({"tokens_generated": self.counters["tokens"], "verifier_cpu_s": self.counters["verify_cpu_s"],
                    "verifier_errors": self.counters["verifier_errors"],
                    "skipped_steps": self.counters["skipped_steps"], "steps": self.global_step,
                    "method": self.cfg.method.name, "algo": self.cfg.rl.algo, "seed": self.cfg.seed,
                    "protocol": self.cfg.protocol.kind})
        return out

    # ------------------------------------------------------------------------------------
    def _evaluate(self, log: MetricsLog, tb: TensorBoard, progress, kind: str) -> list[float]:
        res = evaluate(self.policy, self.heldout, self.sandbox, self.eval_sampling, ks=tuple(self.cfg.eval.pass_k),
                       n_samples=self.cfg.eval.n_samples, seed=step_seed(self.cfg.seed, self.global_step, "eval"))
        row = []
        for skill in self.skills:
            r = res[skill]
            self.curves[skill].append(r["pass@1"])
            row.append(r["pass@1"])
            rec = {"kind": "eval", "eval_kind": kind, "step": self.global_step, "phase": self.phase,
                   "skill": skill, **{k: v for k, v in r.items()}}
            log.write(rec)
            tb.scalars(self.global_step, {f"eval/{skill}/pass@1": r["pass@1"]})
            self.counters["tokens"] += r["tokens"]
            self.counters["verify_cpu_s"] += r["verify_cpu_s"]
        progress.note(f"eval@{self.global_step} " + " ".join(f"{s}={v:.2f}" for s, v in zip(self.skills, row)))
        return row

    def _status_line(self) -> str:
        last = {s: (c[-1] if c else float("nan")) for s, c in self.curves.items()}
        return f"phase {self.phase + 1}/{len(self.phases)} {'+'.join(self.phases[min(self.phase, len(self.phases) - 1)])} | " + \
            " ".join(f"{s} {v:.2f}" for s, v in last.items())

    def train_step(self) -> dict:
        cfg, rl = self.cfg, self.cfg.rl
        t0 = time.monotonic()
        skills = self.phases[self.phase]
        earlier = [s for p in self.phases[:self.phase] for s in p if s not in skills]
        replay = self.method.replay_fraction if earlier else 0.0
        tasks = self.sampler.sample(skills, rl.prompts_per_step, weights=cfg.protocol.mixed_weights or None,
                                    replay_skills=earlier, replay_fraction=replay)
        rollout = generate(self.policy, [t.prompt for t in tasks], n=rl.samples_per_prompt, cfg=cfg.sampling,
                           seed=step_seed(cfg.seed, self.global_step))
        t1 = time.monotonic()
        pairs = [(tasks[i], text) for i, text in zip(rollout.task_index, rollout.texts)]
        verdicts = verify_many(self.sandbox, pairs)
        t2 = time.monotonic()
        rewards = torch.tensor([v.reward(rl.reward) for v in verdicts], dtype=torch.float32)
        rollout.rewards = rewards
        errors = sum(v.status in ("error", "killed") for v in verdicts)
        n_events = len(self.safety.events) if self.safety is not None else 0
        stats = objective.update(self, rollout)
        if self.safety is not None:
            for ev in self.safety.events[n_events:]:
                stats[f"safety/switched_on/{ev['skill']}"] = 1.0
        self.global_step += 1
        self.phase_step += 1
        tokens = int(rollout.lengths.sum())
        self.counters["tokens"] += tokens
        self.counters["samples"] += len(verdicts)
        self.counters["verify_cpu_s"] += sum(v.cpu_s for v in verdicts)
        self.counters["verifier_errors"] += errors
        if stats.get("skipped"):
            self.counters["skipped_steps"] += 1
        per_skill = {}
        for s in sorted({t.skill for t in tasks}):
            rows = [j for j, i in enumerate(rollout.task_index) if tasks[i].skill == s]
            per_skill[f"reward/{s}"] = float(rewards[rows].mean())
        return {"kind": "train", "step": self.global_step, "phase": self.phase, "skills": skills,
                "reward/mean": float(rewards.mean()), **per_skill,
                "tokens": tokens, "length/mean": float(rollout.lengths.float().mean()),
                "verifier_errors": errors, "time/rollout_s": t1 - t0, "time/verify_s": t2 - t1,
                "time/update_s": time.monotonic() - t2, **stats}
