#!/usr/bin/env python
"""RL step throughput: generated tokens per second of one full GRPO step, retainrl vs TRL's GRPOTrainer.

    .venv/bin/python benchmarks/rl_step_throughput.py              # 3 rounds x (1 warm-up + 3 timed steps) each
    .venv/bin/python benchmarks/rl_step_throughput.py --mode lockstep   # one process, step-by-step alternation
    .venv/bin/python benchmarks/rl_step_throughput.py --profile    # ... plus a breakdown of the retainrl step
    .venv/bin/python benchmarks/rl_step_throughput.py --quick      # smoke run: 1 round x (1 warm-up + 2 timed) steps, 2 prompts

One step = rollout (8 prompts x 8 completions = 64, exactly 64 new tokens each) -> reward from
the world's verifier (retainrl.verify.checks.verify_many in a Sandbox(workers=2)) -> GRPO loss ->
backward -> optimizer step. Both contenders get, from ONE model directory built at run time:

  model      Qwen2, random init (seed 0): hidden 256, 4 layers, MLP 688, 4 heads, 2 KV heads, tied
             embeddings; vocabulary from a byte-level BPE trained with `tokenizers` on the world's
             prompts and reference answers (or the bundled tokenizer in retainrl/policy/assets/tiny
             when it exists). The world's text saturates BPE at about 3k tokens, so the vocabulary
             is padded with never-matched filler tokens up to --vocab (6656), which makes the
             model the 4.6M-parameter one of the issue (the LM head is a third of the FLOPs).
  adapter    LoRA r=8, alpha=16, dropout 0, every linear layer but the LM head (peft, "all-linear").
  sampling   temperature 1, top_p 1, top_k 0; EOS suppressed for the first 64 tokens
             (min_new_tokens=64 on both sides), so every completion is exactly 64 tokens;
             the token counts are taken from what each contender actually produced (retainrl:
             Rollout.completion_mask; TRL: the completion_ids its reward function receives) and
             checked to be 64 per completion.
  objective  GRPO, clipped ratio (eps 0.2), token-mean loss (retainrl `token_mean` = TRL `dapo`),
             group-std scaled advantages, beta/KL 0, 1 epoch / 1 iteration per batch, one backward
             over the 64 rows, AdamW lr 2e-3 constant, weight decay 0, grad-norm clip 1.0, fp32,
             CPU, torch threads = --threads (2) on both sides.
  prompts    the code world (seed 0, difficulty 2, 400 train tasks per skill), skills
             gen+repair+reason mixed; the SAME 8 tasks per step on both sides (TRL gets the
             sequence retainrl's TaskSampler draws, with shuffle_dataset=False; checked).

Contenders:
  retainrl   retainrl.train.Trainer built from a RunConfig pointing at the model directory;
             `trainer.train_step()` inside `with Sandbox(workers=2) as sb: trainer.sandbox = sb`
             (generate -> verify_many -> objective.update, exactly the training loop's step).
  trl        trl.GRPOTrainer(model=<dir>, peft_config=LoraConfig(...)); reward function = a plain
             Python function that runs verify_many on the tasks named by the dataset's `task_id`
             column; per_device_train_batch_size=64, num_generations=8, steps_per_generation=1,
             gradient_accumulation_steps=1 (one optimizer step = 8 prompts x 8), no vLLM,
             report_to none, logging and saving off. gradient_checkpointing=False (TRL's default is
             True; off is faster for TRL and matches retainrl). trainer.train() runs in a thread
             that a TrainerCallback parks between optimizer steps; a step is timed from its
             release to the next on_step_end, so it holds everything TRL's loop does per step
             (data loader, generate, reward, loss, backward, optimizer, callbacks). TRL 1.16
             skips the old-log-prob pass when num_iterations == 1 and computes log-probs with
             its fused, tiled LM head at completion positions only (plus token entropies).

Protocol (--mode):
  subprocess (default)  every contender runs in its own fresh process per round, alternating
             (retainrl, trl, retainrl, trl, ...; 3 rounds); in each, --warmup untimed steps then
             --steps timed steps (default 1 + 3). Each trainer runs alone in its process, as in
             real use. Start-up (imports, world, model load, sandbox start) is not timed.
  lockstep   both contenders in ONE process (one shared Sandbox), alternating step by step; TRL's
             train() runs in a thread parked by a callback between steps, so only one contender
             runs at a time (default 1 + 8 steps). Both see the same background load, but
             interleaving TRL's steps slows retainrl's steps in that process by ~1 s (4.1 -> 5.2 s
             measured; not GC, not thread counts), so the subprocess mode is the reference.

The machine may be shared. Before every step the script waits (up to --quiet-wait s) for a
second in which other processes use < --quiet of the CPU, and records per step the share of the
machine's CPU that other processes used during it (from /proc/stat); "quiet" steps are those
under --quiet. Reported: median step time and tokens/s over all timed steps (and over the quiet
ones), the fastest step, and the ratio retainrl/TRL (of the medians, and the median of ratios of
steps adjacent in time).

--profile adds one more retainrl process that times the parts of the step (model.generate, the
rest of the rollout, verify, the no-grad old-log-prob pass, the forward with grad, backward,
clipping, optimizer step) with thin wrappers (mean over quiet steps), and then measures
alternatives on the last rollout, best of --profile-reps interleaved runs: the update without the
old-log-prob pass and with logits only at completion positions; HF generate with the LoRA merged;
plain decode loops with multinomial vs inverse-CDF sampling, prefill once per distinct prompt,
merged LoRA; and the op-level profile of one generate call.

Output: a table on stdout (progress per step as it goes) and benchmarks/results/rl_step_throughput.json
(overwritten each run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_OUT = REPO / "benchmarks" / "results" / "rl_step_throughput.json"
BUNDLED_TOKENIZER = REPO / "retainrl" / "policy" / "assets" / "tiny"
CONTENDERS = ("retainrl", "trl")
EOS, PAD = "<|endoftext|>", "<|pad|>"
# Qwen2's pre-tokenizer regex (one token per digit), as in scripts/pretrain_tiny.py.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
WORLD = dict(seed=0, n_train=400, n_heldout=100, difficulty=2)
SKILLS = ("gen", "repair", "reason")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict:
    out = {"python": platform.python_version(), "retainrl": git_head()}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            out[name] = f"unavailable ({type(e).__name__}: {e})"[:200]
    return out


def git_head() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "retainrl"], cwd=REPO, capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        return head + ("+dirty retainrl/" if dirty else "") if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------
# the machine is shared: measure what the other processes take, and wait for quiet
# ----------------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_now() -> tuple[float, float, float] | None:
    """(machine busy s, machine total s, this process's cpu s), all cores; None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    t = os.times()
    return (total - idle) / _TICK, total / _TICK, t.user + t.system


def background_share(a, b) -> float | None:
    """Share of the machine's CPU capacity used by OTHER processes between two _cpu_now() samples."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    return max(0.0, ((b[0] - a[0]) - (b[2] - a[2])) / (b[1] - a[1]))


def wait_quiet(threshold: float, max_wait_s: float, window_s: float = 1.0) -> float:
    """Wait (up to max_wait_s) until other processes used < threshold of the machine over a window."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait_s:
        a = _cpu_now()
        time.sleep(window_s)
        share = background_share(a, _cpu_now())
        if share is None or share < threshold:
            break
    return time.monotonic() - t0


# ----------------------------------------------------------------------------------------
# the model both contenders load
# ----------------------------------------------------------------------------------------
def world_tasks():
    from retainrl.data.world import WorldConfig, make_world

    return make_world(WorldConfig(skills=SKILLS, **WORLD))


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=max(vocab, 512), special_tokens=[EOS, PAD], min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=EOS,
                                   clean_up_tokenization_spaces=False, padding_side="left", model_max_length=1024)


