"""The experiment config: one typed, documented dataclass tree per run (saved as config.yaml).

    retainrl train configs/smoke.yaml rl.lr=1e-3 protocol.phases=[gen,repair] --out runs/x
    retainrl train --help-config        # every field, its type, default and meaning
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from retainrl.config import ConfigError, option
from retainrl.data.loaders import NATURAL_SKILLS
from retainrl.data.sources import DataConfig
from retainrl.data.world import VERSION_SKILLS
from retainrl.data.world import VERSIONS as WORLD_VERSIONS
from retainrl.policy.model import ModelConfig
from retainrl.policy.rollout import SamplingConfig


@dataclass
class RLConfig:
    algo: Literal["grpo", "ppo", "rloo"] = option("grpo", "Policy-gradient algorithm: grpo (group-normalised "
                                                  "advantages, clipped ratio), ppo (value head + GAE), rloo "
                                                  "(REINFORCE with a leave-one-out baseline).")
    lr: float = option(2e-3, "AdamW learning rate of the LoRA (and value head) parameters.", check=lambda v: v > 0, must="be > 0")
    weight_decay: float = option(0.0, "AdamW weight decay.", check=lambda v: v >= 0, must="be >= 0")
    optimizer: Literal["adamw", "sgd"] = option("adamw", "Optimizer of the trainable parameters.")
    prompts_per_step: int = option(8, "Prompts (tasks) sampled per training step.", check=lambda v: v >= 1, must="be >= 1")
    samples_per_prompt: int = option(8, "Completions per prompt (the group size n).", check=lambda v: v >= 1, must="be >= 1")
    micro_batch_prompts: int = option(8, "Prompts per backward pass; prompts_per_step / micro_batch_prompts is the "
                                         "gradient accumulation.", check=lambda v: v >= 1, must="be >= 1")
    epochs: int = option(1, "Optimisation epochs over each rollout batch.", check=lambda v: v >= 1, must="be >= 1")
    clip_low: float = option(0.2, "Lower ratio clip (1 - clip_low).", check=lambda v: 0 <= v < 1, must="be in [0, 1)")
    clip_high: float = option(0.2, "Upper ratio clip (1 + clip_high).", check=lambda v: v >= 0, must="be >= 0")
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = option(
        "token_mean", "How token losses become one number: token_mean (over all valid tokens, DAPO), "
                      "seq_mean_token_mean (original GRPO), seq_mean_token_sum_norm (Dr. GRPO).")
    kl_coef: float = option(0.0, "Coefficient of the k3 KL to the reference (adapter disabled).", check=lambda v: v >= 0, must="be >= 0")
    entropy_coef: float = option(0.0, "Coefficient of the entropy bonus.", check=lambda v: v >= 0, must="be >= 0")
    max_grad_norm: float = option(1.0, "Gradient clipping on the global norm (0: off).", check=lambda v: v >= 0, must="be >= 0")
    reward: Literal["binary", "fraction"] = option("binary", "Reward from a verdict: 1 iff passed, or the fraction of tests passed.")
    drop_uninformative: bool = option(True, "Leave groups whose advantages are all zero (every sample got the same "
                                            "reward) out of the update: they add no policy gradient, only tokens to the "
                                            "denominator and compute (DAPO's dynamic-sampling filter, without "
                                            "resampling). Not applied for PPO or when kl_coef/entropy_coef > 0.")
    scale_by_std: bool = option(True, "GRPO: divide group-centred rewards by the group std (False: Dr. GRPO).")
    gamma: float = option(1.0, "PPO discount.", check=lambda v: 0 <= v <= 1, must="be in [0, 1]")
    lam: float = option(0.95, "PPO GAE lambda.", check=lambda v: 0 <= v <= 1, must="be in [0, 1]")
    vf_coef: float = option(0.5, "PPO value-loss coefficient.", check=lambda v: v >= 0, must="be >= 0")
    value_clip: float = option(0.2, "PPO value clip range.", check=lambda v: v > 0, must="be > 0")


@dataclass
class ProtocolConfig:
    kind: Literal["single", "sequential", "mixed"] = option("single", "single: one skill; sequential: phases "
                                                           "A -> B -> C; mixed: all phase skills at once.")
    phases: list[str | list[str]] = option(["gen"], "Skill (or list of skills) trained per phase, in order.",
                                           check=lambda v: len(v) >= 1 and all(p for p in v),
                                           must="name at least one phase, each a skill or a non-empty list of skills")
    steps_per_phase: int = option(20, "Training steps per phase.", check=lambda v: v >= 1,
                                  must="be >= 1 (to evaluate without training, use `retainrl eval`)")
    mixed_weights: dict[str, float] = option({}, "mixed: sampling weight per skill (missing skills weigh 1).",
                                             check=lambda v: all(math.isfinite(w) and w >= 0 for w in v.values()),
                                             must="hold finite weights >= 0")
    skill_weighting: Literal["fixed", "softmin"] = option(
        "fixed", "How a phase with several skills (mixed) shares its prompts: fixed: by mixed_weights; softmin: "
                 "towards the skill with the lowest running training reward, q = lam w + (1 - lam) p, p_s ∝ w_s "
                 "exp(-r_s / softmin_temperature), lam = softmin_fixed_share (KL-regularised group DRO; "
                 "train/sampler.py).")
    softmin_temperature: float = option(0.1, "softmin: temperature, in reward units (smaller: more of the prompts "
                                             "go to the worst skill).", check=lambda v: math.isfinite(v) and v > 0,
                                        must="be a finite number > 0")
    softmin_ema: float = option(0.3, "softmin: weight of the newest step in each skill's running reward.",
                                check=lambda v: 0 < v <= 1, must="be in (0, 1]")
    softmin_fixed_share: float = option(0.3, "softmin: share of the prompts still drawn by the fixed weights, so "
                                             "that every skill keeps some (and its reward estimate stays fresh).",
                                        check=lambda v: 0 <= v <= 1, must="be in [0, 1]")


@dataclass
class WorldDataConfig:
    seed: int = option(0, "Seed of the built-in code world (task draw).", check=lambda v: 0 <= v < 2**63,
                       must="be in [0, 2**63)")
    n_train: int = option(400, "Training tasks per skill.", check=lambda v: v >= 1, must="be >= 1")
    n_heldout: int = option(100, "Held-out evaluation tasks per skill.", check=lambda v: v >= 1, must="be >= 1")
    difficulty: int = option(2, "World difficulty 1..4.", check=lambda v: 1 <= v <= 4, must="be in 1..4")
    version: int = option(2, "World version: 2 the stratified split (same shape shares in train and held-out) with "
                             "the fourth skill refactor (built when a phase trains it or data.world_skills names "
                             "it; the world of the bundled model v4); 3 version 2 with gen's and repair's signature "
                             "conventions opposed (one decision the two verifiers want opposite ways; no bundled "
                             "model yet, see docs/LOG.md 2026-12-02 session 9); 4 version 3 with repair's shown signature annotated "
                             "on half of the functions (experimental, session 10); 5 version 4 with a quarter (experimental, session 13); "
                             "6 version 5 with reason's functions one difficulty level lower (experimental, session 14); 1 the original world of runs before "
                             "2026-12-01 (retainrl.data.world).",
                          check=lambda v: v in WORLD_VERSIONS, must=f"be one of {WORLD_VERSIONS}")


@dataclass
class EvalConfig:
    every: int = option(10, "Evaluate every skill every this many steps (0: only at phase ends).", check=lambda v: v >= 0, must="be >= 0")
    pass_k: list[int] = option([], "Extra k values for unbiased pass@k (needs n_samples >= k).",
                               check=lambda v: all(k >= 1 for k in v), must="hold k values >= 1")
    n_samples: int = option(0, "Samples per task at the sampling temperature: pass@1_sampled (and pass@k); "
                               "0: greedy pass@1 only.", check=lambda v: v >= 0, must="be >= 0")
    max_new_tokens: int = option(96, "Greedy completion budget at evaluation.", check=lambda v: v >= 1, must="be >= 1")


@dataclass
class MethodConfig:
    name: Literal["plain", "replay", "ewc", "l2sp"] = option("plain", "Continual-learning method on top of the RL "
                                                            "algorithm (KL/entropy are rl.kl_coef/rl.entropy_coef).")
    replay_fraction: float = option(0.25, "replay: fraction of each batch's prompts drawn from earlier phases' skills.",
                                    check=lambda v: 0 <= v < 1, must="be in [0, 1)")
    ewc_lambda: float = option(100.0, "ewc: weight of the diagonal-Fisher penalty.", check=lambda v: v >= 0, must="be >= 0")
    ewc_prompts: int = option(16, "ewc: prompts per earlier skill used to estimate the Fisher.",
                              check=lambda v: v >= 1, must="be >= 1")
    l2sp_lambda: float = option(1.0, "l2sp: weight of ||theta - theta_phase_start||^2.", check=lambda v: v >= 0,
                                must="be >= 0")


@dataclass
class SafetyConfig:
    enabled: bool = option(False, "Skill-safe update: project the LoRA update so protected skills do not regress "
                                  "(composes with any algo and method).")
    space: Literal["step", "grad"] = option("step", "step: project the optimizer's proposed parameter step (the "
                                            "guarantee holds for Adam); grad: project the gradient before the "
                                            "optimizer (cheaper, exact only for SGD).")
    solver: Literal["exact", "sequential"] = option("exact", "exact: the S x S dual QP; sequential: one constraint at "
                                                    "a time (A-GEM-like, may leave violations).")
    eps: float = option(0.02, "Slack per protected skill (>= 0): how much harm is allowed (budget=phase: the loss "
                              "of J_p from the phase start, in nats per answer token; 0.02 was measured best, LOG "
                              "2026-12-01 session 6).", check=lambda v: v >= 0, must="be >= 0")
    eps_mode: Literal["absolute", "relative"] = option("absolute", "absolute: in units of J_s (per step, or from the "
                                                       "phase start with budget=phase); relative: eps_s = eps * "
                                                       "||update|| * ||g_s|| (a cosine bound, budget=step only).")
    eps_per_skill: dict[str, float] = option({}, "Per-skill eps overriding `eps`, e.g. {gen: 0.1}.",
                                             check=lambda v: all(math.isfinite(e) and e >= 0 for e in v.values()),
                                             must="hold finite values >= 0")
    protect: Literal["earlier", "others"] = option("earlier", "earlier: skills of earlier phases; others: every "
                                                   "skill not being trained (mixed protocol: every skill).")
    memory_prompts: int = option(32, "Prompts stored per protected skill.", check=lambda v: v >= 1, must="be >= 1")
    memory_samples: int = option(4, "Stored samples per memory prompt (a GRPO group).", check=lambda v: v >= 2, must="be >= 2")
    batch_prompts: int = option(4, "Memory prompts per gradient estimate (x memory_samples rows). 4 since "
                                   "2026-12-02 (session 10): with the activation subspaces on, 4 protected as 8 did "
                                   "on two untuned worlds, at 1.15x instead of 1.23x a plain step (docs/LOG.md).",
                                check=lambda v: v >= 1, must="be >= 1")
    refresh_every: int = option(10, "Regenerate the stored rollouts / answers every this many steps (1: fresh-rollout "
                                    "mode; 0: once per phase, when the protected set changes: the answers of the "
                                    "phase-start policy are kept for the whole phase).",
                                check=lambda v: v >= 0, must="be >= 0")
    is_clip: float = option(2.0, "Truncation of the importance ratio for stale memory rollouts.",
                            check=lambda v: v >= 1, must="be >= 1")
    trigger: bool = option(False, "Switch a constraint on only when the skill falls more than tau below its reference.")
    tau: float = option(0.05, "Trigger threshold (pass@1 or memory reward).", check=lambda v: v >= 0, must="be >= 0")
    trigger_source: Literal["eval", "memory"] = option("eval", "What the trigger watches: the online eval pass@1 "
                                                       "or the memory buffer's mean reward.")
    measure_realised: bool = option(True, "After a diagnostic step, measure the realised change of J_s on the memory "
                                          "rows (one no-grad forward).")
    diagnostics_every: int = option(5, "Steps between the diagnostics that cost passes of their own: the held-out "
                                       "memory prompts' gradients (predicted change) and, with measure_realised, the "
                                       "realised changes after the step. Never changes the update. 1: every step.",
                                    check=lambda v: v >= 1, must="be >= 1")
    constraint: Literal["skill_mean", "prompt_ll", "prompt_ll_subspace"] = option(
        "prompt_ll", "Constraint rows (safety/layer.py). skill_mean: one row per skill, the gradient of its GRPO "
                      "memory surrogate (A-GEM-like; zero for groups whose rewards are all equal). prompt_ll: one row "
                      "per memory prompt (GEM-like), the gradient of the log-likelihood of the skill's own "
                      "verified-correct answers (non-zero at pass rate 1, no sampling noise between refreshes). "
                      "prompt_ll_subspace: the per-skill top singular subspace of those per-prompt gradients "
                      "(GPM-like, two-sided rows, see subspace_energy). Default prompt_ll with budget=phase: the "
                      "best measured on the v4 testbed (skill_mean did not move forgetting; LOG 2026-12-01 session 6).")
    budget: Literal["step", "phase"] = option(
        "phase", "Slack of a row. step: eps per step, re-linearised (drift accumulates unseen). phase: counted from "
                "the phase start, c_p = J_p(now) - J_p(phase start) + eps, negative once a prompt lost more than eps "
                "(then the step must restore it); needs a prompt_ll* constraint, eps_mode=absolute, space=step.")
    heldout_prompts: int = option(4, "prompt_ll*: memory prompts per protected skill never constrained, on which the "
                                     "predicted vs realised change of J is logged.", check=lambda v: v >= 0,
                                  must="be >= 0")
    subspace_energy: float = option(0.9, "prompt_ll_subspace: keep the fewest singular directions whose energy "
                                         "(sum of sigma^2) reaches this fraction (GPM's threshold).",
                                    check=lambda v: 0 < v <= 1, must="be in (0, 1]")
    subspace_max_rank: int = option(4, "prompt_ll_subspace: at most this many directions per skill.",
                                    check=lambda v: v >= 1, must="be >= 1")
    rows_every: int = option(
        1, "Recompute the protected rows (per protected skill one extra forward + backward over its memory) every "
           "this many steps and reuse them in between: the gradients as they were, the values measured again (one "
           "no-grad forward; prompt_ll*) or moved to first order (skill_mean, where the value is only a "
           "diagnostic); the memory prompts do not rotate while rows are reused, and a memory refresh always "
           "recomputes. 1: every step (the rows are never stale).",
        check=lambda v: v >= 1, must="be >= 1")
    trust_region: float = option(
        0.0, "prompt_ll*: a trust region on the memory prompts, the KL to the phase-start policy on each prompt's "
             "answers at most this many nats per token, from the second-order model 1/2 (J_p(now) - J_p(phase start) "
             "+ g_p . step)^2 (empirical Fisher g_p g_p^T): two linear rows per prompt, |drift_p + g_p . step| <= "
             "sqrt(2 trust_region), on top of the constraint's own rows (safety/layer.py). 0: off. Needs "
             "eps_mode=absolute and space=step.", check=lambda v: math.isfinite(v) and v >= 0,
        must="be finite and >= 0")

    act_subspace: Literal["auto", "off", "both", "input"] = option(
        "auto", "prompt_ll*: also keep the step out of the protected skills' activation subspace per LoRA layer "
                "(safety/subspace.py), built at the phase start from their memory answers: both: V^T dW U = 0 "
                "(U the inputs', V the output gradients' top eigenvectors; the measured best, LOG 2026-12-02 "
                "session 8); input: dW U = 0 (GPM; stops B learning, an ablation); off. auto: both in retainrl's "
                "trainer where it applies (a prompt_ll* constraint, space=step, no trigger, not the mixed "
                "protocol), else off; off in the step hooks (TRL). The per-prompt rows act on the projected step.")
    act_energy: float = option(0.7, "act_subspace: the fewest eigenvectors per layer holding this share of the "
                                    "covariance's trace (GPM's energy threshold; 0.7 tuned, LOG session 8).",
                               check=lambda v: 0 < v <= 1, must="be in (0, 1]")
    act_one_sided: bool = option(False, "act_subspace: keep a LoRA layer's step whole when the part the subspace "
                                        "would remove raises every protected skill's mean row objective to first "
                                        "order (it helps them), and project it otherwise; the two-sided default "
                                        "also blocks the directions in which the new skill helps the old ones.")

@dataclass
class RunConfig:
    name: str = option("run", "Run name (not part of the config hash); without --out the run goes to runs/<name>, so "
                              "it is one plain folder name.", hash=False,
                       check=lambda v: re.fullmatch(r"[\w.+-]+", v) is not None and v not in (".", ".."),
                       must="be a plain folder name (letters, digits, . _ + -; no / or ..)")
    seed: int = option(0, "Seed of sampling, initialisation and task order.", check=lambda v: 0 <= v < 2**63,
                       must="be in [0, 2**63)")
    model: ModelConfig = option(ModelConfig(), "The policy model and its LoRA adapter.")
    sampling: SamplingConfig = option(SamplingConfig(), "Rollout sampling.")
    rl: RLConfig = option(RLConfig(), "The RL algorithm.")
    protocol: ProtocolConfig = option(ProtocolConfig(), "Which skills are trained when.")
    world: WorldDataConfig = option(WorldDataConfig(), "The built-in code world.")
    data: DataConfig = option(DataConfig(), "Data sources (benchmarks, JSONL) and their skill assignment; "
                                            "empty: the built-in world only.")
    eval: EvalConfig = option(EvalConfig(), "The evaluation schedule.")
    method: MethodConfig = option(MethodConfig(), "Continual-learning baseline.")
    safety: SafetyConfig = option(SafetyConfig(), "The skill-safe projection layer.")
    checkpoint_every: int = option(5, "Save a resumable checkpoint every this many steps (and at phase ends).",
                                   check=lambda v: v >= 1, must="be >= 1")
    sandbox_workers: int = option(2, "Verifier worker processes.", check=lambda v: v >= 1, must="be >= 1")
    tensorboard: bool = option(True, "Write TensorBoard event files (when tensorboard is installed).")
    wandb: bool = option(False, "Log to Weights & Biases (needs the wandb package; warns and goes on without).")
    wandb_project: str = option("retainrl", "Weights & Biases project name.", hash=False)
    progress: bool = option(True, "Show live progress bars.")

    def known_skills(self) -> list[str] | None:
        """Every skill this config's data can give, known before anything loads; None when a source
        decides skills at load time (a skill_fn, or a JSONL record field): then the trainer checks
        after loading."""
        data = self.data
        skills = list(data.world_skills or VERSION_SKILLS[self.world.version]) if (not data.sources or data.world) else []
        for src in data.sources:
            skill = src.skill if not src.skill_fn else None
            skill = skill or (NATURAL_SKILLS.get(src.name) if not src.skill_fn else None)
            if skill is None:
                return None
            if skill not in skills:
                skills.append(skill)
        return skills

    def check_config(self, prefix: str = "") -> None:
        """The rules that tie fields together; ConfigError naming the dotted key, the value and what
        is allowed. Runs in `validate`, so before the model or the sandbox loads."""
        p, rl = self.protocol, self.rl
        if p.kind == "single" and len(p.phases) != 1:
            raise ConfigError(f"protocol.phases: protocol.kind=single needs exactly one phase, got {p.phases!r}",
                              "protocol.phases")
        world_skills = VERSION_SKILLS[self.world.version]
        for i, w in enumerate(self.data.world_skills):
            if w not in world_skills:
                raise ConfigError(f"data.world_skills[{i}]: unknown world skill {w!r}{_did_you_mean(w, world_skills)} "
                                  f"(world skills: {', '.join(world_skills)})", f"data.world_skills[{i}]")
        known = self.known_skills()
        trained = self.all_skills()
        if known is not None:
            for i, phase in enumerate(p.phases):
                for s in [phase] if isinstance(phase, str) else phase:
                    if s not in known:
                        raise ConfigError(f"protocol.phases[{i}]: unknown skill {s!r}{_did_you_mean(s, known)} "
                                          f"(skills this config's data gives: {', '.join(known)})",
                                          f"protocol.phases[{i}]")
        for name, table in (("protocol.mixed_weights", p.mixed_weights), ("safety.eps_per_skill", self.safety.eps_per_skill)):
            allowed = trained if name == "protocol.mixed_weights" else (known or trained)
            for s in table:
                if s not in allowed and (known is not None or name == "protocol.mixed_weights"):
                    raise ConfigError(f"{name}.{s}: {s!r} is not a skill {'this protocol trains' if allowed is trained else 'of this config'}"
                                      f"{_did_you_mean(s, allowed)} (skills: {', '.join(allowed)})", f"{name}.{s}")
        if p.mixed_weights:
            for phase in self.phase_skills():
                total = sum(p.mixed_weights.get(s, 1.0) for s in phase)
                if not math.isfinite(total):
                    raise ConfigError(f"protocol.mixed_weights: the weights of phase {phase} sum to {total}; they "
                                      f"must have a finite sum", "protocol.mixed_weights")
                if any(p.mixed_weights.get(s, 1.0) == 0 for s in phase) and len(phase) == 1:
                    raise ConfigError(f"protocol.mixed_weights.{phase[0]}: weight 0 for the only skill of a phase "
                                      f"(it is trained all the same); drop the phase instead", "protocol.mixed_weights")
                if len(phase) > 1 and total <= 0:
                    raise ConfigError(f"protocol.mixed_weights: the weights of phase {phase} sum to 0; at least one "
                                      f"must be > 0", "protocol.mixed_weights")
        if p.skill_weighting == "softmin" and max(
                sum(p.mixed_weights.get(sk, 1.0) > 0 for sk in phase) for phase in self.phase_skills()) < 2:
            warnings.warn("protocol.skill_weighting=softmin with no phase of two or more skills does nothing "
                          "(it shares a phase's prompts between its skills)", stacklevel=2)
        if self.safety.enabled and self.safety.act_subspace in ("both", "input") and p.kind == "mixed":
            raise ConfigError("safety.act_subspace: the mixed protocol protects the skills it trains, so their own "
                              "subspace would block their learning; use act_subspace=off with protocol.kind=mixed",
                              "safety.act_subspace")
        # settings that are legal but do nothing here: say so instead of training as if they worked
        first_only = len(self.phase_skills()) == 1
        # (mixed protects every skill of its one phase whatever `protect` says: layer.protected_skills)
        if self.safety.enabled and self.safety.protect == "earlier" and first_only and self.protocol.kind != "mixed":
            warnings.warn("safety.enabled with one phase and safety.protect=earlier protects nothing (no earlier "
                          "phase); use safety.protect=others to protect the skills not trained", stacklevel=2)
        if self.method.name == "replay" and first_only:
            warnings.warn("method.name=replay with one phase replays nothing (no earlier phase)", stacklevel=2)
        if self.safety.enabled and self.safety.act_one_sided:
            from retainrl.safety.layer import resolve_act
            if resolve_act(self.safety, self.protocol.kind) == "off":
                warnings.warn("safety.act_one_sided does nothing here: safety.act_subspace is (or resolves to) off",
                              stacklevel=2)
        bad_k = [k for k in self.eval.pass_k if k > 1 and k > self.eval.n_samples]
        if bad_k:
            raise ConfigError(f"eval.pass_k: pass@{bad_k[0]} needs eval.n_samples >= {bad_k[0]}, got "
                              f"eval.n_samples={self.eval.n_samples}", "eval.pass_k")
        if rl.algo in ("grpo", "rloo") and rl.samples_per_prompt < 2:
            raise ConfigError(f"rl.samples_per_prompt: rl.algo={rl.algo} compares samples of one prompt, so it needs "
                              f">= 2, got {rl.samples_per_prompt} (every group would be uninformative and training a "
                              f"no-op); use >= 2, or rl.algo=ppo", "rl.samples_per_prompt")
        m = self.model
        if m.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"model.device: {m.device!r} asked for, but torch sees no CUDA device here; allowed: "
                              f"auto or cpu", "model.device")
        if m.quantize_4bit and (m.device == "cpu" or not torch.cuda.is_available()):
            raise ConfigError("model.quantize_4bit: QLoRA needs a CUDA device, and there is none here", "model.quantize_4bit")

    def phase_skills(self) -> list[list[str]]:
        """Phases as lists of skill names (mixed: one phase with every listed skill)."""
        phases = [[p] if isinstance(p, str) else list(p) for p in self.protocol.phases]
        if self.protocol.kind == "mixed":
            return [sorted({s for p in phases for s in p}, key=[s for p in phases for s in p].index)]
        if self.protocol.kind == "single" and len(phases) != 1:
            raise ConfigError("protocol.phases: protocol.kind=single needs exactly one phase", "protocol.phases")
        return phases

    def all_skills(self) -> list[str]:
        seen: list[str] = []
        for p in self.phase_skills():
            for s in p:
                if s not in seen:
                    seen.append(s)
        return seen


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
