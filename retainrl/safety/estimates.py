"""Gradient estimates of protected skills' RLVR objectives, on the LoRA parameters only.

Memory mode (`SkillMemory`): a small fixed set of a skill's training prompts with stored
rollouts (completion tokens, behaviour log-probs, group-normalised advantages). Every
`refresh_every` steps the stored rollouts are regenerated with the current policy and
re-verified; in between they are stale and the surrogate is importance-corrected:

    J_s(theta) = token_mean( min(exp(logp_theta - logp_behaviour), c) * A )      (per token)

whose gradient at theta = behaviour is the usual policy gradient sum A * grad log p. One
extra forward+backward per protected skill per step, over `batch_prompts * samples` rows.
Fresh mode is memory mode with refresh_every = 1 (every step new rollouts, ratio = 1).

Answer-likelihood mode (`AnswerMemory`, the quantity of the per-prompt constraints): a fixed
set of a skill's training prompts, each with up to `samples` verified-correct answers of the
policy (refreshed every `refresh_every` steps from the current policy's passing samples, or with
refresh_every = 0 once per phase, when the protected set changes; a prompt with no passing sample in
a refresh keeps its previous answers). Per prompt p

    J_p(theta) = mean over stored answers a of  token_mean_t log p_theta(a_t | p, a_<t)   (T = 1)

It does not saturate: unlike the GRPO surrogate (zero when a group's rewards are all equal)
its gradient is non-zero at pass rate 1, and between refreshes it is a deterministic function
of theta (no sampling noise). `per_prompt_values_and_grads` gives J (P,) and the P per-prompt
gradients (P, d) from one batched pass (a forward per bucket of rows, `pack_rows`) and ONE backward
of sum_p J_p: every row belongs to one prompt, so a prompt's gradient is the sum of its rows' gradients, and for a weight W of a
linear layer (LoRA's A and B are such layers) a row's gradient is sum_t dout_t x_t^T, formed
from the layer's input x and output gradient dout captured by hooks (the per-example gradient
identity of Goodfellow 2015 / Opacus, summed per prompt). When a trainable tensor is not a
hookable linear weight, P backward passes through the same graph instead (measured on the
bundled model, 12 prompts x 4 answers x 48 tokens, one CPU thread: loop 5.9 s, autograd's
vmap over the P cotangents 10.2 s, one plain backward 0.9 s).

Cost: the pass costs what its tokens cost, padding included, so the batch holds only what changes
J. Repeated answers of one prompt are one row weighted by their count (`distinct_rows`; J_p is then a
weighted mean, the same number), every row is its real prompt and completion tokens side by side,
right-padded, in buckets of similar length (`pack_rows`; positions come from the attention mask, so
the log-probs are those of the stored layout), and every protected skill's prompts go into one pass
(`values_and_grads_many`, `values_many`). On a trained run's memory (2026-12-01, session 7: 10 + 7
prompts, 43 stored answers of widths 96 + 64) the first and last took the rows from 2.0 s to 0.77 s;
packing (2026-12-02, session 10) takes the default's 16-prompt pass from 2,414 token positions (56%
real) to about the real tokens.
"""

from __future__ import annotations

import dataclasses
import random

import torch

from retainrl.parallel import all_gather_objects, all_sum, is_active, my_share
from retainrl.policy.model import token_logprobs
from retainrl.policy.rollout import Rollout, SamplingConfig, completion_logprobs, generate
from retainrl.rl.advantages import grpo_advantages
from retainrl.rl.losses import aggregate
from retainrl.verify.checks import verify_many


# Each answer row costs what its tokens cost, padding included, and each forward + backward call
# about as much as this many tokens besides (measured on the bundled model, 2 CPU threads, 2026-12-02
# session 10: ~0.17 ms a token, ~15 ms a call; docs/LOG.md). `pack_rows` opens a new bucket only where
# it saves more padding than that.
BUCKET_OVERHEAD_TOKENS = 96


