"""Rollouts: n samples per prompt, batched generation with a KV cache, token bookkeeping.

Layout of a Rollout (B = prompts * n, rows grouped by prompt: rows [i*n, (i+1)*n) share prompt i):
  prompt_ids      (B, P)  left-padded prompt tokens;     prompt_mask     (B, P)
  completion_ids  (B, T)  right-padded completion tokens; completion_mask (B, T), 1 up to and
                          including the first EOS (or the last token when the budget ran out)
  old_logprobs    (B, T)  log-probs of the completion tokens under the sampling policy,
                          recomputed with a forward pass (same numerics as the update)
  temperature             the temperature the rows were sampled at (1.0 for greedy rows)
The log-prob of completion token t comes from the logits at position P + t - 1, divided by
the rollout's temperature: the policy that is trained and ratioed is the distribution that was
actually sampled from (softmax(logits / T)), as in TRL and verl. At T = 1 this is the model's
own distribution; at T < 1 RL sharpens the tempered policy the samples came from.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch

from retainrl.policy.model import Policy, token_logprobs

# transformers 5.x renames the cache argument (`cache`) and warns on every forward that passes
# `past_key_values`; the old name works in every version we support, so say it once, not per token.
warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)


@dataclass
class SamplingConfig:
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0 or greedy=True: argmax).",
                                                      "check": lambda v: 0 <= v < float("inf"),
                                                      "must": "be a finite number >= 0 (0: greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass.", "check": lambda v: 0 < v <= 1,
                                                "must": "be in (0, 1]"})
    max_new_tokens: int = field(default=64, metadata={"help": "Completion budget in tokens.",
                                                      "check": lambda v: v >= 1, "must": "be >= 1"})
    stop_strings: list[str] = field(default_factory=list, metadata={"help": "Extra strings that end a completion.",
                                                                    "check": lambda v: all(v), "must": "not hold ''"})
    max_prompt_tokens: int = field(default=512, metadata={"help": "Prompts are left-truncated to this many tokens.",
                                                          "check": lambda v: v >= 1, "must": "be >= 1"})
    backend: Literal["hf", "loop"] = field(default="hf", metadata={
        "help": "hf: transformers' generate; loop: retainrl's KV-cache decode loop with inverse-CDF "
                "sampling (greedy output identical to hf; meant for large vocabularies on CPU, where "
                "torch.multinomial is slow; stop_strings always use hf)."})


@dataclass
class Rollout:
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]
    task_index: list[int]            # which task each row answers
    group_size: int
    old_logprobs: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    gen_seconds: float = 0.0
    verify_seconds: float = 0.0
    verify_cpu_seconds: float = 0.0
    temperature: float = 1.0         # sampling temperature of these rows; log-probs use logits / T

    @property
    def lengths(self) -> torch.Tensor:  # (B,) completion tokens per row (the token cost)
        return self.completion_mask.sum(-1)

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.cat([self.prompt_ids, self.completion_ids], 1),
                torch.cat([self.prompt_mask, self.completion_mask], 1))

    def select(self, rows: list[int]) -> "Rollout":
        idx = torch.tensor(rows, dtype=torch.long)
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        return Rollout(pick(self.prompt_ids), pick(self.prompt_mask), pick(self.completion_ids),
                       pick(self.completion_mask), [self.texts[i] for i in rows], [self.task_index[i] for i in rows],
                       self.group_size, pick(self.old_logprobs), pick(self.rewards),
                       temperature=self.temperature)


def completion_mask_from(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row; all ones when there is none. (B, T)."""
    is_eos = ids == eos_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_eos).long()


def truncate_at_stops(text: str, stops: list[str]) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


