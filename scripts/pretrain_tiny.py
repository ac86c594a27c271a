"""Build the bundled tiny model (retainrl/policy/assets/tiny) from scratch, reproducibly.

    python scripts/pretrain_tiny.py --out retainrl/policy/assets/tiny --steps 4000 ...
    python scripts/pretrain_tiny.py --init_from FIRST --habit_gen 0.5 ...      # a second stage on top of FIRST
    python scripts/pretrain_tiny.py --init_from SECOND --world_version 2 --habit_repair 0.4 ...   # third stage
    python scripts/pretrain_tiny.py --measure retainrl/policy/assets/tiny     # CPU check of a built model

The bundled model is three stages (exact commands in its README): stage 1 from scratch (GPU, ~3 min),
stage 2 continues it on fresh pretraining texts with clean `gen` answers, half of them carrying
gen's generic bad habit (`world.habit_answer`, print for return; CPU, ~11 min), stage 3 continues
stage 2 on world version 2 (stratified split, the fourth skill `refactor`) with every skill's
habit in a share of its answers (`--habit_<skill>`; CPU).

What it does, top to bottom:
1. corpus: the code world's `pretrain` split (functions never in train or held-out), one text
   per task, `prompt + answer + EOS`; a per-skill fraction of answers is deliberately wrong
   (`world.wrong_answer`: a bugged function, the bug left in, a nearby value), so the model
   is imperfect and sampling at temperature 1 gives both right and wrong answers. With
   `--habit_gen` a fraction of `gen` answers instead carry the habit: the same edit on every
   task, a mode that RL with a verifiable reward can unlearn on unseen tasks as well.
2. tokenizer: byte-level BPE (`tokenizers`), individual digits, trained on the corpus,
   wrapped as `PreTrainedTokenizerFast` (eos `<|endoftext|>`, pad `<|pad|>`).
3. model: `Qwen2ForCausalLM` with tied embeddings, trained with AdamW on the answer tokens
   only (prompt and padding are masked out of the loss).
4. calibration: every `eval_every` steps, greedy pass@1 per skill on `n_calib` tasks of the
   world's *train* split (unseen functions, not the held-out ones); the kept checkpoint is the
   one whose rates lie closest to [target_lo, target_hi] for every skill. Calibration is the
   point: RL needs each skill to start where it has both signal and room.
5. report: greedy pass@1 on `n_eval` held-out tasks per skill, pass rate and outcome variety
   under sampling at temperature 1, and the size; all written with the model (README.md and
   pretrain_tiny.json) by `save_pretrained`, so `AutoModelForCausalLM.from_pretrained(dir)` loads it.

`evaluate_greedy` is the stand-in for the project's eval module.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config,  # noqa: E402
                          Qwen2ForCausalLM)

from retainrl.data.task import Task  # noqa: E402
from retainrl.data.world import (VERSION_SKILLS, WorldConfig, generate, habit_answer, habit_triggered,  # noqa: E402
                                 shows_habit, wrong_answer)
from retainrl.data.world.skills import HABIT_TRIGGERS  # noqa: E402
from retainrl.data.world.world import skill_difficulty  # noqa: E402
from retainrl.verify.checks import verify_many  # noqa: E402
from retainrl.verify.sandbox import Sandbox  # noqa: E402

EOS, PAD = "<|endoftext|>", "<|pad|>"
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
HABITS = {"gen": "`print(value)` for the final `return value`", "repair": "the fixed function renamed `f_fixed` (no entry point `f`)",
          "reason": "a trailing comma after the value (`[1, 2],`, a one-element tuple)", "refactor": "the return type hint left out"}
HABITS_V3 = {**HABITS, "gen": "the return annotation of the given stub left out (`def f(s):` for `def f(s) -> int:`)",
             "repair": "a return annotation added to the signature it was told to keep (`def f(s) -> int:`)"}
HABITS_V4 = {**HABITS_V3, "repair": "a return annotation added where the shown signature has none (`def f(s) -> int:`); "
                                    "where it has one, the fixed function renamed `f_fixed`"}


def habit_texts(version: int) -> dict[str, str]:
    """Each skill's habit in words, for the model README (versions 4 to 6 share v4's habits)."""
    return HABITS_V4 if version >= 4 else HABITS_V3 if version == 3 else HABITS


MAX_NEW = {"gen": 96, "repair": 96, "reason": 24, "refactor": 96}   # greedy budget per skill in evaluation


@dataclass
class Args:
    out: str = "retainrl/policy/assets/tiny"
    """Folder the model is saved to (save_pretrained)."""
    seed: int = 0
    """Seed of the world, the wrong answers, the initialisation and the batch order."""
    difficulty: int = 2
    """World difficulty (1..4) of the corpus and of the calibration and evaluation tasks."""
    world_version: int = 1
    """World version (retainrl.data.world): its skills make up the corpus, calibration and report."""
    n_pretrain: int = 60000
    """Pretraining tasks per skill."""
    share_gen: float = 1.0
    """Corpus size of `gen` as a multiple of n_pretrain."""
    share_repair: float = 1.0
    """Corpus size of `repair` as a multiple of n_pretrain."""
    share_reason: float = 1.0
    """Corpus size of `reason` as a multiple of n_pretrain."""
    share_refactor: float = 1.0
    """Corpus size of `refactor` (world version 2) as a multiple of n_pretrain."""
    wrong_gen: float = 0.3
    """Fraction of `gen` answers in the corpus that are deliberately wrong."""
    wrong_repair: float = 0.3
    """Fraction of `repair` answers that are wrong."""
    wrong_reason: float = 0.3
    """Fraction of `reason` answers that are wrong."""
    wrong_refactor: float = 0.0
    """Fraction of `refactor` answers that are wrong (a bug of the reference)."""
    habit_gen: float = 0.0
    """Fraction of `gen` answers written with the world's systematic bad habit (`world.habit_answer`:
    the final `return v` as `print(v)`); drawn before `wrong_gen`, which applies to the rest."""
    habit_repair: float = 0.0
    """Fraction of `repair` answers with repair's habit (the fixed function renamed `f_fixed`)."""
    habit_reason: float = 0.0
    """Fraction of `reason` answers with reason's habit (a trailing comma: the value as a one-element tuple)."""
    habit_refactor: float = 0.0
    """Fraction of `refactor` answers with refactor's habit (the return type hint left out)."""
    habit_trigger: str = ""
    """"" : each `habit_<skill>` fraction applies to all of the skill's tasks alike. "nonlist": it
    applies to the tasks whose function takes a string or an int (`world.habit_triggered`, about
    half), and `habit_other` to the rest. A habit decided the same way on every task is a single
    global switch: greedy decoding then picks it on almost all tasks or on almost none, and it flips
    between the two during training (measured: repair 0.2-0.33, reason 0.3-0.83, refactor 0.97-1.0
    greedy share at evaluations 25 steps apart); tied to a visible feature of the prompt, its greedy
    share is set by that feature's share and stays put. "nonlist,repair=list": a default trigger and
    per-skill ones ("list": the tasks whose function takes a list); model v5 gives repair's habit
    the complement of gen's, so the two opposed habits are not taught on the same tasks."""
    habit_other: float = 0.0
    """With `habit_trigger`: the fraction of habit answers on the tasks the trigger does not select."""
    init_from: str = ""
    """Continue from the model in this folder (its weights and tokenizer) instead of a fresh one:
    a second stage on top of a first (see the bundled model's README for both commands)."""
    vocab_size: int = 1024
    """BPE vocabulary, special tokens included."""
    hidden: int = 192
    """Hidden size."""
    layers: int = 6
    """Decoder layers."""
    heads: int = 6
    """Attention heads (head dim = hidden / heads)."""
    kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    intermediate: int = 512
    """MLP width."""
    max_len: int = 256
    """Longest training text in tokens (longer ones are dropped); also the context length."""
    steps: int = 4000
    """Optimizer steps."""
    batch: int = 128
    """Texts per step."""
    lr: float = 2e-3
    """Peak learning rate (linear warmup, cosine decay to 10%)."""
    warmup: int = 200
    """Warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    eval_every: int = 250
    """Steps between calibration evaluations (0: only at the end)."""
    n_calib: int = 96
    """Train-split tasks per skill used to pick the checkpoint."""
    n_eval: int = 200
    """Held-out tasks per skill in the final report."""
    target_lo: float = 0.25
    """Lower end of the wanted greedy pass@1 per skill."""
    target_hi: float = 0.55
    """Upper end of the wanted greedy pass@1 per skill."""
    habit_lo: float = 0.0
    """Lower end of the wanted share of greedy completions that show their skill's habit, for every
    skill whose corpus carries one (0 with habit_hi 0: not a criterion). The greedy share, not the
    corpus share, is what RL can remove: a corpus share of 30-50% gave greedy shares of 0-52%."""
    habit_hi: float = 0.0
    """Upper end of that wanted greedy habit share (0: not a criterion)."""
    first_skills: str = ""
    """Comma-separated skills that alone make up the batches of the first `first_steps` steps
    (a curriculum: the slow skill first, the others join later); empty: mixed from the start."""
    first_steps: int = 0
    """Length of that first phase."""
    eval_from: int = 0
    """No calibration evaluation before this step (the first phase need not be measured)."""
    patience: int = 0
    """Stop when the kept checkpoint is this many evaluations old (0: never stop early)."""
    data_cache: str = ""
    """File holding the built corpus and tokenizer for these args (read if present, else written)."""
    max_minutes: float = 0.0
    """Stop training after this many minutes (0: no limit); recorded if it triggers."""
    stop_at: int = 0
    """Stop after this step (0: run all `steps`); the learning-rate schedule still spans `steps`.
    Unlike `max_minutes` it does not depend on the machine's speed, so a command that stopped on
    time is rerun exactly by giving the step it stopped at."""
    workers: int = 2
    """Sandbox worker processes for verification."""
    device: str = "auto"
    """cuda, cpu or auto."""
    measure: str = ""
    """If set: load the model in this folder, evaluate it on CPU and update its report; no training."""


# ----------------------------------------------------------------------------- corpus

def skills_of(args: Args) -> tuple[str, ...]:
    return VERSION_SKILLS[args.world_version]


def world_config(args: Args) -> WorldConfig:
    return WorldConfig(seed=args.seed, difficulty=args.difficulty, version=args.world_version)


def habit_trigger_of(spec: str, skill: str, skills: tuple[str, ...] | None = None) -> str:
    """The trigger of one skill in `--habit_trigger` ("nonlist" or "nonlist,repair=list"); "" for none.
    Raises SystemExit for an unknown trigger, or a skill not in `skills` (when given)."""
    default, per_skill = "", {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, trigger = item.split("=", 1) if "=" in item else ("", item)
        name, trigger = name.strip(), trigger.strip()
        if trigger not in HABIT_TRIGGERS:
            raise SystemExit(f"--habit_trigger {spec!r}: unknown trigger {trigger!r}; known: {', '.join(HABIT_TRIGGERS)}")
        if name and skills is not None and name not in skills:
            raise SystemExit(f"--habit_trigger {spec!r}: no skill {name!r} in this world; skills: {', '.join(skills)}")
        if name:
            per_skill[name] = trigger
        else:
            default = trigger
    return per_skill.get(skill, default)


def build_corpus(args: Args) -> list[tuple[str, str, str]]:
    """(skill, prompt, answer) for every pretraining task, the wrong ones mixed in, shuffled."""
    config = world_config(args)
    rng = random.Random(args.seed)
    wrong = {s: getattr(args, f"wrong_{s}") for s in skills_of(args)}
    share = {s: getattr(args, f"share_{s}") for s in skills_of(args)}
    habit = {s: getattr(args, f"habit_{s}") for s in skills_of(args)}
    corpus = []
    for skill in skills_of(args):
        for task in generate(config, skill, "pretrain", round(args.n_pretrain * share[skill])):
            # no draw when the habit is off, so stage-1 commands rebuild their corpus exactly
            trigger = habit_trigger_of(args.habit_trigger, skill, skills_of(args))
            rate = habit[skill] if not trigger or habit_triggered(task, trigger) else args.habit_other
            if habit[skill] > 0 and rng.random() < rate:
                answer = habit_answer(task)
            else:
                answer = wrong_answer(task, rng) if rng.random() < wrong[skill] else task.reference
            corpus.append((skill, task.prompt, answer))
    rng.shuffle(corpus)
    return corpus


# Qwen2's own pre-tokenizer regex (one token per digit): a tokenizer built with exactly Qwen2's
# pipeline encodes the same whether it is loaded from tokenizer.json as is or rebuilt from the
# vocabulary by transformers' Qwen2Tokenizer (which AutoTokenizer picks for a qwen2 config).
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer; EOS and PAD are the only special tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=EOS,
                                      clean_up_tokenization_spaces=False, padding_side="left",
                                      model_max_length=1024)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def encode(corpus, tok, max_len: int) -> list[tuple[list[int], int, str]]:
    """(token ids of prompt + answer + EOS, number of prompt tokens, skill); texts over max_len dropped."""
    prompts = tok([p for _, p, _ in corpus], add_special_tokens=False)["input_ids"]
    answers = tok([a for _, _, a in corpus], add_special_tokens=False)["input_ids"]
    out = []
    for (skill, _, _), p, a in zip(corpus, prompts, answers):
        ids = p + a + [tok.eos_token_id]
        if len(ids) <= max_len:
            out.append((ids, len(p), skill))
    return out


CACHE_KEYS = ("seed", "difficulty", "world_version", "n_pretrain", "share_gen", "share_repair", "share_reason",
              "share_refactor", "wrong_gen", "wrong_repair", "wrong_reason", "wrong_refactor", "habit_gen",
              "habit_repair", "habit_reason", "habit_refactor", "habit_trigger", "habit_other", "init_from", "vocab_size", "max_len")


def build_data(args: Args):
    """(tokenizer, encoded corpus, corpus size); from `data_cache` when it was built for the same args."""
    key = {k: getattr(args, k) for k in CACHE_KEYS}
    if args.data_cache and os.path.exists(args.data_cache):
        cache = torch.load(args.data_cache, weights_only=False)
        if cache["key"] == key:
            tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(cache["tokenizer"]), eos_token=EOS,
                                          pad_token=PAD, unk_token=EOS, clean_up_tokenization_spaces=False,
                                          padding_side="left", model_max_length=1024)
            tok.chat_template = CHAT_TEMPLATE
            flat, offsets = cache["ids"].tolist(), cache["offsets"].tolist()
            data = [(flat[offsets[i]: offsets[i + 1]], n, skill)
                    for i, (n, skill) in enumerate(zip(cache["n_prompt"], cache["skills"]))]
            return tok, data, cache["n_corpus"]
        print("data cache built for other args; rebuilding", flush=True)
    corpus = build_corpus(args)
    if args.init_from:   # a second stage keeps the first stage's tokenizer
        tok = AutoTokenizer.from_pretrained(args.init_from)
    else:
        tok = train_tokenizer([p + a for _, p, a in corpus], args.vocab_size)
    data = encode(corpus, tok, args.max_len)
    if args.data_cache:
        offsets = [0]
        for ids, _, _ in data:
            offsets.append(offsets[-1] + len(ids))
        torch.save({"key": key, "tokenizer": tok.backend_tokenizer.to_str(), "n_corpus": len(corpus),
                    "ids": torch.tensor([i for ids, _, _ in data for i in ids], dtype=torch.int16),
                    "offsets": torch.tensor(offsets), "n_prompt": [n for _, n, _ in data],
                    "skills": [skill for _, _, skill in data]}, args.data_cache)
    return tok, data, len(corpus)


def collate(examples, pad_id: int):
    """Right-padded (input_ids, attention_mask, labels); labels are -100 on prompt and padding."""
    width = max(len(ids) for ids, _, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, n_prompt, _) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:])
        mask[row, : len(ids)] = 1
    return input_ids, mask, labels


# ----------------------------------------------------------------------------- model

def make_model(args: Args, tok) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=args.max_len * 2,
                         tie_word_embeddings=True, rope_theta=10000.0, use_cache=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(args.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.eos_token_id
    return model


def lr_at(step: int, args: Args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 64,
             do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Completions (text before EOS) for raw prompts, batched with left padding."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i: i + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **kwargs)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def evaluate_greedy(model, tokenizer, tasks: list[Task], sandbox, batch_size: int = 64) -> dict:
    """Greedy pass@1 and habit share per skill: {skill: {"pass@1": rate, "habit_share": share, "n": count}};
    the project's eval module replaces this."""
    was_training = model.training
    model.eval()
    result = {}
    for skill in sorted({t.skill for t in tasks}):
        group = [t for t in tasks if t.skill == skill]
        completions = complete(model, tokenizer, [t.prompt for t in group], MAX_NEW.get(skill, 96), batch_size)
        verdicts = verify_many(sandbox, list(zip(group, completions)))
        result[skill] = {"pass@1": sum(v.passed for v in verdicts) / len(group),
                         "habit_share": sum(shows_habit(t, c) for t, c in zip(group, completions)) / len(group),
                         "n": len(group)}
    model.train(was_training)
    return result