def bucket_sizes(lengths: list[int], overhead: int = BUCKET_OVERHEAD_TOKENS) -> list[int]:
    """Split rows of `lengths` (sorted longest first) into consecutive buckets, one forward each,
    minimising sum over buckets of (rows x the bucket's longest row) + overhead x (number of buckets):
    the padded tokens plus a per-call cost. Exact (dynamic programme over the split points, O(N^2)).
    Returns the bucket sizes in order (they sum to len(lengths))."""
    if any(a < b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("bucket_sizes: lengths must be sorted longest first")
    n = len(lengths)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):            # best[j]: the cheapest split of the first j rows
        for i in range(j):               # the last bucket is rows i..j-1, as wide as row i
            c = best[i] + (j - i) * lengths[i] + overhead
            if c < best[j]:
                best[j], cut[j] = c, i
    sizes, j = [], n
    while j > 0:
        sizes.append(j - cut[j])
        j = cut[j]
    return sizes[::-1]


@dataclasses.dataclass
class PackedRows:
    """Answer rows laid out for the policy: each row's real prompt and completion tokens side by
    side (every padding position of the stored rollout dropped), right-padded with id 0 (mask 0),
    rows sorted longest first into buckets of similar length (`bucket_sizes`), one forward each.

    buckets: per bucket (ids (n_b, L_b) long, mask (n_b, L_b) long, target (n_b, L_b) bool: the
    completion tokens, each predicted by the position before it); order (N,) long: the input row
    of each packed row, bucket after bucket."""
    buckets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    order: torch.Tensor


def pack_rows(parts: list[Rollout], overhead: int | None = None) -> PackedRows:
    """The rows of `parts` (in order: part 0's rows, then part 1's, ...) packed (`PackedRows`);
    overhead: bucket_sizes' per-call cost in tokens (None: BUCKET_OVERHEAD_TOKENS).

    Positions come from the attention mask (`Policy.forward`) and a causal model never attends to
    a masked position, so every completion log-prob is the one of the stored rollout's own layout;
    a stored answer keeps the widths of the refresh batch it was sampled in (the widest prompt,
    max_new_tokens), so on the bundled model's memories about 45% of such a layout is padding."""
    seqs, n_prompt = [], []
    for r in parts:
        for i in range(r.prompt_ids.shape[0]):
            p = r.prompt_ids[i][r.prompt_mask[i].bool()]
            if p.numel() == 0:
                raise ValueError("pack_rows: an answer row with an empty prompt (nothing predicts its first token)")
            seqs.append(torch.cat([p, r.completion_ids[i][r.completion_mask[i].bool()]]))
            n_prompt.append(p.numel())
    lengths = torch.tensor([s.numel() for s in seqs], dtype=torch.long)
    order = torch.sort(lengths, descending=True, stable=True).indices
    buckets, at = [], 0
    for n in bucket_sizes(lengths[order].tolist(), BUCKET_OVERHEAD_TOKENS if overhead is None else overhead):
        rows = order[at:at + n].tolist()
        at += n
        L = int(lengths[rows[0]])
        ids = torch.zeros(n, L, dtype=torch.long)
        mask = torch.zeros(n, L, dtype=torch.long)
        target = torch.zeros(n, L, dtype=torch.bool)
        for k, i in enumerate(rows):
            m = seqs[i].numel()
            ids[k, :m], mask[k, :m] = seqs[i], 1
            target[k, n_prompt[i]:m] = True
        buckets.append((ids, mask, target))
    return PackedRows(buckets, order)


def packed_logliks(policy, packed: PackedRows) -> torch.Tensor:
    """(N,) with graph: per packed row (in `packed.order`'s order) the token-mean log-likelihood of
    its completion at temperature 1 (0 for an empty completion). One forward per bucket."""
    out = []
    for ids, mask, target in packed.buckets:
        ids, mask, target = ids.to(policy.device), mask.to(policy.device), target.to(policy.device)
        logits, _ = policy.forward(ids, mask)
        # only the completion positions (a real model's vocabulary makes a float copy over the prompt costly)
        sel = target[:, 1:]                                                    # (n_b, L_b - 1)
        lp = token_logprobs(logits[:, :-1][sel], ids[:, 1:][sel])            # (M,)
        row = sel.nonzero()[:, 0]
        total = torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, row, lp)
        out.append(total / sel.sum(-1).clamp(min=1).to(lp.dtype))
    return torch.cat(out) if out else torch.zeros(0)


