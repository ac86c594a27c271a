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
import json
import random
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import warnings

from retainrl.config import ConfigError, dump_yaml, to_dict, validate
from retainrl.data.sources import load_sources
from retainrl.data.world import SKILLS, VERSION_SKILLS, WorldConfig, make_world
from retainrl.evaluate import evaluate
from retainrl.metrics.retention import summarize
from retainrl.policy.model import load_policy
from retainrl.policy.rollout import SamplingConfig, generate
from retainrl.train import checkpoint, distributed, objective
from retainrl.train.config import RunConfig
from retainrl.train.progress import Progress
from retainrl.train.runio import Fanout, MetricsLog, RunError, TensorBoard, WandB, atomic_write_text
from retainrl.baselines import make_baseline
from retainrl.safety.layer import SafetyLayer, protected_skills, resolve_act
from retainrl.seeds import step_seed  # noqa: F401  (re-exported: callers import it from here)
from retainrl.train.sampler import SkillFocus, TaskSampler
from retainrl.verify import Sandbox
from retainrl.verify.checks import verify_many


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_tasks(cfg: RunConfig) -> tuple[dict[str, list], dict[str, list]]:
    """(train, heldout) tasks by skill: the built-in world and/or the configured data sources."""
    w, data = cfg.world, cfg.data
    train: dict[str, list] = {}
    heldout: dict[str, list] = {}
    if data.sources:
        train, heldout = load_sources(data)
    if not data.sources or data.world:
        # default: the three original skills, plus a later version's skill (refactor) when a phase trains it
        extra = tuple(s for s in cfg.all_skills() if s in VERSION_SKILLS[w.version] and s not in SKILLS)
        skills = tuple(data.world_skills) or SKILLS + extra
        world = make_world(WorldConfig(seed=w.seed, n_train=w.n_train, n_heldout=w.n_heldout,
                                       difficulty=w.difficulty, skills=skills, version=w.version))
        for s in skills:
            train.setdefault(s, []).extend(world[s]["train"])
            heldout.setdefault(s, []).extend(world[s]["heldout"])
    return train, heldout