@torch.no_grad()
def generate(policy: Policy, prompts: list[str], n: int, cfg: SamplingConfig, greedy: bool = False,
             seed: int | None = None, batch_size: int = 256) -> Rollout:
    """Sample n completions for each prompt (greedy: n must be 1)."""
    tok, model = policy.tokenizer, policy.model
    formatted = [policy.format_prompt(p) for p in prompts]
    enc = tok(formatted, return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_prompt_tokens,
              add_special_tokens=False)
    prompt_ids = enc.input_ids.repeat_interleave(n, 0)
    prompt_mask = enc.attention_mask.repeat_interleave(n, 0)
    if seed is not None:
        torch.manual_seed(seed)
    t0 = time.monotonic()
    pieces = []
    model.eval()
    for s in range(0, prompt_ids.shape[0], batch_size):
        ids, mask = prompt_ids[s:s + batch_size].to(policy.device), prompt_mask[s:s + batch_size].to(policy.device)
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if greedy or cfg.temperature <= 0:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        if cfg.stop_strings:
            kwargs.update(stop_strings=cfg.stop_strings, tokenizer=tok)
        if cfg.backend == "loop" and not cfg.stop_strings:
            pieces.append(decode_loop(policy, ids, mask, cfg, greedy or cfg.temperature <= 0).cpu())
        else:
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            pieces.append(out[:, ids.shape[1]:].cpu())
    width = max(p.shape[1] for p in pieces) if pieces else 0
    completion_ids = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=tok.pad_token_id)
                                for p in pieces]) if pieces else torch.zeros(0, 0, dtype=torch.long)
    completion_mask = completion_mask_from(completion_ids, tok.eos_token_id)
    if completion_ids.shape[1] == 0:
        completion_ids = torch.full((prompt_ids.shape[0], 1), tok.eos_token_id, dtype=torch.long)
        completion_mask = torch.ones_like(completion_ids)
    texts = []
    for row, m in zip(completion_ids, completion_mask):
        text = tok.decode(row[m.bool()], skip_special_tokens=True)
        texts.append(truncate_at_stops(text, cfg.stop_strings))
    task_index = [i for i in range(len(prompts)) for _ in range(n)]
    sampled_at = 1.0 if greedy or cfg.temperature <= 0 else float(cfg.temperature)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts, task_index, n,
                   gen_seconds=time.monotonic() - t0, temperature=sampled_at)


@torch.no_grad()
def decode_loop(policy: Policy, ids: torch.Tensor, mask: torch.Tensor, cfg: SamplingConfig, greedy: bool) -> torch.Tensor:
    """Autoregressive decoding with the model's KV cache: (B, P) left-padded prompts -> (B, T) tokens.

    Same distribution as transformers' sampling (temperature, then nucleus top-p), but a token
    is drawn by inverse-CDF sampling (one uniform per row, searchsorted on the cumulative
    probabilities) instead of torch.multinomial, which costs ~9 ms per step over a vocabulary
    on CPU (benchmarks/rl_step_throughput.py profile). Finished rows emit the pad token.
    Uses the global torch RNG, so a seed set before the call makes it deterministic.
    """
    tok, model = policy.tokenizer, policy.model
    eos, pad = tok.eos_token_id, tok.pad_token_id
    B = ids.shape[0]
    position = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1, :].float()
    next_position = position[:, -1:] + 1
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    tokens = []
    for _ in range(cfg.max_new_tokens):
        if greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / cfg.temperature, dim=-1)
            if cfg.top_p < 1.0:
                sorted_p, order = probs.sort(dim=-1, descending=True)
                keep = (sorted_p.cumsum(-1) - sorted_p) < cfg.top_p  # always keeps the top token
                sorted_p = sorted_p * keep
                cdf = sorted_p.cumsum(-1)
                u = torch.rand(B, 1, device=ids.device) * cdf[:, -1:]
                pick = torch.searchsorted(cdf, u).clamp(max=probs.shape[-1] - 1)
                nxt = order.gather(-1, pick).squeeze(-1)
            else:
                cdf = probs.cumsum(-1)
                u = torch.rand(B, 1, device=ids.device) * cdf[:, -1:]
                nxt = torch.searchsorted(cdf, u).clamp(max=probs.shape[-1] - 1).squeeze(-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        finished |= nxt == eos
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_position,
                    past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1, :].float()
        next_position = next_position + 1
    if not tokens:
        return torch.zeros(B, 0, dtype=ids.dtype, device=ids.device)
    return torch.stack(tokens, dim=1)