def distinct_rows(answers: list[Rollout]) -> tuple[list[Rollout], torch.Tensor, torch.Tensor]:
    """Each prompt's stored answers with identical completions merged into one row.

    Returns (P rollouts of distinct rows, owner (N,) long: the prompt of each row, weight (N,):
    how many stored answers the row stands for). A stored answer set holds repeats: the passing
    samples of a peaked policy often coincide (2026-12-01: 41-45% of the answers in the tuning
    runs' final checkpoints were distinct), and the weighted mean over distinct rows is exactly
    the mean over all answers, with fewer rows to run forward and backward."""
    parts, owner, weight = [], [], []
    for p, a in enumerate(answers):
        first: dict[tuple, int] = {}
        rows, count = [], []
        for i in range(a.completion_ids.shape[0]):
            key = tuple(a.completion_ids[i][a.completion_mask[i].bool()].tolist())
            if key in first:
                count[first[key]] += 1
            else:
                first[key] = len(rows)
                rows.append(i)
                count.append(1)
        parts.append(a if len(rows) == a.completion_ids.shape[0] else a.select(rows))
        owner += [p] * len(rows)
        weight += count
    return parts, torch.tensor(owner, dtype=torch.long), torch.tensor(weight, dtype=torch.float32)


def _answer_loglik(policy, answers: list[Rollout]):
    """(J (P,) with graph, owner (N,) and weight (N,): the prompt of each packed row and how many
    stored answers it stands for, in the packed order, PackedRows of the pass)."""
    parts, owner, weight = distinct_rows(answers)
    packed = pack_rows(parts)
    per_row = packed_logliks(policy, packed)                                   # (N,)
    owner, weight = owner[packed.order].to(per_row.device), weight[packed.order].to(per_row.device, per_row.dtype)
    total = torch.zeros(len(answers), dtype=per_row.dtype, device=per_row.device)
    J = total.index_add(0, owner, per_row * weight) / total.index_add(0, owner, weight)
    return J, owner, weight, packed


def answer_loglik(policy, answers: list[Rollout]) -> torch.Tensor:
    """J (P,): per prompt, the mean over its answers of the token-mean log-likelihood (with graph).

    answers: P rollouts (each: one prompt's stored answers, >= 1 row); one batched pass (a forward per bucket) over
    the distinct answers (`distinct_rows`), weighted by their counts."""
    return _answer_loglik(policy, answers)[0]


def _linear_modules(model, params) -> list | None:
    """The nn.Linear owning each parameter as its weight (no trainable bias), or None."""
    if model is None:
        return None
    owner = {id(m.weight): m for m in model.modules() if isinstance(m, torch.nn.Linear)}
    mods = [owner.get(id(p)) for p in params]
    if any(m is None or (m.bias is not None and m.bias.requires_grad) for m in mods):
        return None
    return mods