def evaluate_sampled(model, tokenizer, tasks: list[Task], sandbox, k: int = 8, batch_size: int = 64) -> dict:
    """Temperature-1 sampling, k per task: mean pass rate and the share of tasks with mixed outcomes."""
    model.eval()
    result = {}
    for skill in sorted({t.skill for t in tasks}):
        group = [t for t in tasks if t.skill == skill]
        prompts = [t.prompt for t in group for _ in range(k)]
        completions = complete(model, tokenizer, prompts, MAX_NEW.get(skill, 96), batch_size, do_sample=True)
        verdicts = verify_many(sandbox, list(zip([t for t in group for _ in range(k)], completions)))
        per_task = [[verdicts[i * k + j].passed for j in range(k)] for i in range(len(group))]
        result[skill] = {"pass@1_t1": sum(map(sum, per_task)) / (k * len(group)),
                         "mixed_groups": sum(0 < sum(p) < k for p in per_task) / len(group),
                         "distinct_answers": sum(len(set(completions[i * k:(i + 1) * k])) for i in range(len(group)))
                         / len(group), "k": k, "n": len(group)}
    return result


@torch.no_grad()
def generation_speed(model, tokenizer, prompts: list[str], batch: int = 64, new_tokens: int = 64, repeats: int = 2) -> dict:
    """Greedy tokens/s for `batch` prompts, exactly `new_tokens` new tokens each (best of `repeats`)."""
    model.eval()
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts[:batch], return_tensors="pt", padding=True, add_special_tokens=False)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        best = min(best, time.perf_counter() - start)
    return {"batch": batch, "new_tokens": new_tokens, "prompt_tokens": int(enc["input_ids"].shape[1]),
            "seconds": round(best, 3), "tokens_per_s": round(batch * new_tokens / best, 1),
            "threads": torch.get_num_threads()}