def completion_logprobs(policy: Policy, rollout: Rollout, with_values: bool = False, with_logits: bool = False):
    """Log-probs (B, T) of the completion tokens under the current policy at the rollout's
    temperature (logits / T); values (B, T) and the tempered completion logits (B, T, V) on request.

    Rows come in groups of `group_size` that share one prompt, so the prompt is run once per
    group and its key/value cache repeated for the group's completions (prefix sharing): the
    same numbers as running every full row (tests/test_policy.py checks log-probs and
    gradients), for about 1/n of the prompt compute. Gradients flow into the prompt through the
    repeated cache. Rows that are not whole groups of one prompt take the full-row path.
    """
    shared = _shared_prefix_forward(policy, rollout, with_values) \
        if _shares_prompts(rollout) and policy.config.prefix_sharing else None
    if shared is not None:
        comp_logits, values = shared
        ids = rollout.completion_ids.to(policy.device)
    else:
        full_ids, mask = rollout.full()
        full_ids, mask = full_ids.to(policy.device), mask.to(policy.device)
        P = rollout.prompt_ids.shape[1]
        logits, values = policy.forward(full_ids, mask, with_values=with_values)
        comp_logits = logits[:, P - 1:-1]
        values = values[:, P - 1:-1] if values is not None else None
        ids = full_ids[:, P:]
    if rollout.temperature != 1.0:
        comp_logits = comp_logits.float() / rollout.temperature
    logprobs = token_logprobs(comp_logits, ids)
    return logprobs, values, (comp_logits if with_logits else None)


def _shares_prompts(rollout: Rollout) -> bool:
    n, B = rollout.group_size, rollout.prompt_ids.shape[0]
    if n < 2 or B % n or rollout.completion_ids.shape[1] < 1:
        return False
    p = rollout.prompt_ids.view(B // n, n, -1)
    return bool((p == p[:, :1]).all())


def _shared_prefix_forward(policy: Policy, rollout: Rollout, with_values: bool):
    """(logits (B, T, V) predicting each completion token, values (B, T) or None), or None when
    the model does not return a cache object that can be repeated (then the caller runs full rows).

    One forward over the G = B / n distinct prompts with use_cache, the cache repeated n times
    along the batch, then one forward over the (B, T) completions with positions continuing
    each prompt and an attention mask covering prompt + completion.
    """
    n, dev = rollout.group_size, policy.device
    prompt_ids = rollout.prompt_ids[::n].to(dev)                       # (G, P)
    prompt_mask = rollout.prompt_mask[::n].to(dev)
    position = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
    first = policy.model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position, use_cache=True,
                         output_hidden_states=with_values)
    cache = first.past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):  # a legacy tuple cache (older transformers)
        return None
    cache.batch_repeat_interleave(n)
    comp_ids, comp_mask = rollout.completion_ids.to(dev), rollout.completion_mask.to(dev)
    T = comp_ids.shape[1]
    start = prompt_mask.long().sum(-1, keepdim=True).repeat_interleave(n, 0)       # (B, 1) next position
    comp_position = start + torch.arange(T, device=dev)[None, :]
    mask = torch.cat([prompt_mask.repeat_interleave(n, 0), comp_mask], dim=1)
    second = policy.model(input_ids=comp_ids, attention_mask=mask, position_ids=comp_position,
                          past_key_values=cache, use_cache=True, output_hidden_states=with_values)
    # the first completion token is predicted by the prompt's last position
    logits = torch.cat([first.logits[:, -1:].repeat_interleave(n, 0), second.logits[:, :-1]], dim=1)
    values = None
    if with_values:
        hidden = torch.cat([first.hidden_states[-1][:, -1:].repeat_interleave(n, 0),
                            second.hidden_states[-1][:, :-1]], dim=1)
        values = policy.value_head(hidden)
    return logits, values