def pad_vocab(tok, vocab: int) -> int:
    """Add never-matched filler tokens up to `vocab` (only the model's size changes); how many."""
    n = max(0, vocab - len(tok))
    if n:
        tok.add_tokens([f"<|fill{i}|>" for i in range(n)])
    return n


def build_model(model_dir: Path, args) -> dict:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    t0 = time.monotonic()
    world = world_tasks()
    if (BUNDLED_TOKENIZER / "tokenizer.json").is_file() and not args.train_tokenizer:
        tok = AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER)
        tok.chat_template = None  # plain prompts on both sides (the bundled template only concatenates)
        source = f"bundled ({BUNDLED_TOKENIZER.relative_to(REPO)})"
    else:
        texts = [t.prompt + t.reference for s in world for split in ("train", "heldout") for t in world[s][split]]
        tok = train_tokenizer(texts, args.vocab)
        source = f"BPE trained on {len(texts)} world prompts+references"
    n_real = len(tok)
    n_fill = pad_vocab(tok, args.vocab)
    source += f", {n_real} tokens" + (f" + {n_fill} never-matched fillers" if n_fill else "")
    config = Qwen2Config(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=2048,
                         tie_word_embeddings=True, rope_theta=10000.0, use_cache=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    # the directory must round-trip: same vocabulary, same ids for the prompts
    tok2 = AutoTokenizer.from_pretrained(model_dir)
    sample = [t.prompt for s in world for t in world[s]["train"][:20]]
    if len(tok2) != len(tok) or tok2(sample, add_special_tokens=False).input_ids != tok(sample, add_special_tokens=False).input_ids:
        raise RuntimeError("the saved tokenizer does not reload to the same encoding")
    prompt_tokens = {s: statistics.mean(len(x) for x in tok([t.prompt for t in world[s]["train"]],
                                                            add_special_tokens=False).input_ids) for s in world}
    return {"dir": str(model_dir), "params": sum(p.numel() for p in model.parameters()),
            "vocab": len(tok), "tokenizer_tokens": n_real, "filler_tokens": n_fill, "tokenizer": source,
            "hidden": args.hidden, "layers": args.layers, "intermediate": args.intermediate, "heads": args.heads,
            "kv_heads": args.kv_heads, "mean_prompt_tokens": {k: round(v, 1) for k, v in prompt_tokens.items()},
            "build_s": round(time.monotonic() - t0, 2)}


# ----------------------------------------------------------------------------------------
# the same prompts on both sides
# ----------------------------------------------------------------------------------------
def run_config(args):
    import dataclasses

    from retainrl.policy.model import ModelConfig
    from retainrl.policy.rollout import SamplingConfig
    from retainrl.train.config import ProtocolConfig, RLConfig, RunConfig, WorldDataConfig

    extra = {}
    if args.retainrl_backend:
        if "backend" not in {f.name for f in dataclasses.fields(SamplingConfig)}:
            raise SystemExit("--retainrl-backend: this retainrl's SamplingConfig has no `backend` field")
        extra["backend"] = args.retainrl_backend
    # The same work as TRL, which back-propagates every group: retainrl's filter of groups whose
    # rewards are all equal (on by default) would skip most of the update on a random model.
    rl_extra = {"drop_uninformative": False} if "drop_uninformative" in {f.name for f in dataclasses.fields(RLConfig)} \
        else {}
    return RunConfig(
        name="rl_step_throughput", seed=args.seed,
        model=ModelConfig(name_or_path=args.model_dir, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                          target_modules="all-linear", dtype="float32", device="cpu", threads=args.threads),
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.completion_len, **extra),
        rl=RLConfig(algo="grpo", lr=args.lr, weight_decay=0.0, optimizer="adamw", prompts_per_step=args.prompts,
                    samples_per_prompt=args.group, micro_batch_prompts=args.prompts, epochs=1, clip_low=0.2,
                    clip_high=0.2, aggregation="token_mean", kl_coef=0.0, entropy_coef=0.0, max_grad_norm=1.0,
                    reward="binary", scale_by_std=True, **rl_extra),
        protocol=ProtocolConfig(kind="mixed", phases=list(SKILLS), steps_per_phase=args.warmup + args.steps),
        world=WorldDataConfig(**WORLD), sandbox_workers=args.workers, tensorboard=False, progress=False)