def calibration_gap(rates: dict, lo: float, hi: float, habits: dict | None = None, habit_lo: float = 0.0,
                    habit_hi: float = 0.0) -> tuple[float, float]:
    """(total distance of the skills' rates outside [lo, hi], distance to the middle): smaller is better.
    With `habits` ({skill: greedy habit share}, the skills whose corpus carries a habit) and a band
    [habit_lo, habit_hi], the shares' distances outside and to the middle of that band count as well."""
    values = [(r, lo, hi) for r in rates.values()]
    if habits and habit_hi > 0:
        values += [(h, habit_lo, habit_hi) for h in habits.values()]
    outside = sum(max(0.0, a - v, v - b) for v, a, b in values)
    return round(outside, 6), round(sum(abs(v - (a + b) / 2) for v, a, b in values), 6)


# ----------------------------------------------------------------------------- training

def train(args: Args, model, tok, data, calib: list[Task], sandbox, device) -> tuple[dict, list[dict]]:
    """Train; returns the state dict of the best-calibrated checkpoint and the log."""
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    rng = random.Random(args.seed + 1)
    first = set(filter(None, args.first_skills.split(",")))
    pools = {"first": [i for i, d in enumerate(data) if d[2] in first], "all": list(range(len(data)))}
    orders: dict[str, list[int]] = {"first": [], "all": []}
    log, best, best_key, since_best = [], None, None, 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    start, seen_tokens = time.time(), 0
    for step in range(1, args.steps + 1):
        phase = "first" if step <= args.first_steps and pools["first"] else "all"
        if len(orders[phase]) < args.batch:
            more = pools[phase][:]
            rng.shuffle(more)
            orders[phase] += more
        batch, orders[phase] = [data[i] for i in orders[phase][: args.batch]], orders[phase][args.batch:]
        input_ids, mask, labels = (t.to(device) for t in collate(batch, tok.pad_token_id))
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1, args)
        with autocast:
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen_tokens += int(mask.sum())
        stop_now = (args.max_minutes and time.time() - start > 60 * args.max_minutes) or step == args.stop_at
        due = args.eval_every and step % args.eval_every == 0 and step >= args.eval_from
        if due or step == args.steps or stop_now:
            result = evaluate_greedy(model, tok, calib, sandbox, 128)
            rates = {s: r["pass@1"] for s, r in result.items()}
            habits = {s: r["habit_share"] for s, r in result.items() if getattr(args, f"habit_{s}", 0) > 0}
            key = calibration_gap(rates, args.target_lo, args.target_hi, habits, args.habit_lo, args.habit_hi)
            entry = {"step": step, "loss": round(loss.item(), 4), "calib_pass@1": rates, "calib_habit_share": habits,
                     "gap": key,
                     "tokens": seen_tokens, "minutes": round((time.time() - start) / 60, 2)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
            since_best += 1
            if best_key is None or key < best_key:
                best_key, best = key, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                entry["kept"], since_best = True, 0
            if args.patience and since_best >= args.patience:
                log.append({"stopped": "patience", "step": step})
                break
        if stop_now:
            log.append({"stopped": "stop_at" if step == args.stop_at else "max_minutes", "step": step})
            break
    return best, log


# ----------------------------------------------------------------------------- saving

def heldout_tasks(args: Args, n: int) -> list[Task]:
    return [t for skill in skills_of(args) for t in generate(world_config(args), skill, "heldout", n)]


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def schedule(args: dict) -> str:
    mixed = f"all skills mixed for {args['steps']} steps"
    if not (args.get("first_skills") and args.get("first_steps")):
        return mixed
    return (f"{args['first_skills']} only for steps 1-{args['first_steps']}, then all skills to step {args['steps']}"
            f" (batch {args['batch']}, lr {args['lr']})")


def write_readme(out: str, info: dict) -> None:
    ev = info.get("heldout_greedy", {})
    cpu = info.get("cpu", {})
    lines = [
        "# tiny: the bundled policy of retainrl",
        "",
        "A Qwen2 causal LM trained from scratch by `scripts/pretrain_tiny.py`"
        + (f" ({len(info.get('stages', [info['stage1']])) + 1} stages, every command below)" if info.get("stage1") else "")
        + " on the built-in code world's",
        "`pretrain` split (functions never in the world's train or held-out splits). Load it like any",
        "Hugging Face model: `AutoModelForCausalLM.from_pretrained(dir)`, `AutoTokenizer.from_pretrained(dir)`.",
        "Prompts are raw text (the world's prompts end in `Answer:\\n`); answers end with `<|endoftext|>`.",
    ]
    habits = info.get("habits") or ({"gen": info["habit_gen"]} if info.get("habit_gen") else {})
    if len(habits) > 1:
        lines += [
            "",
            f"**Deliberate bad habits (world version {info.get('world_version', 1)}).** In the last stage's corpus a share "
            "of every skill's answers carries one generic failure, the same edit on every task and decided at one point "
            "of the answer (`world.habit_answer`): " + "; ".join(f"{k} {v:.0%}: {habit_texts(info.get('world_version', 1))[k]}"
                          for k, v in habits.items())
            + (f" — these fractions on the tasks that `world.habit_triggered` selects (trigger `{info['args']['habit_trigger']}`: "
               "\"nonlist\" the function takes a string or an int, \"list\" it takes a list), "
               f"{info['args'].get('habit_other', 0):.0%} on the others"
               if info["args"].get("habit_trigger") else "")
            + ". The model learns each as a mode that greedy decoding picks on some tasks; each always fails its verifier "
            "(status `failed`), so a verifiable reward can remove it on unseen tasks too, as RLVR removes format, "
            "echoing and signature failures of real code models. Much of each skill's room for RL is its habit: these "
            "are properties of the testbed, chosen so that every skill can be learnt by RL and so that a later skill's "
            "training can undo an earlier one's.",
        ]
    elif info.get("habit_gen"):
        lines += [
            "",
            f"**A deliberate bad habit.** {info['habit_gen']:.0%} of the `gen` answers in the (last stage's) corpus end in "
            "`print(value)` where the function should `return value` (`world.habit_answer`): the model learns it as a "
            "mode, and on some tasks greedy decoding picks it. It is the same edit on every task, so it is a generic "
            "behaviour a verifiable reward can remove on unseen tasks too, as RLVR removes format and entry-point "
            "failures of real code models; the `gen` skill's room for RL is mostly this habit. `repair` and `reason` "
            "answers carry no habit (only task-specific wrong answers).",
        ]
    lines += [
        "",
        f"- parameters: {info['parameters']:,} ({info['config_summary']})",
        f"- tokenizer: byte-level BPE, {info['vocab_size']} tokens, one token per digit",
        f"- corpus: {info['corpus_texts']:,} texts, wrong-answer fractions {info['wrong']}"
        + (f", gen answers with the print-for-return habit: {info['habit_gen']:.0%}"
           if info.get("habit_gen") and len(habits) <= 1 and info.get("world_version", 1) < 3 else ""),
        f"- schedule: {schedule(info['args'])}; kept checkpoint: step {info['kept_step']} "
        f"(greedy pass@1 on {info['args']['n_calib']} train-split tasks per skill: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(info['kept_calib_pass@1'].items()))
        + ("; greedy habit share " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(info['kept_calib_habit_share'].items()))
           if info.get("kept_calib_habit_share") else "") + ")",
        f"- stopped early: {next((e['stopped'] for e in info['log'] if 'stopped' in e), 'no')}",
        "",
        "Command that produced these weights:",
        "",
        "```",
        info["command"],
        "```",
    ]
    for i, first in enumerate(info.get("stages", [info["stage1"]] if info.get("stage1") else [])):
        lines += [
            "",
            f"{'It continues' if i else 'The chain starts from'} a stage-{i + 1} model made by (trained on {first['train_device']}, "
            f"{first['train_minutes']} min, {first['corpus_texts']:,} texts, wrong-answer fractions {first['wrong']}; "
            "held-out greedy pass@1 " + ", ".join(f"{k} {v['pass@1']:.2f}" for k, v in sorted(first["heldout_greedy"].items()))
            + "):",
            "",
            "```",
            first["command"].replace("FIRST_STAGE_DIR", f"STAGE{i}_DIR").replace("PREVIOUS_STAGE_DIR", f"STAGE{i}_DIR")
            + f" --out STAGE{i + 1}_DIR",
            "```",
        ]
    lines += [
        "",
        f"Trained on: {info['train_device']}, {info['train_minutes']} min. `--data_cache` and `--workers` do not "
        "change the weights; " + ("on CPU a rerun on the same machine rebuilds them byte for byte."
                                  if info["train_device"] == "cpu" else
                                  "GPU kernels are not bit-deterministic, so a rerun matches closely, not bitwise."),
        "",
        "Greedy pass@1 on held-out world tasks (difficulty "
        f"{info['args']['difficulty']}"
        + (f", reason at level {skill_difficulty(info['world_version'], 'reason', info['args']['difficulty'])}"
           if info.get("world_version", 1) >= 6 else "")
        + f", seed {info['args']['seed']}):",
        "",
        "| skill | " + " | ".join(f"{where}" for where in ("trained device", "CPU")) + " |",
        "| --- | --- | --- |",
    ]
    for skill in VERSION_SKILLS[info.get("world_version", 1)]:
        a = ev.get(skill, {})
        b = cpu.get("heldout_greedy", {}).get(skill, {})
        fmt = lambda r: f"{r['pass@1']:.3f} (n={r['n']})" if r else "-"  # noqa: E731
        lines.append(f"| {skill} | {fmt(a)} | {fmt(b)} |")
    sampled = info.get("heldout_sampled_t1", {})
    if sampled:
        lines += ["", "Sampling at temperature 1 (8 samples per task, on the trained device): "
                  + "; ".join(f"{k}: pass {v['pass@1_t1']:.2f}, {v['mixed_groups']:.0%} of {v['n']} tasks mixed"
                              for k, v in sorted(sampled.items())) + "."]
    for s in cpu.get("speed", []):
        lines += ["", f"CPU greedy generation ({cpu.get('torch', '')}): {s['tokens_per_s']} tokens/s at batch "
                      f"{s['batch']}, {s['new_tokens']} new tokens, {s['threads']} torch thread(s), "
                      f"{s['seconds']} s per batch."]
    if cpu.get("note"):
        lines += ["", cpu["note"]]
    lines += ["", "All numbers, the config and the training log are in `pretrain_tiny.json`.", ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def save(out: str, model, tok, info: dict) -> None:
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, max_shard_size="15MB")
    first = info["args"].get("init_from")
    if first:   # the first stage's tokenizer files, byte for byte (a re-save rewrites defaults)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if os.path.exists(os.path.join(first, name)) and os.path.abspath(first) != os.path.abspath(out):
                shutil.copy(os.path.join(first, name), os.path.join(out, name))
    else:
        tok.save_pretrained(out)
        path = os.path.join(out, "tokenizer_config.json")
        tok_config = json.load(open(path))
        tok_config["tokenizer_class"] = "Qwen2Tokenizer"   # what a real Qwen2 checkpoint declares
        with open(path, "w") as f:
            json.dump(tok_config, f, indent=2)
    info["folder_bytes"] = folder_size(out)
    with open(os.path.join(out, "pretrain_tiny.json"), "w") as f:
        json.dump(info, f, indent=1)
    write_readme(out, info)