class LayerCalls:
    """Per forward call, the inputs of some layers and the gradients at the outputs of others
    (`inputs_of`, `outputs_of`: key -> module), recorded while the hooks are on (a `with` block)
    and only until `stop()`: gradient checkpointing runs the hooks again inside the backward.

    x[key]: the inputs, one per call; dy[key]: call -> the output's gradient, filled by the
    backward; `complete(n)`: every module ran exactly n times with outputs that carry a gradient
    (inside reentrant checkpointing they do not), so calls pair up."""

    def __init__(self, inputs_of: dict, outputs_of: dict):
        self.inputs_of, self.outputs_of = inputs_of, outputs_of
        self.x = {k: [] for k in inputs_of}
        self.dy: dict = {k: {} for k in outputs_of}
        self.calls = {k: 0 for k in outputs_of}
        self.recording, self.pairable, self.handles = True, True, []

    def _on_input(self, key, inputs):
        if self.recording:
            self.x[key].append(inputs[0].detach())

    def _on_output(self, key, output):
        if not self.recording:
            return
        if not output.requires_grad:
            self.pairable = False
            return
        i = self.calls[key]
        self.calls[key] += 1
        output.register_hook(lambda g: self.dy[key].__setitem__(i, g.detach()))

    def __enter__(self) -> "LayerCalls":
        for k, m in self.inputs_of.items():
            self.handles.append(m.register_forward_hook(lambda mod, i, o, k=k: self._on_input(k, i)))
        for k, m in self.outputs_of.items():
            self.handles.append(m.register_forward_hook(lambda mod, i, o, k=k: self._on_output(k, o)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def stop(self) -> None:
        self.recording = False

    def complete(self, n: int) -> bool:
        return self.pairable and all(len(v) == n for v in self.x.values()) and all(c == n for c in self.calls.values())


def _per_prompt_by_hooks(policy, params, answers: list[Rollout], mods: list):
    """J (P,) and per-prompt gradients from one forward per bucket and one backward (linear
    weights only)."""
    unique = {id(m): m for m in mods}
    with LayerCalls(unique, unique) as rec:
        J, owner, _, packed = _answer_loglik(policy, answers)
        rec.stop()
        # every layer once per forward call, or no pairing of inputs with output gradients: the loop path
        if not rec.complete(len(packed.buckets)):
            return J, None
        J.sum().backward(inputs=list(params))
    seen, grads_out = rec.x, rec.dy
    out = []
    for m in mods:
        per_row = []
        for i, x in enumerate(seen[id(m)]):
            B = x.shape[0]
            dy = grads_out[id(m)].get(i)
            if dy is None:   # no gradient reached this layer in this call: zeros
                per_row.append(torch.zeros(B, *m.weight.shape, device=m.weight.device))
                continue
            x, dy = x.reshape(B, -1, x.shape[-1]).float(), dy.reshape(B, -1, dy.shape[-1]).float()
            per_row.append(torch.einsum("bto,bti->boi", dy, x))          # (B, out, in): row gradients
        rows = torch.cat(per_row)
        per_prompt = torch.zeros(len(answers), *rows.shape[1:], device=rows.device)
        per_prompt.index_add_(0, owner.to(rows.device), rows)
        out.append(per_prompt.reshape(len(answers), -1))
    return J, out


def per_prompt_values_and_grads(policy, params, answers: list[Rollout], method: str = "auto"):
    """(J (P,) float64 detached, gradients (P, d) float32 of J_p w.r.t. the flat `params`).

    method "auto": the one-backward hook path when every parameter is a linear layer's weight
    (LoRA), else "loop" (P backward passes through one forward's graph). The flat layout is
    `parallel.flat_grad`'s (params in order); `.grad` of `params` is left as it was."""
    if method not in ("auto", "loop"):
        raise ValueError(f"unknown per-prompt gradient method {method!r}; expected 'auto' or 'loop'")
    mods = _linear_modules(getattr(policy, "model", None), params) if method == "auto" else None
    grads = None
    if mods is not None:
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            J, grads = _per_prompt_by_hooks(policy, params, answers, mods)
        finally:
            for p, g in zip(params, saved):
                p.grad = g
    if grads is None:
        J = answer_loglik(policy, answers)
        per = [torch.autograd.grad(J[i], params, retain_graph=True, allow_unused=True, materialize_grads=True)
               for i in range(J.shape[0])]
        grads = [torch.stack([g[k] for g in per]).reshape(J.shape[0], -1) for k in range(len(params))]
    flat = torch.cat([g.to(torch.float32) for g in grads], 1)
    return J.detach().double().cpu(), flat


def _own_evaluation(mem, name: str) -> bool:
    """Whether `mem` evaluates J with AnswerMemory's own `name` method (answers through the policy);
    a memory class that defines its own (a stand-in for J) is evaluated one memory at a time."""
    return getattr(type(mem), name) is getattr(AnswerMemory, name)


def values_many(policy, picks: list[tuple["AnswerMemory", list[int]]]) -> list[torch.Tensor]:
    """J_p (len(prompts),) float64, no graph, per (memory, prompts) pick: one batched pass (a forward per bucket) over
    every pick whose memory uses AnswerMemory's evaluation."""
    out: list[torch.Tensor | None] = [None] * len(picks)
    batch = [i for i, (m, prompts) in enumerate(picks) if prompts and _own_evaluation(m, "values")]
    for i, (m, prompts) in enumerate(picks):
        if i not in batch:
            out[i] = m.values(policy, prompts) if prompts else torch.zeros(0, dtype=torch.float64)
    if batch:
        with torch.no_grad():
            J = answer_loglik(policy, [picks[i][0].answers[p] for i in batch for p in picks[i][1]]).double().cpu()
        for i, v in zip(batch, torch.split(J, [len(picks[i][1]) for i in batch])):
            out[i] = v
    return out


def values_and_grads_many(policy, params, picks: list[tuple["AnswerMemory", list[int]]], method: str = "auto"):
    """(J (P_i,) float64, gradients (P_i, d) float32) per (memory, prompts) pick, from ONE batched
    forward and backward (`per_prompt_values_and_grads`) over every pick whose memory uses
    AnswerMemory's evaluation: several protected skills cost one pass, not one each."""
    d = sum(q.numel() for q in params)
    out: list[tuple | None] = [None] * len(picks)
    batch = [i for i, (m, prompts) in enumerate(picks) if prompts and _own_evaluation(m, "values_and_grads")]
    for i, (m, prompts) in enumerate(picks):
        if i not in batch:
            out[i] = m.values_and_grads(policy, params, prompts, method) if prompts else \
                (torch.zeros(0, dtype=torch.float64), torch.zeros(0, d, device=params[0].device))
    if batch:
        J, G = per_prompt_values_and_grads(policy, params,
                                           [picks[i][0].answers[p] for i in batch for p in picks[i][1]], method)
        sizes = [len(picks[i][1]) for i in batch]
        for i, j, g in zip(batch, torch.split(J, sizes), torch.split(G, sizes)):
            out[i] = (j, g)
    return out


class AnswerMemory:
    """Fixed prompts of one protected skill (constraint prompts, then held-out diagnostic
    prompts) with the policy's verified-correct answers to each."""

    def __init__(self, skill: str, tasks: list, n_prompts: int, n_heldout: int, samples: int, seed: int):
        rng = random.Random(seed)
        picked = rng.sample(tasks, min(n_prompts + n_heldout, len(tasks)))
        n_held = min(n_heldout, max(0, len(picked) - 1))  # at least one constraint prompt
        self.skill, self.samples = skill, samples
        self.tasks, self.heldout = picked[:len(picked) - n_held], picked[len(picked) - n_held:]
        self.answers: list[Rollout | None] = [None] * len(picked)  # constraint prompts, then held-out
        self.cursor = 0
        self.refreshed_at = -1
        self.pass_rate = float("nan")

    @torch.no_grad()
    def refresh(self, policy, sandbox, sampling: SamplingConfig, seed: int, step: int) -> None:
        """New answers from the policy's passing samples (`samples` per prompt). Under
        torch.distributed the prompts are split over the ranks (parallel.my_share; the seed is
        offset by the rank) and the new answers gathered, so every rank ends with the same memory
        at 1/W of the generation and verification each."""
        every = self.tasks + self.heldout
        split = is_active()    # the same on every rank: every rank joins the gather below
        mine = my_share(len(every))
        found: dict[int, Rollout] = {}
        n_passed = 0
        if mine:
            r = generate(policy, [every[i].prompt for i in mine], n=self.samples, cfg=sampling,
                         seed=seed + 7919 * mine[0] if split else seed)
            verdicts = verify_many(sandbox, [(every[mine[i]], text) for i, text in zip(r.task_index, r.texts)])
            passed = [v.reward("binary") >= 1.0 for v in verdicts]
            n_passed = sum(passed)
            for k, p in enumerate(mine):
                rows = [j for j, i in enumerate(r.task_index) if i == k and passed[j]]
                if rows:  # else: keep the previous answers (a prompt being forgotten keeps its row)
                    ans = r.select(rows)
                    ans.group_size, ans.temperature, ans.task_index = 1, 1.0, [p] * len(rows)
                    found[p] = ans
        if split:   # several ranks: every rank's new answers, on the CPU
            cpu = {p: dataclasses.replace(a, prompt_ids=a.prompt_ids.cpu(), prompt_mask=a.prompt_mask.cpu(),
                                          completion_ids=a.completion_ids.cpu(),
                                          completion_mask=a.completion_mask.cpu(), old_logprobs=None, rewards=None)
                   for p, a in found.items()}
            found = {p: a for part in all_gather_objects(cpu) for p, a in part.items()}
            n_passed = all_sum([float(n_passed)])[0]
        for p, ans in found.items():
            self.answers[p] = ans
        self.refreshed_at = step
        self.pass_rate = n_passed / max(1, len(every) * self.samples)

    def next_prompts(self, k: int) -> list[int]:
        """The next k constraint prompts that have answers (rotating through the memory)."""
        have = [p for p in range(len(self.tasks)) if self.answers[p] is not None]
        if not have:
            return []
        k = min(k, len(have))
        start = self.cursor % len(have)
        self.cursor = (self.cursor + k) % len(have)
        return [have[(start + i) % len(have)] for i in range(k)]

    def heldout_prompts(self) -> list[int]:
        n = len(self.tasks)
        return [n + i for i in range(len(self.heldout)) if self.answers[n + i] is not None]

    def values(self, policy, prompts: list[int]) -> torch.Tensor:
        """J_p (len(prompts),) float64, no graph (several memories at once: `values_many`)."""
        if not prompts:
            return torch.zeros(0, dtype=torch.float64)
        with torch.no_grad():
            return answer_loglik(policy, [self.answers[p] for p in prompts]).double().cpu()

    def values_and_grads(self, policy, params, prompts: list[int], method: str = "auto"):
        """(J_p, per-prompt gradients) of `prompts` (several memories at once: `values_and_grads_many`)."""
        return per_prompt_values_and_grads(policy, params, [self.answers[p] for p in prompts], method)


class SkillMemory:
    """Stored prompts + rollouts of one protected skill."""

    def __init__(self, skill: str, tasks: list, n_prompts: int, samples: int, seed: int):
        rng = random.Random(seed)
        self.skill = skill
        self.tasks = rng.sample(tasks, min(n_prompts, len(tasks)))
        self.samples = samples
        self.rollout: Rollout | None = None
        self.advantages: torch.Tensor | None = None
        self.behaviour: torch.Tensor | None = None
        self.cursor = 0
        self.refreshed_at = -1
        self.mean_reward = float("nan")

    @torch.no_grad()
    def refresh(self, policy, sandbox, sampling: SamplingConfig, seed: int, step: int) -> None:
        r = generate(policy, [t.prompt for t in self.tasks], n=self.samples, cfg=sampling, seed=seed)
        verdicts = verify_many(sandbox, [(self.tasks[i], text) for i, text in zip(r.task_index, r.texts)])
        rewards = torch.tensor([v.reward("binary") for v in verdicts], dtype=torch.float32)
        self.advantages, _ = grpo_advantages(rewards, self.samples)
        lp, _, _ = completion_logprobs(policy, r)
        self.behaviour = lp.detach()
        r.rewards = rewards
        self.rollout = r
        self.refreshed_at = step
        self.mean_reward = float(rewards.mean())

    def batch_rows(self, batch_prompts: int) -> list[int]:
        """Rows of the next `batch_prompts` prompts (rotating through the buffer)."""
        n = len(self.tasks)
        prompts = [(self.cursor + i) % n for i in range(min(batch_prompts, n))]
        self.cursor = (self.cursor + len(prompts)) % n
        return [p * self.samples + j for p in prompts for j in range(self.samples)]

    def surrogate(self, policy, rows: list[int], is_clip: float) -> torch.Tensor:
        """J_s on the given rows (with gradient).

        Rows of groups whose advantages are all zero add exactly zero to J_s and its gradient,
        so they are not run; the token-mean denominator still counts every given row, so the
        value is the same as over all rows."""
        n_tokens = int(self.rollout.completion_mask[torch.tensor(rows)].sum())
        live = [r for r in rows if bool((self.advantages[(r // self.samples) * self.samples:
                                                         (r // self.samples + 1) * self.samples] != 0).any())]
        if not live:  # no signal in these rows: J_s = 0, no gradient
            return torch.zeros((), requires_grad=torch.is_grad_enabled())
        sub = self.rollout.select(live)
        idx = torch.tensor(live)
        lp, _, _ = completion_logprobs(policy, sub)
        mask = sub.completion_mask.to(lp.device)
        ratio = torch.exp(lp - self.behaviour[idx].to(lp.device)).clamp(max=is_clip)
        adv = self.advantages[idx].to(lp.device)[:, None]
        return aggregate(ratio * adv, mask, "token_mean", num_tokens_global=torch.tensor(max(1, n_tokens)))