def force_full_length(trainer, completion_len: int, real_generate):
    """Every completion exactly completion_len tokens on the retainrl side. transformers' generate
    reads min_new_tokens from the model's generation_config (its MinNewTokens processor, as TRL's
    generation_kwargs do); any other sampling backend (SamplingConfig.backend != "hf") gets EOS
    masked out of the LM head's output during the rollout only (one indexing op per decode step;
    the update's forward is untouched). Returns the generate to install in the trainer module."""
    policy = trainer.policy
    policy.model.generation_config.min_new_tokens = completion_len
    if getattr(trainer.cfg.sampling, "backend", "hf") == "hf":
        return real_generate
    head, eos = policy.model.get_output_embeddings(), policy.tokenizer.eos_token_id

    def no_eos(module, inputs, output):
        output[..., eos] = float("-inf")
        return output

    def generate(*a, **k):
        hook = head.register_forward_hook(no_eos)
        try:
            return real_generate(*a, **k)
        finally:
            hook.remove()
    return generate


def task_schedule(train_tasks: dict, args) -> list[list]:
    """The tasks retainrl's TaskSampler draws for each step (mixed protocol, no replay)."""
    from retainrl.train.sampler import TaskSampler

    sampler = TaskSampler(train_tasks, args.seed)
    return [sampler.sample(list(SKILLS), args.prompts, weights=None, replay_skills=[], replay_fraction=0.0)
            for _ in range(args.warmup + args.steps)]


# ----------------------------------------------------------------------------------------
# contenders: set up once (untimed), then step() runs and times one full GRPO step
# ----------------------------------------------------------------------------------------
class RetainrlContender:
    """retainrl.train.Trainer.train_step(), exactly the training loop's step."""

    name = "retainrl"

    def __init__(self, args, sandbox):
        import torch

        import retainrl.train.trainer as trainer_mod
        from retainrl.train.trainer import Trainer

        self.args, self.torch, self.i = args, torch, 0
        self.out_dir = tempfile.mkdtemp(prefix="rl_step_retainrl_")
        self.trainer = Trainer(run_config(args), self.out_dir)
        self.trainer.sandbox = sandbox
        self.seen: dict = {}
        real_generate = force_full_length(self.trainer, args.completion_len, trainer_mod.generate)
        real_sample = self.trainer.sampler.sample

        def generate(*a, **k):  # pass-through that keeps the rollout, to count its tokens
            self.seen["rollout"] = real_generate(*a, **k)
            return self.seen["rollout"]

        def sample(*a, **k):  # pass-through that keeps the tasks, to check both sides saw the same
            self.seen["tasks"] = real_sample(*a, **k)
            return self.seen["tasks"]

        trainer_mod.generate, self.trainer.sampler.sample = generate, sample
        self.trainable_params = sum(p.numel() for p in self.trainer.policy.trainable_parameters())

    def step(self) -> dict:
        t = time.perf_counter()
        rec = self.trainer.train_step()
        dt = time.perf_counter() - t
        lengths = self.seen.pop("rollout").lengths.tolist()
        self.i += 1
        return {"s": dt, "tokens": int(sum(lengths)), "completions": len(lengths), "min_len": min(lengths),
                "max_len": max(lengths), "task_ids": [t.task_id for t in self.seen.pop("tasks")],
                "rollout_s": rec["time/rollout_s"], "verify_s": rec["time/verify_s"], "update_s": rec["time/update_s"],
                "reward_mean": rec["reward/mean"], "threads": self.torch.get_num_threads(),
                "note": f"rollout {rec['time/rollout_s']:.2f}, verify {rec['time/verify_s']:.2f}, "
                        f"update {rec['time/update_s']:.2f}"}

    def info(self) -> dict:
        return {"trainable_params": self.trainable_params}

    def close(self) -> None:
        shutil.rmtree(self.out_dir, ignore_errors=True)


GRPO_FIELDS_WANTED = dict(
    use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, use_vllm=False,
    per_device_train_batch_size=None, gradient_accumulation_steps=1, num_generations=None,
    steps_per_generation=1, num_iterations=1, max_completion_length=None, generation_kwargs=None,
    temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
    mask_truncated_completions=False, learning_rate=None, lr_scheduler_type="constant", warmup_steps=0,
    weight_decay=0.0, optim="adamw_torch", max_grad_norm=1.0, max_steps=None, shuffle_dataset=False,
    logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, log_completions=False,
    remove_unused_columns=False, dataloader_num_workers=0, seed=None, model_init_kwargs={"dtype": "float32"},
)


def grpo_config(args, output_dir: str):
    """A GRPOConfig for the installed TRL; fields it lacks are dropped (and reported)."""
    import dataclasses

    from trl import GRPOConfig

    wanted = dict(GRPO_FIELDS_WANTED)
    wanted.update(per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
                  max_completion_length=args.completion_len,
                  generation_kwargs={"min_new_tokens": args.completion_len}, learning_rate=args.lr,
                  max_steps=args.warmup + args.steps, seed=args.seed)
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    dropped = sorted(k for k in wanted if k not in names)
    cfg = GRPOConfig(output_dir=output_dir, **{k: v for k, v in wanted.items() if k in names})
    return cfg, dropped