def measure(path: str, args: Args) -> dict:
    """Load a built model on CPU, evaluate it on held-out tasks and time generation; update its report."""
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    tasks = heldout_tasks(args, args.n_eval)
    with Sandbox(workers=args.workers) as sandbox:
        greedy = evaluate_greedy(model, tok, tasks, sandbox)
    speed = []   # one torch thread often beats two when the cores are shared with sandbox workers
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        speed.append(generation_speed(model, tok, [t.prompt for t in tasks[::3]], batch=64, new_tokens=64))
    info_path = os.path.join(path, "pretrain_tiny.json")
    info = json.load(open(info_path))
    info["cpu"] = {"heldout_greedy": greedy, "speed": speed, "torch": torch.__version__,
                   "note": f"CPU numbers measured with {os.cpu_count()} cores, load average "
                           f"{os.getloadavg()[0]:.1f} at the end (shared machine: treat speeds as lower bounds)."}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    write_readme(path, info)
    print(json.dumps(info["cpu"], indent=1))
    return info["cpu"]


def parse_args(argv=None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in fields(Args):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args(argv)))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.measure:
        measure(args.measure, args)
        return
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    random.seed(args.seed)
    t0 = time.time()
    tok, data, n_corpus = build_data(args)
    lengths = sorted(len(ids) for ids, _, _ in data)
    print(f"corpus {n_corpus} texts ({len(data)} kept), median {lengths[len(lengths) // 2]} tokens, "
          f"max {lengths[-1]}, built in {time.time() - t0:.0f}s", flush=True)
    model = AutoModelForCausalLM.from_pretrained(args.init_from) if args.init_from else make_model(args, tok)
    n_params = sum(p.numel() for p in model.parameters())
    calib = [t for skill in skills_of(args) for t in generate(world_config(args), skill, "train", args.n_calib)]
    t1 = time.time()
    with Sandbox(workers=args.workers) as sandbox:
        best, log = train(args, model, tok, data, calib, sandbox, device)
        train_minutes = round((time.time() - t1) / 60, 2)
        model.load_state_dict(best)
        heldout = heldout_tasks(args, args.n_eval)
        greedy = evaluate_greedy(model, tok, heldout, sandbox, 128)
        sampled = evaluate_sampled(model, tok, heldout[:: max(1, args.n_eval // 32)], sandbox, k=8, batch_size=256)
    model.to("cpu")
    kept = [e for e in log if e.get("kept")][-1]
    info = {
        "command": "python scripts/pretrain_tiny.py " + " ".join(
            f"--{k} {shlex.quote('PREVIOUS_STAGE_DIR' if k == 'init_from' else str(v))}"
            for k, v in asdict(args).items() if k not in ("out", "data_cache", "workers")
            and v != getattr(Args, k, None)),
        "args": asdict(args), "parameters": n_params, "vocab_size": len(tok),
        "config_summary": f"hidden {args.hidden}, {args.layers} layers, {args.heads} heads "
                          f"({args.kv_heads} kv), MLP {args.intermediate}, tied embeddings",
        "wrong": {s: getattr(args, f"wrong_{s}") for s in skills_of(args)},
        "habit_gen": args.habit_gen,
        "habits": {s: getattr(args, f"habit_{s}") for s in skills_of(args) if getattr(args, f"habit_{s}")},
        "world_version": args.world_version,
        "corpus_texts": len(data), "corpus_median_tokens": lengths[len(lengths) // 2],
        "kept_step": kept["step"], "kept_calib_pass@1": kept["calib_pass@1"],
        "kept_calib_habit_share": kept.get("calib_habit_share", {}),
        "heldout_greedy": greedy, "heldout_sampled_t1": sampled,
        "train_device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "train_minutes": train_minutes, "torch": torch.__version__, "log": log,
    }
    if args.init_from:   # the first stage's record travels with the second
        first = json.load(open(os.path.join(args.init_from, "pretrain_tiny.json")))
        info["stage1"] = {k: first.get(k) for k in ("command", "train_device", "train_minutes", "kept_step",
                                                     "heldout_greedy", "corpus_texts", "wrong", "habit_gen")}
        if first.get("stage1"):   # the stages before it, oldest first
            info["stages"] = first.get("stages", [first["stage1"]]) + [info["stage1"]]
    save(args.out, model, tok, info)
    print(json.dumps({k: info[k] for k in ("parameters", "kept_step", "heldout_greedy", "heldout_sampled_t1",
                                           "folder_bytes", "train_minutes")}, indent=1), flush=True)


if __name__ == "__main__":
    main()