# What a training state must hold (checked on load, before anything is restored).
STATE_KEYS = ("adapter", "optimizer", "method", "sampler", "safety", "rng", "global_step", "phase", "phase_step",
              "R", "curves", "counters", "metrics", "model_fingerprint", "config")


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _config_diff(a[k], b[k], key)
        elif a.get(k) != b.get(k):
            out.append(key)
    return out


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: str | Path):
        validate(cfg)  # every field's range and the cross-field rules, before anything heavy loads
        self.cfg, self.out = cfg, Path(out_dir)
        self.phases = cfg.phase_skills()
        for path in (self.out, self.out / "ckpt"):
            if path.exists() and not path.is_dir():
                raise RunError(f"cannot use {path} for the run: it is a file, not a folder")
        self.resume_state = self._read_checkpoint()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create the run directory {self.out}: {e.strerror or e}") from None
        self.dist = distributed.setup()
        if cfg.rl.prompts_per_step % self.dist.world:
            raise ValueError(f"rl.prompts_per_step={cfg.rl.prompts_per_step} must be a multiple of the "
                             f"{self.dist.world} data-parallel ranks")
        _seed_all(cfg.seed)
        # the data first: a bad source or a skill without tasks is reported before the model loads
        self.train_tasks, self.heldout = build_tasks(cfg)
        # PPO needs the value head whatever the model section says
        self.policy = load_policy(dataclasses.replace(cfg.model, value_head=cfg.model.value_head or cfg.rl.algo == "ppo"))
        # every skill with held-out tasks is evaluated, trained or not; trained skills first
        self.skills = cfg.all_skills() + [s for s in self.heldout if s not in cfg.all_skills()]
        for s in cfg.all_skills():
            if not self.train_tasks.get(s):
                raise ValueError(f"protocol trains skill {s!r} but no data source gives it training tasks "
                                 f"(skills with training tasks: {sorted(s for s, t in self.train_tasks.items() if t)})")
            if not self.heldout.get(s):
                raise ValueError(f"protocol trains skill {s!r} but no data source gives it held-out tasks to "
                                 f"evaluate on (raise data.heldout_fraction or add a split=heldout source)")
        unknown = sorted(set(cfg.safety.eps_per_skill) - set(self.train_tasks) - set(self.heldout))
        if unknown:  # checked in the config already when the skills were known before loading
            raise ConfigError(f"safety.eps_per_skill.{unknown[0]}: no loaded task has skill {unknown[0]!r} (skills: "
                              f"{', '.join(sorted(set(self.train_tasks) | set(self.heldout)))})",
                              f"safety.eps_per_skill.{unknown[0]}")
        self.sampler = TaskSampler(self.train_tasks, cfg.seed)
        pc = cfg.protocol
        self.focus = SkillFocus(pc.softmin_temperature, pc.softmin_ema, pc.softmin_fixed_share) \
            if pc.skill_weighting == "softmin" else None
        params = self.policy.trainable_parameters()
        distributed.broadcast_parameters(params)
        if cfg.rl.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.rl.lr)
        else:
            self.opt = torch.optim.AdamW(params, lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay)
        self.method = make_baseline(cfg.method, self.policy, self.train_tasks, cfg.sampling, cfg.seed)
        # act_subspace=auto decided for this protocol (the saved config keeps "auto")
        safety_cfg = dataclasses.replace(cfg.safety, act_subspace=resolve_act(cfg.safety, cfg.protocol.kind))
        self.safety = SafetyLayer(safety_cfg, self.train_tasks, cfg.sampling, cfg.seed) if cfg.safety.enabled else None
        self.eval_sampling = SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.sampling.temperature,
                                            top_p=cfg.sampling.top_p, backend=cfg.sampling.backend,
                                            max_prompt_tokens=cfg.sampling.max_prompt_tokens,
                                            stop_strings=cfg.sampling.stop_strings)
        # progress state (all of it goes into the checkpoint)
        self.global_step = 0
        self.phase = 0          # index of the phase being trained
        self.phase_step = 0     # steps done inside it
        self.R: list[list[float]] = []          # rows: before training, after each phase
        self.curves: dict[str, list[float]] = {s: [] for s in self.skills}
        # the same at the sampling temperature (eval.n_samples > 0): pass@1_sampled
        self.R_sampled: list[list[float]] = []
        self.curves_sampled: dict[str, list[float]] = {s: [] for s in self.skills}
        self.counters = {"tokens": 0, "verify_cpu_s": 0.0, "verifier_errors": 0, "skipped_steps": 0,
                         "samples": 0}

    # ------------------------------------------------------------------------------------
    def _read_checkpoint(self) -> dict | None:
        """The run folder's latest intact state (None: a new run), checked against this config."""
        ckpt = self.out / "ckpt"
        found = checkpoint.load_latest(ckpt / "state.safetensors", required=STATE_KEYS)
        if found is None:
            if (ckpt / "state.pt").exists():
                raise checkpoint.CheckpointError(
                    f"{ckpt / 'state.pt'} is a checkpoint in the old pickle format, which retainrl no longer loads "
                    f"(unpickling a run folder can run arbitrary code); use a new --out")
            return None
        st, self.resume_file = found
        if not isinstance(st["config"], dict):
            raise checkpoint.CheckpointError(f"checkpoint {self.resume_file}: 'config' is a {type(st['config']).__name__}, "
                                             f"not a config")
        if st["config"] != to_dict(self.cfg):
            keys = _config_diff(st["config"], to_dict(self.cfg))
            raise RunError(f"{self.out} holds a run with a different config (differs in: "
                           f"{', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}); use a new --out, or the "
                           f"same config to resume it")
        return st

    def state(self, log) -> dict:
        metrics = zlib.compress("".join(log.lines).encode("utf-8"))
        return {"adapter": self.policy.adapter_state(), "optimizer": self.opt.state_dict(),
                "method": self.method.state(), "sampler": self.sampler.state(),
                "focus": self.focus.state() if self.focus is not None else None,
                "safety": self.safety.state() if self.safety is not None else None,
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
                "global_step": self.global_step, "phase": self.phase, "phase_step": self.phase_step,
                "R": self.R, "curves": self.curves, "R_sampled": self.R_sampled,
                "curves_sampled": self.curves_sampled, "counters": self.counters,
                "metrics": torch.frombuffer(bytearray(metrics), dtype=torch.uint8),
                "model_fingerprint": self.policy.base_fingerprint(), "config": to_dict(self.cfg)}

    def _check_state(self, st: dict) -> None:
        """Refuse a checkpoint whose contents do not fit this run (CheckpointError naming the file
        and the key) before anything is restored: a checksum only proves the file is as written,
        not that it was written by this run's model and code."""
        def bad(key: str, why: str) -> checkpoint.CheckpointError:
            return checkpoint.CheckpointError(f"checkpoint {self.resume_file}: {key!r} {why}")

        if st.get("model_fingerprint") != self.policy.base_fingerprint():
            raise bad("model_fingerprint", "differs from the loaded base model's: the checkpoint was taken with "
                                           "another model (same name, other weights or shapes)")
        live = self.policy.named_trainable()
        adapter = st["adapter"]
        if not isinstance(adapter, dict) or set(adapter) != set(live):
            extra = sorted(set(adapter) - set(live))[:2] if isinstance(adapter, dict) else []
            raise bad("adapter", f"does not hold this model's LoRA parameters (missing "
                                 f"{sorted(set(live) - set(adapter or {}))[:2]}, extra {extra})")
        for name, p in live.items():
            t = adapter[name]
            if not isinstance(t, torch.Tensor) or t.shape != p.shape or not t.is_floating_point():
                raise bad(f"adapter.{name}", f"is {getattr(t, 'shape', type(t).__name__)}, expected a float tensor "
                                             f"of shape {tuple(p.shape)}")
            if not torch.isfinite(t).all():
                raise bad(f"adapter.{name}", "holds NaN or inf")
        params = self.policy.trainable_parameters()
        opt = st["optimizer"]
        if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict):
            raise bad("optimizer", "is not an optimizer state")
        for idx, entry in opt["state"].items():
            if not isinstance(idx, int) or not 0 <= idx < len(params) or not isinstance(entry, dict):
                raise bad("optimizer.state", f"has an entry {idx!r} for no parameter of this run")
            for k, v in entry.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != params[idx].shape:
                    raise bad(f"optimizer.state.{idx}.{k}", f"has shape {tuple(v.shape)}, its parameter "
                                                            f"{tuple(params[idx].shape)}")
        ints = {"global_step": None, "phase": len(self.phases), "phase_step": self.cfg.protocol.steps_per_phase}
        for key, hi in ints.items():
            v = st[key]
            if type(v) is not int or v < 0 or (hi is not None and v > hi):
                raise bad(key, f"is {v!r}, expected an int in [0, {hi if hi is not None else 'inf'}]")
        n = len(self.skills)
        for key in ("R", "R_sampled"):
            rows = st.get(key, [])
            if not isinstance(rows, list) or len(rows) > len(self.phases) + 1 or any(
                    not isinstance(r, list) or len(r) != n or not all(isinstance(x, (int, float)) for x in r)
                    for r in rows):
                raise bad(key, f"is not a list of at most {len(self.phases) + 1} rows of {n} numbers")
        for key in ("curves", "curves_sampled", "counters"):
            v = st.get(key, {})
            if not isinstance(v, dict):
                raise bad(key, f"is a {type(v).__name__}, expected a mapping")
        if not isinstance(st["metrics"], torch.Tensor) or st["metrics"].dtype != torch.uint8:
            raise bad("metrics", "is not the compressed metrics lines")

    def _metrics_lines(self, st: dict) -> list[str]:
        """The metrics lines a checkpoint carries (decompressed with a size cap: a forged file must
        not exhaust memory)."""
        z = zlib.decompressobj()
        try:
            text = z.decompress(st["metrics"].numpy().tobytes(), 1 << 30)
            if z.unconsumed_tail or not z.eof:
                raise ValueError("over 1 GiB or truncated")
            return text.decode("utf-8").splitlines(keepends=True)
        except (zlib.error, ValueError) as e:
            raise checkpoint.CheckpointError(f"checkpoint {self.resume_file}: 'metrics' does not decompress ({e})") from None

    def _restore(self, st: dict) -> list[str]:
        """Check, then restore a checkpoint; returns its metrics lines."""
        self._check_state(st)
        lines = self._metrics_lines(st)
        try:
            self.load_state(st)
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:
            raise checkpoint.CheckpointError(f"checkpoint {self.resume_file}: does not fit this run "
                                             f"({type(e).__name__}: {str(e)[:200]})") from None
        return lines

    def load_state(self, st: dict) -> None:
        self.policy.load_adapter_state(st["adapter"])
        self.opt.load_state_dict(st["optimizer"])
        self.method.load_state(st["method"])
        if self.safety is not None:
            self.safety.load_state(st["safety"])
        self.sampler.set_state(st["sampler"])
        if self.focus is not None:
            self.focus.load_state(st["focus"])  # the config matched, so the checkpoint was written with it
        random.setstate(st["rng"]["python"])
        np.random.set_state(st["rng"]["numpy"])
        torch.set_rng_state(st["rng"]["torch"])
        for k in ("global_step", "phase", "phase_step", "R", "curves", "counters"):
            setattr(self, k, st[k])
        self.R_sampled = st.get("R_sampled", [])
        self.curves_sampled = st.get("curves_sampled", {s: [] for s in self.skills})

    def checkpoint(self, log: MetricsLog) -> None:
        if self.dist.main:
            checkpoint.save_rotating(self.state(log), self.out / "ckpt" / "state.safetensors")

    def _check_phase_adapters(self) -> None:
        """Warn about phase-end adapter files of finished phases that are missing or damaged (they
        are for later analysis; training does not need them, so this is not fatal)."""
        for l in range(1, self.phase + 1):
            path = self.out / "ckpt" / f"phase{l}.safetensors"
            try:
                checkpoint.load(path, required=("adapter",))
            except checkpoint.CheckpointError as e:
                warnings.warn(f"{e}; the adapter at the end of phase {l} is lost for `retainrl analyze`, "
                              f"training goes on", stacklevel=2)

    # ------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        ckpt, self.resume_state = self.resume_state, None
        lines: list[str] = []
        if ckpt is not None:
            lines = self._restore(ckpt)
            if self.dist.main:
                self._check_phase_adapters()
        main = self.dist.main  # under torchrun only rank 0 writes files
        if main:
            try:
                dump_yaml(cfg, self.out / "config.yaml")
            except OSError as e:
                raise RunError(f"cannot write {self.out / 'config.yaml'}: {e.strerror or e}") from None
        log = MetricsLog(self.out / "metrics.jsonl", lines) if main else CountingLog(len(lines))
        # scalar sinks beside metrics.jsonl (which is always written)
        tb = Fanout(TensorBoard(self.out / "tb", cfg.tensorboard and main),
                    WandB(self.out, cfg.wandb and main, cfg.wandb_project, cfg.name, to_dict(cfg)))
        progress = Progress(enabled=cfg.progress and main, total=len(self.phases) * cfg.protocol.steps_per_phase,
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
                    if self.dist.main:  # the adapter at each phase end, for later analysis (retainrl analyze)
                        checkpoint.save({"adapter": self.policy.adapter_state(), "global_step": self.global_step,
                                         "phase": self.phase + 1},
                                        self.out / "ckpt" / f"phase{self.phase + 1}.safetensors")
                    self.phase += 1
                    self.phase_step = 0
                    self.method.on_phase_start([s for p in self.phases[:self.phase] for s in p], self.phase)
                    self.checkpoint(log)
        finally:
            progress.close()
            tb.close()
            log.close()
        summary = self.summary()
        if self.dist.active:
            agree = distributed.ranks_agree(distributed.parameters_checksum(self.policy.trainable_parameters()))
            summary.update({"ddp_world_size": self.dist.world, "ddp_ranks_identical": agree})
            if not agree:
                raise RuntimeError(f"rank {self.dist.rank}: trainable parameters differ between data-parallel ranks")
        if self.dist.main:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
        return summary

    def summary(self) -> dict:
        phases = [p[0] if len(p) == 1 else p for p in self.phases]
        out = summarize(self.skills, phases, self.R, curves=self.curves)
        gains = [g for g in (out.get("target_gain") or []) if g is not None]
        out["target_gain_mean"] = sum(gains) / len(gains) if gains else None
        if self.R_sampled and len(self.R_sampled) == len(self.R):
            sampled = summarize(self.skills, phases, self.R_sampled, curves=self.curves_sampled)
            for key in ("avg", "worst", "forgetting", "bwt", "fwt", "max_drop", "target_gain", "R"):
                out[f"{key}_sampled"] = sampled.get(key)
            gains = [g for g in (sampled.get("target_gain") or []) if g is not None]
            out["target_gain_mean_sampled"] = sum(gains) / len(gains) if gains else None
        out.update({"tokens_generated": self.counters["tokens"], "verifier_cpu_s": self.counters["verify_cpu_s"],
                    "verifier_errors": self.counters["verifier_errors"],
                    "skipped_steps": self.counters["skipped_steps"], "steps": self.global_step,
                    "method": self.cfg.method.name, "algo": self.cfg.rl.algo, "seed": self.cfg.seed,
                    "protocol": self.cfg.protocol.kind})
        return out

    # ------------------------------------------------------------------------------------
    def _evaluate(self, log: MetricsLog, tb: Fanout, progress, kind: str) -> list[float]:
        d = self.dist
        shard = {s: tasks[d.rank::d.world] for s, tasks in self.heldout.items()}
        ks, n_samples = tuple(self.cfg.eval.pass_k), self.cfg.eval.n_samples
        res = evaluate(self.policy, {s: t for s, t in shard.items() if t}, self.sandbox, self.eval_sampling, ks=ks,
                       n_samples=n_samples, seed=step_seed(self.cfg.seed, self.global_step, "eval"))
        for s, t in shard.items():  # a rank whose shard of a skill is empty still joins the merge
            if not t:
                res[s] = _empty_eval(ks, n_samples)
        if d.active:
            res = {s: _merge_eval(r) for s, r in res.items()}
        row, sampled_row = [], []
        for skill in self.skills:
            r = res[skill]
            self.curves[skill].append(r["pass@1"])
            row.append(r["pass@1"])
            if "pass@1_sampled" in r:
                self.curves_sampled[skill].append(r["pass@1_sampled"])
                sampled_row.append(r["pass@1_sampled"])
            rec = {"kind": "eval", "eval_kind": kind, "step": self.global_step, "phase": self.phase,
                   "skill": skill, **{k: v for k, v in r.items()}}
            log.write(rec)
            tb.scalars(self.global_step, {f"eval/{skill}/pass@1": r["pass@1"]})
            self.counters["tokens"] += r["tokens"]
            self.counters["verify_cpu_s"] += r["verify_cpu_s"]
        if kind == "phase_end" and sampled_row:
            self.R_sampled.append(sampled_row)
        progress.note(f"eval@{self.global_step} " + " ".join(f"{s}={v:.2f}" for s, v in zip(self.skills, row)))
        return row

    def _status_line(self) -> str:
        last = {s: (c[-1] if c else float("nan")) for s, c in self.curves.items()}
        return f"phase {self.phase + 1}/{len(self.phases)} {'+'.join(self.phases[min(self.phase, len(self.phases) - 1)])} | " + \
            " ".join(f"{s} {v:.2f}" for s, v in last.items())

    def _apply_update(self):
        """How objective.update applies the clipped gradient: plain opt.step(), or the skill-safe step."""
        if self.safety is None:
            return objective.plain_step
        protected = protected_skills(self.cfg.protocol.kind, self.cfg.safety.protect, self.phases, self.phase,
                                     self.skills, {s for s, t in self.train_tasks.items() if t})
        return lambda params, opt: self.safety.step(params, opt, self.policy, self.sandbox, self.global_step,
                                                    protected, self.curves)

    def train_step(self) -> dict:
        cfg, rl = self.cfg, self.cfg.rl
        t0 = time.monotonic()
        skills = self.phases[self.phase]
        earlier = [s for p in self.phases[:self.phase] for s in p if s not in skills]
        replay = self.method.replay_fraction if earlier else 0.0
        weights = self.focus.weights(skills, cfg.protocol.mixed_weights) if self.focus is not None \
            else cfg.protocol.mixed_weights or None
        tasks = self.sampler.sample(skills, rl.prompts_per_step, weights=weights,
                                    replay_skills=earlier, replay_fraction=replay)
        d = self.dist
        batch_skills = sorted({t.skill for t in tasks})  # the global batch's skills, same on every rank
        tasks = tasks[d.rank::d.world]  # this rank's share of the global batch
        rollout = generate(self.policy, [t.prompt for t in tasks], n=rl.samples_per_prompt, cfg=cfg.sampling,
                           seed=step_seed(cfg.seed, self.global_step, "rollout" if d.main else f"rollout/{d.rank}"))
        t1 = time.monotonic()
        pairs = [(tasks[i], text) for i, text in zip(rollout.task_index, rollout.texts)]
        verdicts = verify_many(self.sandbox, pairs)
        t2 = time.monotonic()
        rewards = torch.tensor([v.reward(rl.reward) for v in verdicts], dtype=torch.float32)
        rollout.rewards = rewards
        n_events = len(self.safety.events) if self.safety is not None else 0
        stats = objective.update(rl, self.policy, self.opt, rollout, max_len=cfg.sampling.max_new_tokens,
                                 penalty=self.method.penalty, apply=self._apply_update(), step=self.global_step)
        if self.safety is not None:
            for ev in self.safety.events[n_events:]:
                stats[f"safety/switched_on/{ev['skill']}"] = 1.0
        self.global_step += 1
        self.phase_step += 1
        # batch totals, summed over data-parallel ranks (plain sums in a single process)
        per_skill_rows = [[j for j, i in enumerate(rollout.task_index) if tasks[i].skill == s] for s in batch_skills]
        local = [float(rewards.sum()), float(len(verdicts)), float(rollout.lengths.sum()),
                 float(sum(v.status in ("error", "killed") for v in verdicts)), float(sum(v.cpu_s for v in verdicts))]
        for rows in per_skill_rows:
            local += [float(rewards[rows].sum()) if rows else 0.0, float(len(rows))]
        tot = distributed.all_sum(local)
        reward_sum, n_samples, tokens, errors, verify_cpu = tot[:5]
        self.counters["tokens"] += int(tokens)
        self.counters["samples"] += int(n_samples)
        self.counters["verify_cpu_s"] += verify_cpu
        self.counters["verifier_errors"] += int(errors)
        if stats.get("skipped"):
            self.counters["skipped_steps"] += 1
        per_skill = {f"reward/{s}": tot[5 + 2 * k] / max(1.0, tot[6 + 2 * k]) for k, s in enumerate(batch_skills)}
        if self.focus is not None:  # the weights this step drew with, then the estimates for the next
            stats.update({f"focus/weight/{s}": w for s, w in weights.items()})
            self.focus.observe({s: per_skill[f"reward/{s}"] for s in skills if s in batch_skills})
        # stats first: its reward/adv/policy numbers are this rank's; the batch totals override
        return {**stats, "kind": "train", "step": self.global_step, "phase": self.phase, "skills": skills,
                "reward/mean": reward_sum / max(1.0, n_samples), **per_skill,
                "tokens": int(tokens), "length/mean": tokens / max(1.0, n_samples),
                "verifier_errors": int(errors), "time/rollout_s": t1 - t0, "time/verify_s": t2 - t1,
                "time/update_s": time.monotonic() - t2}


class CountingLog:
    """The metrics log of a rank that does not write files: it only keeps the line count, so
    its checkpoint bookkeeping matches rank 0's."""

    def __init__(self, count: int = 0):
        self.count = count
        self.lines: list[str] = []  # rank 0's checkpoint holds the lines; this rank never saves one

    def write(self, record: dict) -> None:
        self.count += 1

    def close(self) -> None:
        pass


def _empty_eval(ks: tuple[int, ...], n_samples: int) -> dict:
    """What an empty shard contributes to _merge_eval: the same keys, n = 0."""
    out = {"pass@1": 0.0, "n": 0, "tokens": 0, "gen_s": 0.0, "verify_s": 0.0, "verify_cpu_s": 0.0, "errors": 0}
    if n_samples > 0:
        out["pass@1_sampled"] = 0.0
        out.update({f"pass@{k}": 0.0 for k in ks if 1 < k <= n_samples})
    return out


def _merge_eval(r: dict) -> dict:
    """One skill's evaluation of this rank's shard -> the whole held-out set's (sums over ranks)."""
    n_local = r["n"]
    keys = sorted(k for k in r if k.startswith("pass@"))
    sums = distributed.all_sum([r[k] * n_local for k in keys] + [n_local, r["tokens"], r["verify_cpu_s"], r["errors"],
                                                                    r["gen_s"], r["verify_s"]])
    n = sums[len(keys)]
    out = {k: sums[i] / max(1.0, n) for i, k in enumerate(keys)}
    rest = sums[len(keys):]
    out.update({"n": int(n), "tokens": int(rest[1]), "verify_cpu_s": rest[2], "errors": int(rest[3]),
                "gen_s": rest[4], "verify_s": rest[5]})  # times: summed over ranks (CPU-seconds)
    return out