class TrlContender:
    """trl.GRPOTrainer.train() for warmup + steps optimizer steps, run in a thread and held in
    lockstep by a TrainerCallback: it parks in on_step_begin (first step) / on_step_end (later
    ones) until step() lets it run one step. A step's time runs from that release to the next
    on_step_end, so it includes everything TRL's loop does between two optimizer steps
    (data loader, generation, reward, loss, backward, optimizer step, callbacks). Only one of the
    two threads ever runs at a time."""

    name = "trl"
    WAIT_S = 3600.0

    def __init__(self, args, sandbox):
        import queue
        import threading

        import torch
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoTokenizer, TrainerCallback
        from trl import GRPOTrainer

        from retainrl.verify.checks import verify_many

        self.args = args
        world = world_tasks()
        train = {s: world[s]["train"] for s in SKILLS}
        by_id = {t.task_id: t for s in SKILLS for t in train[s]}
        self.schedule = [[t.task_id for t in step] for step in task_schedule(train, args)]
        dataset = Dataset.from_list([{"prompt": by_id[i].prompt, "task_id": i} for step in self.schedule for i in step])
        cur = {"lengths": [], "task_ids": [], "rewards": [], "verify_s": 0.0}
        self.cur = cur

        def world_verifier(prompts, completions, completion_ids, task_id, **kwargs) -> list[float]:
            t = time.perf_counter()
            verdicts = verify_many(sandbox, [(by_id[i], c) for i, c in zip(task_id, completions)])
            rewards = [v.reward("binary") for v in verdicts]
            cur["verify_s"] += time.perf_counter() - t
            cur["lengths"] += [len(c) for c in completion_ids]   # what TRL generated (after its EOS cut)
            cur["task_ids"] += list(task_id)
            cur["rewards"] += rewards
            return rewards

        self.go = threading.Semaphore(0)
        self.records: queue.Queue = queue.Queue()
        self.t_release = 0.0
        n_steps = args.warmup + args.steps
        me = self

        class Lockstep(TrainerCallback):
            def on_step_begin(self, a, state, control, **kw):
                if state.global_step == 0:
                    me.records.put(("ready", None))
                    me.go.acquire()

            def on_step_end(self, a, state, control, **kw):
                dt = time.perf_counter() - me.t_release
                lengths = list(cur["lengths"])
                me.records.put(("step", {
                    "s": dt, "tokens": int(sum(lengths)), "completions": len(lengths),
                    "min_len": min(lengths) if lengths else 0, "max_len": max(lengths) if lengths else 0,
                    "task_ids": cur["task_ids"][::args.group],  # one per generation: one per prompt
                    "verify_s": cur["verify_s"], "threads": torch.get_num_threads(),
                    "reward_mean": statistics.mean(cur["rewards"]) if cur["rewards"] else float("nan"),
                    "note": f"verify {cur['verify_s']:.2f}"}))
                cur.update(lengths=[], task_ids=[], rewards=[], verify_s=0.0)
                if state.global_step < n_steps:
                    me.go.acquire()

        self.out_dir = tempfile.mkdtemp(prefix="rl_step_trl_")
        cfg, self.dropped = grpo_config(args, self.out_dir)
        tok = AutoTokenizer.from_pretrained(args.model_dir, padding_side="left")
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        self.trainer = GRPOTrainer(model=args.model_dir, reward_funcs=world_verifier, args=cfg, train_dataset=dataset,
                                   processing_class=tok, peft_config=lora, callbacks=[Lockstep()])
        from transformers.trainer_callback import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)  # its end-of-training metrics dump
        self.trainable_params = sum(p.numel() for p in self.trainer.model.parameters() if p.requires_grad)
        self.dtypes = sorted({str(p.dtype) for p in self.trainer.model.parameters()})

        def run():
            try:
                self.trainer.train()
                self.records.put(("finished", None))
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self.records.put(("error", e))

        self.thread = threading.Thread(target=run, name="trl-train", daemon=True)
        self.thread.start()
        self._expect("ready")  # TRL's own set-up (accelerate, data loader) is untimed too

    def _expect(self, kind: str):
        got, payload = self.records.get(timeout=self.WAIT_S)
        if got == "error":
            raise RuntimeError("TRL's train() failed") from payload
        if got != kind:
            raise RuntimeError(f"TRL thread: expected {kind!r}, got {got!r}")
        return payload

    def step(self) -> dict:
        self.t_release = time.perf_counter()
        self.go.release()
        return self._expect("step")

    def info(self) -> dict:
        return {"trainable_params": self.trainable_params, "param_dtypes": self.dtypes,
                "grpo_fields_dropped": self.dropped}

    def close(self) -> None:
        self._expect("finished")
        self.thread.join(timeout=60)
        shutil.rmtree(self.out_dir, ignore_errors=True)


CONTENDER_CLASSES = {"retainrl": RetainrlContender, "trl": TrlContender}


def run_steps(contenders: list, args, rnd: int) -> dict[str, list[dict]]:
    """warmup + steps steps of every contender, alternating step by step (A, B, A, B, ...)."""
    steps: dict[str, list[dict]] = {c.name: [] for c in contenders}
    for i in range(args.warmup + args.steps):
        for c in contenders:
            waited = wait_quiet(args.quiet, args.quiet_wait) if args.quiet_wait > 0 else 0.0
            before = _cpu_now()
            rec = c.step()
            rec["background"] = background_share(before, _cpu_now())
            rec["waited_s"] = round(waited, 1)
            rec["warmup"] = i < args.warmup
            rec["round"] = rnd
            steps[c.name].append(rec)
            kind = "warm-up" if rec["warmup"] else "timed"
            print(f"  [{c.name:8s} round {rnd + 1}] step {i + 1}/{args.warmup + args.steps} ({kind}): {rec['s']:6.2f} s,"
                  f" {rec['tokens']} tokens, {rec['tokens'] / rec['s']:6.0f} tok/s  ({rec.pop('note')}; others used "
                  f"{100 * (rec['background'] or 0):.0f}% of the CPUs, waited {rec['waited_s']:.0f} s)", flush=True)
    return steps


def session(names: list[str], args, rnd: int) -> list[dict]:
    """Set up the named contenders in this process (one shared Sandbox), run them, close them."""
    import torch

    from retainrl.verify import Sandbox

    torch.set_num_threads(args.threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    out = []
    with Sandbox(workers=args.workers) as sb:
        contenders = []
        for name in names:
            t = time.monotonic()
            contenders.append(CONTENDER_CLASSES[name](args, sb))
            out.append({"contender": name, "round": rnd, "setup_s": time.monotonic() - t, **contenders[-1].info()})
            if name == "trl":
                out[-1]["schedule_task_ids"] = contenders[-1].schedule
        steps = run_steps(contenders, args, rnd)
        for c in contenders:
            c.close()
    for o in out:
        o["steps"] = steps[o["contender"]]
    return out


# ----------------------------------------------------------------------------------------
# profile of the retainrl step (separate subprocess; wrappers never touch the timed runs)
# ----------------------------------------------------------------------------------------
def worker_profile(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import retainrl.policy.rollout as rollout_mod
    import retainrl.train.trainer as trainer_mod
    from retainrl.policy.model import token_logprobs
    from retainrl.train import objective
    from retainrl.train.trainer import Trainer
    from retainrl.verify import Sandbox

    trainer = Trainer(run_config(args), tempfile.mkdtemp(prefix="rl_step_profile_"))
    policy = trainer.policy
    acc: dict[str, float] = {}
    timed_now = {"on": False}
    depth = {"backward": 0}

    def add(key, dt):
        if timed_now["on"]:
            acc[key] = acc.get(key, 0.0) + dt

    def wrap(key, fn, when=None):
        def inner(*a, **k):
            if when is not None and not when():
                return fn(*a, **k)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                add(key, time.perf_counter() - t)
        return inner

    last = {}
    real_generate = force_full_length(trainer, args.completion_len, trainer_mod.generate)

    def generate(*a, **k):
        t = time.perf_counter()
        r = real_generate(*a, **k)
        add("rollout: generate() total", time.perf_counter() - t)
        last["rollout"] = r
        return r

    trainer_mod.generate = generate
    trainer_mod.verify_many = wrap("verify_many", trainer_mod.verify_many)
    policy.model.generate = wrap(SAMPLING_LOOP, policy.model.generate)
    if hasattr(rollout_mod, "decode_loop"):
        rollout_mod.decode_loop = wrap(SAMPLING_LOOP, rollout_mod.decode_loop)
    objective._forward_no_grad = wrap("update: old log-probs (no-grad forward)", objective._forward_no_grad)
    objective.completion_logprobs = wrap("update: forward with grad (+log-probs)", objective.completion_logprobs,
                                         when=torch.is_grad_enabled)
    objective.update = wrap("update() total", objective.update)
    trainer.opt.step = wrap("update: optimizer.step", trainer.opt.step)
    torch.nn.utils.clip_grad_norm_ = wrap("update: clip_grad_norm_", torch.nn.utils.clip_grad_norm_)
    real_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        depth["backward"] += 1
        t = time.perf_counter()
        try:
            return real_backward(self, *a, **k)
        finally:
            depth["backward"] -= 1
            if depth["backward"] == 0:
                add("update: backward", time.perf_counter() - t)

    torch.Tensor.backward = backward
    steps = []
    n_steps = args.warmup + args.profile_steps
    with Sandbox(workers=args.workers) as sb:
        trainer.sandbox = sb
        for i in range(n_steps):
            timed_now["on"] = i >= args.warmup
            if args.quiet_wait > 0:
                wait_quiet(args.quiet, args.quiet_wait)
            acc.clear()
            before = _cpu_now()
            t = time.perf_counter()
            trainer.train_step()
            dt = time.perf_counter() - t
            bg = background_share(before, _cpu_now())
            if timed_now["on"]:
                steps.append({"s": dt, "background": bg, "parts": step_parts(dict(acc), dt)})
            print(f"  [profile  ] step {i + 1}/{n_steps} ({'timed' if timed_now['on'] else 'warm-up'}):"
                  f" {dt:6.2f} s (others used {100 * (bg or 0):.0f}% of the CPUs)", flush=True)
    torch.Tensor.backward = real_backward
    quiet = [st for st in steps if is_quiet(st, args.quiet)]
    used = quiet or [min(steps, key=lambda st: st["s"])]
    total = statistics.mean(st["s"] for st in used)
    breakdown = {k: {"s": round(statistics.mean(st["parts"][k] for st in used), 4),
                     "share": round(statistics.mean(st["parts"][k] for st in used) / total, 4)}
                 for k in used[0]["parts"]}
    basis = f"mean of {len(quiet)} quiet steps" if quiet else "the fastest step (no quiet step)"
    print(f"  profile ({basis}, {total:.2f} s):", flush=True)
    for k, v in breakdown.items():
        print(f"    {k:48s} {v['s']:7.3f} s  {100 * v['share']:5.1f} %", flush=True)

    experiments = profile_alternatives(policy, last["rollout"], args, token_logprobs)
    return {"contender": "profile", "basis": basis, "step_s_mean": total, "steps": steps, "breakdown": breakdown,
            "alternatives": experiments}


SAMPLING_LOOP = "rollout: sampling loop (generate / decode_loop)"


def step_parts(acc: dict, total: float) -> dict:
    """One profiled step's wrapper timings as disjoint parts (seconds)."""
    gen_total = acc.get("rollout: generate() total", 0.0)
    hf = acc.get(SAMPLING_LOOP, 0.0)
    upd = acc.get("update() total", 0.0)
    parts = {SAMPLING_LOOP: hf,
             "rollout: tokenize/decode/bookkeeping": gen_total - hf,
             "verify_many (sandbox)": acc.get("verify_many", 0.0)}
    for k in ("update: old log-probs (no-grad forward)", "update: forward with grad (+log-probs)", "update: backward",
              "update: clip_grad_norm_", "update: optimizer.step"):
        parts[k] = acc.get(k, 0.0)
    parts["update: loss math, advantages, rest"] = upd - sum(v for k, v in parts.items() if k.startswith("update:"))
    parts["train_step: sampling tasks, rewards, metrics"] = total - gen_total - parts["verify_many (sandbox)"] - upd
    return parts


def best_of_interleaved(variants: dict, reps: int, args) -> dict[str, float]:
    """Fastest of `reps` runs of every variant, interleaved (v1, v2, ..., v1, v2, ...), each run
    after a quiet second when --quiet-wait allows: contention only ever adds time."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            if args.quiet_wait > 0:
                wait_quiet(args.quiet, args.quiet_wait)
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: round(min(v), 4) for k, v in times.items()}


def profile_alternatives(policy, rollout, args, token_logprobs) -> dict:
    """Alternatives to parts of the step, measured on the profile run's last rollout (same
    shapes as every step). None of them is what retainrl does today except the *_now entries."""
    import torch
    from transformers import DynamicCache

    from retainrl.policy.rollout import completion_logprobs

    reps = max(2, args.profile_reps)
    model, tok = policy.model, policy.tokenizer
    ids, mask = rollout.full()
    P, T, G = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1], rollout.group_size
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out: dict = {"shapes": {"rows": int(ids.shape[0]), "prompt_tokens_padded": P, "completion_tokens": T}}

    # --- update: the old-log-prob pass and the forward/backward with and without prompt logits
    def lp_full():  # what objective.update runs (completion_logprobs: logits at every position)
        return completion_logprobs(policy, rollout)[0]

    def lp_keep():  # LM head only at the T positions that predict completion tokens
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                       logits_to_keep=T + 1).logits
        return token_logprobs(logits[:, :-1], ids[:, P:])

    def no_grad(fn):
        def run():
            model.eval()
            with torch.no_grad():
                fn()
        return run

    def fwd_bwd(fn):
        def run():
            model.train()
            fn().mean().backward()
            model.zero_grad(set_to_none=True)
            model.eval()
        return run

    with torch.no_grad():
        out["logits_to_keep_max_abs_diff"] = float((lp_full() - lp_keep()).abs().max())
    out["update"] = best_of_interleaved({
        "old_logprob_pass_now": no_grad(lp_full), "old_logprob_pass_logits_to_keep": no_grad(lp_keep),
        "forward_backward_now": fwd_bwd(lp_full), "forward_backward_logits_to_keep": fwd_bwd(lp_keep)}, reps, args)

    # --- rollout: HF generate as rollout.generate calls it, and plain decode loops
    prompt_ids, prompt_mask = rollout.prompt_ids, rollout.prompt_mask
    eos = tok.eos_token_id
    kw = dict(max_new_tokens=T, min_new_tokens=T, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
              pad_token_id=tok.pad_token_id, eos_token_id=eos)

    def hf_generate():
        with torch.no_grad():
            return model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kw)

    def merged(fn):
        def run():
            model.merge_adapter()
            try:
                return fn()
            finally:
                model.unmerge_adapter()
        return run

    def sample_multinomial(logits):  # what HF's sampling does (exponential race over the whole vocab)
        return torch.multinomial(torch.softmax(logits, -1), 1)

    def sample_cdf(logits):  # inverse CDF: one uniform per row instead of one exponential per vocab entry
        c = torch.softmax(logits, -1).cumsum(-1)
        return torch.searchsorted(c, torch.rand(c.shape[0], 1) * c[:, -1:]).clamp_(max=c.shape[1] - 1)

    def decode_loop(sample, dedup: bool):
        """Prefill (once per distinct prompt with dedup), then T steps with a DynamicCache."""
        def run():
            with torch.no_grad():
                cache = DynamicCache()
                pi, pm = (prompt_ids[::G], prompt_mask[::G]) if dedup else (prompt_ids, prompt_mask)
                p = (pm.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=pi, attention_mask=pm, position_ids=p, past_key_values=cache,
                               use_cache=True, logits_to_keep=1).logits[:, -1]
                am, p = prompt_mask, (prompt_mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
                if dedup:
                    cache.batch_repeat_interleave(G)
                    logits = logits.repeat_interleave(G, 0)
                toks = []
                for step in range(T):
                    logits[:, eos] = float("-inf")  # min_new_tokens == T: EOS never allowed
                    nxt = sample(logits)
                    toks.append(nxt)
                    if step == T - 1:
                        break
                    am = torch.cat([am, am.new_ones(am.shape[0], 1)], 1)
                    p = p + 1
                    logits = model(input_ids=nxt, attention_mask=am, position_ids=p, past_key_values=cache,
                                   use_cache=True).logits[:, -1]
                return torch.cat(toks, 1)
        return run

    t = time.perf_counter()
    model.merge_adapter()
    model.unmerge_adapter()
    out["merge_plus_unmerge_s"] = round(time.perf_counter() - t, 4)
    out["generate"] = best_of_interleaved({
        "hf_generate_now": hf_generate,
        "hf_generate_merged_lora": merged(hf_generate),
        "loop_multinomial": decode_loop(sample_multinomial, False),
        "loop_cdf_sampling": decode_loop(sample_cdf, False),
        "loop_cdf_sampling_dedup_prefill": decode_loop(sample_cdf, True),
        "loop_cdf_sampling_dedup_prefill_merged_lora": merged(decode_loop(sample_cdf, True)),
    }, reps, args)
    b = torch.softmax(torch.randn(ids.shape[0], len(tok)), -1)
    out["sampling_ms_per_token_step"] = best_of_interleaved({
        "multinomial": lambda: [torch.multinomial(b, 1) for _ in range(10)],
        "inverse_cdf": lambda: [torch.searchsorted(b.cumsum(-1), torch.rand(b.shape[0], 1)) for _ in range(10)],
    }, reps, args)
    out["sampling_ms_per_token_step"] = {k: round(v * 100, 3) for k, v in out["sampling_ms_per_token_step"].items()}

    # --- op-level view of one HF generate call
    from torch.profiler import ProfilerActivity, profile

    if args.quiet_wait > 0:
        wait_quiet(args.quiet, args.quiet_wait)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        hf_generate()
    out["generate_top_ops"] = [
        {"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2), "calls": e.count}
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]]
    shown = json.dumps({k: v for k, v in out.items() if not k.endswith("top_ops")})
    print(f"  alternatives (best of {reps}, interleaved): {shown}", flush=True)
    return out


# ----------------------------------------------------------------------------------------
# orchestration
# ----------------------------------------------------------------------------------------
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
              "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONWARNINGS": "ignore"}


def set_env(threads: int) -> None:
    """Before torch is imported: same thread count for every OpenMP/MKL pool, quiet libraries."""
    import warnings

    os.environ.update(WORKER_ENV)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def run_worker(args, worker: str, rnd: int, tmp: Path) -> list[dict] | dict:
    """One contender (or the profile) in a fresh subprocess; its JSON result."""
    result = tmp / f"{worker}-{rnd}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--round", str(rnd),
           "--model-dir", args.model_dir, "--result", str(result)]
    for k in ("threads", "workers", "prompts", "group", "completion_len", "warmup", "steps", "lr", "seed",
              "profile_steps", "profile_reps", "quiet", "quiet_wait"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if args.retainrl_backend:
        cmd += ["--retainrl-backend", args.retainrl_backend]
    proc = subprocess.run(cmd, env=dict(os.environ), cwd=REPO, check=False)
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"{worker} worker (round {rnd + 1}) failed with exit code {proc.returncode}")
    return json.loads(result.read_text())


def is_quiet(step: dict, threshold: float) -> bool:
    return step.get("background") is not None and step["background"] < threshold


def summarize(runs: list[dict], quiet: float) -> dict:
    summary = {}
    for c in CONTENDERS:
        mine = [r for r in runs if r["contender"] == c]
        timed = [s for r in mine for s in r["steps"] if not s["warmup"]]
        if not timed:
            continue
        secs = [s["s"] for s in timed]
        tps = [s["tokens"] / s["s"] for s in timed]
        summary[c] = {
            "timed_steps": len(timed), "median_step_s": median(secs), "min_step_s": min(secs), "max_step_s": max(secs),
            "mean_step_s": statistics.mean(secs), "median_tokens_per_s": median(tps), "max_tokens_per_s": max(tps),
            "tokens_per_step": median([s["tokens"] for s in timed]),
            "completion_len_min": min(s["min_len"] for s in timed),
            "completion_len_max": max(s["max_len"] for s in timed),
            "completions_per_step": median([s["completions"] for s in timed]),
            "round_median_step_s": [median([s["s"] for s in r["steps"] if not s["warmup"]]) for r in mine],
            "warmup_step_s": [s["s"] for r in mine for s in r["steps"] if s["warmup"]],
            "setup_s": [round(r["setup_s"], 2) for r in mine], "trainable_params": mine[0]["trainable_params"],
            "threads": sorted({s["threads"] for s in timed}),
            "median_verify_s": median([s["verify_s"] for s in timed]),
            "reward_mean": statistics.mean(s["reward_mean"] for s in timed),
            "background_median": median([s["background"] for s in timed if s.get("background") is not None]),
        }
        q = [s for s in timed if is_quiet(s, quiet)]
        summary[c]["quiet_steps"] = len(q)
        summary[c]["quiet_median_step_s"] = median([s["s"] for s in q])
        summary[c]["quiet_median_tokens_per_s"] = median([s["tokens"] / s["s"] for s in q])
        if c == "retainrl":
            for k in ("rollout_s", "update_s"):
                summary[c][f"median_{k}"] = median([s[k] for s in timed])
        else:
            summary[c]["grpo_fields_dropped"] = mine[0]["grpo_fields_dropped"]
            summary[c]["param_dtypes"] = mine[0]["param_dtypes"]
    return summary


def paired_ratios(runs: list[dict], quiet: float | None = None) -> list[float]:
    """retainrl tokens/s over TRL tokens/s of the i-th timed step of the same round (adjacent in
    time); with `quiet`, only pairs where both steps were quiet."""
    out = []
    for rnd in sorted({r["round"] for r in runs}):
        a = [s for r in runs if r["round"] == rnd and r["contender"] == "retainrl" for s in r["steps"] if not s["warmup"]]
        b = [s for r in runs if r["round"] == rnd and r["contender"] == "trl" for s in r["steps"] if not s["warmup"]]
        out += [(x["tokens"] / x["s"]) / (y["tokens"] / y["s"]) for x, y in zip(a, b)
                if quiet is None or (is_quiet(x, quiet) and is_quiet(y, quiet))]
    return out


def check_runs(runs: list[dict], args) -> list[str]:
    """Problems that would make the comparison unfair (empty list: none)."""
    problems = []
    want_tokens = args.prompts * args.group * args.completion_len
    for r in runs:
        for i, s in enumerate(r["steps"]):
            if s["completions"] != args.prompts * args.group or s["tokens"] != want_tokens:
                problems.append(f"{r['contender']} step {i + 1}: {s['completions']} completions, {s['tokens']} tokens "
                                f"(want {args.prompts * args.group} and {want_tokens})")
            if s["threads"] != args.threads:
                problems.append(f"{r['contender']} step {i + 1}: {s['threads']} torch threads, want {args.threads}")
        if r["contender"] == "trl" and [s["task_ids"] for s in r["steps"]] != r["schedule_task_ids"]:
            problems.append("trl: its prompts are not the scheduled ones (order or grouping differs)")
    ret = [[s["task_ids"] for s in r["steps"]] for r in runs if r["contender"] == "retainrl"]
    trl = [r["schedule_task_ids"] for r in runs if r["contender"] == "trl"]
    if ret and trl and ret[0] != trl[0]:
        problems.append("retainrl and trl saw different prompts")
    if len({r["trainable_params"] for r in runs}) > 1:
        problems.append(f"trainable parameter counts differ: {sorted({(r['contender'], r['trainable_params']) for r in runs})}")
    return problems


def print_table(summary: dict, ratio: float, paired: list[float], paired_q: list[float], quiet: float, model: dict,
                vers: dict, mode: str) -> None:
    print()
    if model.get("params"):
        print(f"model: Qwen2 {model['params'] / 1e6:.2f}M params (vocab {model['vocab']}, hidden {model['hidden']}, "
              f"{model['layers']} layers), LoRA r=8 "
              f"({next(iter(summary.values()), {}).get('trainable_params')} trainable), fp32 CPU")
    print(f"versions: retainrl {vers['retainrl']}, torch {vers['torch']}, transformers {vers['transformers']}, "
          f"peft {vers['peft']}, trl {vers['trl']}; mode {mode}")
    hdr = (f"{'contender':10s} {'steps':>5s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'tok/step':>8s} "
           f"{'tok/s':>7s} {'best tok/s':>10s} | {'quiet':>5s} {'median s':>9s} {'tok/s':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for c, s in summary.items():
        print(f"{c:10s} {s['timed_steps']:5d} {s['median_step_s']:9.3f} {s['min_step_s']:7.3f} {s['max_step_s']:7.3f} "
              f"{s['tokens_per_step']:8.0f} {s['median_tokens_per_s']:7.0f} {s['max_tokens_per_s']:10.0f} | "
              f"{s['quiet_steps']:5d} {s['quiet_median_step_s']:9.3f} {s['quiet_median_tokens_per_s']:7.0f}")
    print(f"(quiet: steps during which other processes used < {100 * quiet:.0f}% of the machine's CPU)")
    if not math.isnan(ratio):
        print(f"ratio retainrl/TRL (tokens/s): {ratio:.2f}x of the medians; step-paired: median {median(paired):.2f}x "
              f"(n={len(paired)}, range {min(paired):.2f}..{max(paired):.2f})"
              + (f"; quiet pairs only: median {median(paired_q):.2f}x (n={len(paired_q)})" if paired_q else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("subprocess", "lockstep"), default="subprocess",
                    help="subprocess: a fresh process per contender per round, alternating (default); "
                         "lockstep: both contenders in this process, alternating step by step")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (lockstep default 1, subprocess default 3)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per contender per round "
                                                             "(lockstep default 8, subprocess default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 warm-up + 2 timed steps, 2 prompts")
    ap.add_argument("--profile", action="store_true", help="also profile the retainrl step (one more subprocess)")
    ap.add_argument("--profile-steps", type=int, default=4, help="timed steps of the --profile run (default 4)")
    ap.add_argument("--profile-reps", type=int, default=3, help="repetitions per alternative in --profile (best of)")
    ap.add_argument("--quiet", type=float, default=0.10,
                    help="a step is 'quiet' if other processes used less than this share of the machine's CPU "
                         "during it (default 0.10)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each step wait up to this many seconds for a quiet second (0: never wait)")
    ap.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated subset of " + ",".join(CONTENDERS))
    ap.add_argument("--threads", type=int, default=2, help="torch threads, both contenders (default 2)")
    ap.add_argument("--workers", type=int, default=2, help="sandbox workers, both contenders (default 2)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (default 8)")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (default 8)")
    ap.add_argument("--completion-len", type=int, default=64, help="tokens per completion, forced (default 64)")
    ap.add_argument("--retainrl-backend", default=None,
                    help="retainrl's SamplingConfig.backend (hf | loop; default: the config's own default)")
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate, both (default 2e-3, retainrl's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=6656,
                    help="vocabulary of the built model: the tokenizer is padded with never-matched filler tokens "
                         "up to this size (default 6656: the 4.6M-parameter model; 0: the tokenizer's own size)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--train-tokenizer", action="store_true", help="train the BPE even if the bundled tokenizer exists")
    ap.add_argument("--model-dir", default=None, help="use this model directory instead of building one")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file (overwritten)")
    # internal: one contender (or the profile) in this process
    ap.add_argument("--worker", choices=CONTENDERS + ("profile",), help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    set_env(args.threads)

    if args.worker:
        out = worker_profile(args) if args.worker == "profile" else session([args.worker], args, args.round)
        Path(args.result).write_text(json.dumps(out))
        return 0

    lockstep = args.mode == "lockstep"
    if args.rounds is None:
        args.rounds = 1 if lockstep else 3
    if args.steps is None:
        args.steps = 8 if lockstep else 3
    if args.quick:
        args.rounds, args.steps, args.warmup, args.prompts = 1, 2, 1, 2
        args.profile_steps, args.profile_reps, args.quiet_wait = 1, 2, 0.0
    only = [c for c in args.only.split(",") if c]
    bad = [c for c in only if c not in CONTENDERS]
    if bad:
        ap.error(f"unknown contender(s) {bad}")
    vers = versions()
    if "trl" in only and vers["trl"].startswith("unavailable"):
        print(f"TRL is not installed ({vers['trl']}): `pip install trl --no-deps` plus the small deps it lacks "
              f"(datasets, pandas, pyarrow), or run with --only retainrl", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="rl_step_bench_"))
    try:
        if args.model_dir is None:
            args.model_dir = str(tmp / "model")
            model = build_model(Path(args.model_dir), args)
        else:
            model = {"dir": args.model_dir}
        print(f"model: {json.dumps(model)}", flush=True)
        load0 = loadavg()
        t_start = time.monotonic()
        runs: list[dict] = []
        for rnd in range(args.rounds):
            if lockstep:
                print(f"round {rnd + 1}/{args.rounds}: {' / '.join(only)} alternating step by step, one process",
                      flush=True)
                runs += session(only, args, rnd)
            else:
                for c in only:  # alternating: retainrl, trl, retainrl, trl, ...
                    print(f"round {rnd + 1}/{args.rounds}: {c} (fresh process)", flush=True)
                    runs += run_worker(args, c, rnd, tmp)
        wall = time.monotonic() - t_start
        profile = None
        if args.profile:
            print("profile: retainrl step breakdown (fresh process)", flush=True)
            profile = run_worker(args, "profile", 0, tmp)
        load1 = loadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = summarize(runs, args.quiet)
    problems = check_runs(runs, args)
    ratio, paired, paired_q = float("nan"), [], []
    if "retainrl" in summary and "trl" in summary:
        ratio = summary["retainrl"]["median_tokens_per_s"] / summary["trl"]["median_tokens_per_s"]
        paired, paired_q = paired_ratios(runs), paired_ratios(runs, args.quiet)
    print_table(summary, ratio, paired, paired_q, args.quiet, model, vers,
                f"{args.mode}, retainrl sampling backend {args.retainrl_backend or 'default'}")
    if profile:
        print(f"\nretainrl step profile ({profile['basis']}, {profile['step_s_mean']:.2f} s):")
        for k, v in profile["breakdown"].items():
            print(f"  {k:48s} {v['s']:7.3f} s  {100 * v['share']:5.1f} %")
    for p in problems:
        print(f"WARNING: {p}")

    result = {
        "benchmark": "rl_step_throughput", "quick": args.quick, "mode": args.mode, "host": platform.node(),
        "cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": load1, "wall_s": round(wall, 1),
        "versions": vers, "model": model,
        "setup": {"prompts": args.prompts, "group": args.group, "completion_len": args.completion_len,
                  "threads": args.threads, "sandbox_workers": args.workers, "lr": args.lr, "rounds": args.rounds,
                  "retainrl_backend": args.retainrl_backend or "default", "retainrl_commit": git_head(),
                  "warmup_steps": args.warmup, "timed_steps_per_round": args.steps, "order": only,
                  "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
                  "world": dict(WORLD, skills=list(SKILLS)), "beta": 0.0, "epochs": 1,
                  "trl_config": {k: v for k, v in GRPO_FIELDS_WANTED.items() if v is not None}},
        "summary": summary, "ratio_retainrl_over_trl": ratio,
        "paired_ratio_median": median(paired) if paired else None, "paired_ratios": paired,
        "quiet_threshold": args.quiet, "quiet_paired_ratio_median": median(paired_q) if paired_q else None,
        "quiet_paired_ratios": paired_q,
        "problems": problems,
        "runs": [{k: v for k, v in r.items() if k != "schedule_task_ids"} for r in runs],
        "profile": profile,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    print(f"\nwrote {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
