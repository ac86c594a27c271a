"""The generic model path on random-initialised tiny Qwen2, Llama and GPT-2 models saved to disk:
LoRA attach, generate, log-probs, reference = adapter disabled, one optimizer step."""

from __future__ import annotations

import pytest
import torch

from retainrl.policy.model import ModelConfig, load_policy, token_logprobs
from retainrl.policy.rollout import SamplingConfig, _shares_prompts, completion_logprobs, completion_mask_from, generate

from tests.tiny_models import make_tiny


@pytest.fixture(scope="module", params=["qwen2", "llama", "gpt2"])
def model_dir(request, tmp_path_factory):
    return make_tiny(request.param, tmp_path_factory.mktemp(request.param))


def test_generic_model_path(model_dir):
    policy = load_policy(ModelConfig(name_or_path=model_dir, lora_r=4, lora_alpha=8, value_head=True))
    trainable = policy.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    n_base = sum(p.numel() for p in policy.model.parameters() if not p.requires_grad)
    assert sum(p.numel() for p in trainable) < n_base  # only adapter (+ value head) trains

    r = generate(policy, ["def f(x):", "assert"], n=3, cfg=SamplingConfig(max_new_tokens=8), seed=0)
    assert r.completion_ids.shape[0] == 6 and r.completion_ids.shape[1] <= 8 and len(r.texts) == 6
    assert r.task_index == [0, 0, 0, 1, 1, 1]

    logprobs, values, _ = completion_logprobs(policy, r, with_values=True)
    assert logprobs.shape == r.completion_ids.shape and values.shape == logprobs.shape
    assert torch.all(logprobs <= 0)
    with torch.no_grad(), policy.reference():
        ref, _, _ = completion_logprobs(policy, r)
    # LoRA B starts at zero: the adapter policy equals the reference at initialisation
    assert torch.allclose(ref, logprobs.detach(), atol=1e-5)

    before = {n: p.detach().clone() for n, p in policy.named_trainable().items()}
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    loss = -(logprobs * r.completion_mask).sum() / r.completion_mask.sum() + values.pow(2).mean()
    loss.backward()
    opt.step()
    changed = [n for n, p in policy.named_trainable().items() if not torch.equal(p.detach(), before[n])]
    assert changed, "no trainable parameter moved"
    with torch.no_grad():
        after, _, _ = completion_logprobs(policy, r)
        with policy.reference():
            ref_after, _, _ = completion_logprobs(policy, r)
    assert torch.allclose(ref_after, ref, atol=1e-5)  # the reference never moves
    assert not torch.allclose(after, ref, atol=1e-6)  # the policy did


def test_generate_is_deterministic_for_a_seed(model_dir):
    policy = load_policy(ModelConfig(name_or_path=model_dir, lora_r=4))
    cfg = SamplingConfig(max_new_tokens=6)
    a = generate(policy, ["def"], n=4, cfg=cfg, seed=123)
    b = generate(policy, ["def"], n=4, cfg=cfg, seed=123)
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_completion_mask_hand_computed():
    ids = torch.tensor([[5, 6, 0, 1, 1], [5, 0, 0, 1, 1], [5, 6, 7, 8, 9]])
    assert completion_mask_from(ids, 0).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_token_logprobs_hand_computed():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    lp = token_logprobs(logits, torch.tensor([[0, 2]]))
    assert torch.allclose(lp, torch.log(torch.tensor([[0.5, 0.8]])))


def test_decode_loop_greedy_equals_hf_generate_on_the_bundled_model():
    from retainrl.data.world import WorldConfig, make_world

    policy = load_policy(ModelConfig())
    world = make_world(WorldConfig(n_train=0, n_heldout=6))
    prompts = [t.prompt for s in world for t in world[s]["heldout"]]
    hf = generate(policy, prompts, 1, SamplingConfig(max_new_tokens=48, backend="hf"), greedy=True)
    loop = generate(policy, prompts, 1, SamplingConfig(max_new_tokens=48, backend="loop"), greedy=True)
    assert hf.texts == loop.texts
    assert torch.equal(hf.completion_mask.sum(-1), loop.completion_mask.sum(-1))
    sampled = generate(policy, prompts[:2], 4, SamplingConfig(max_new_tokens=16, backend="loop", top_p=0.9), seed=3)
    again = generate(policy, prompts[:2], 4, SamplingConfig(max_new_tokens=16, backend="loop", top_p=0.9), seed=3)
    assert torch.equal(sampled.completion_ids, again.completion_ids)


def test_logprobs_follow_the_sampling_temperature(model_dir):
    """A rollout sampled at temperature T is scored with softmax(logits / T): the distribution
    that was actually sampled from (greedy rows: T = 1)."""
    policy = load_policy(ModelConfig(name_or_path=model_dir, lora_r=4, lora_alpha=8))
    r = generate(policy, ["def f(x):"], n=2, cfg=SamplingConfig(max_new_tokens=6, temperature=0.5), seed=0)
    assert r.temperature == 0.5 and r.select([1]).temperature == 0.5
    with torch.no_grad():
        lp, _, _ = completion_logprobs(policy, r)
        ids, mask = r.full()
        logits, _ = policy.forward(ids, mask)
        P = r.prompt_ids.shape[1]
        by_hand = torch.log_softmax(logits[:, P - 1:-1].float() / 0.5, -1).gather(-1, ids[:, P:, None]).squeeze(-1)
    assert torch.allclose(lp, by_hand, atol=1e-5)
    greedy = generate(policy, ["def f(x):"], n=1, cfg=SamplingConfig(max_new_tokens=6, temperature=0.5), greedy=True)
    assert greedy.temperature == 1.0


def test_prefix_sharing_gives_the_full_row_logprobs_values_and_gradients(model_dir):
    """completion_logprobs with the prompt run once per group (its cache repeated) equals the
    full-row forward: log-probs, values and LoRA gradients, with left-padded prompts of
    different lengths and right-padded completions."""
    import dataclasses

    policy = load_policy(ModelConfig(name_or_path=model_dir, lora_r=4, lora_alpha=8, value_head=True))
    with torch.no_grad():  # a non-zero LoRA B, so the adapter changes the prompt's keys and values
        for n, p in policy.named_trainable().items():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    r = generate(policy, ["def f(x):", "assert g(1) ==", "x"], n=3, cfg=SamplingConfig(max_new_tokens=7), seed=1)
    assert _shares_prompts(r) and r.prompt_mask[:, 0].float().mean() < 1  # grouped, some left padding

    def run(sharing: bool):
        policy.config = dataclasses.replace(policy.config, prefix_sharing=sharing)
        for p in policy.trainable_parameters():
            p.grad = None
        lp, values, _ = completion_logprobs(policy, r, with_values=True)
        m = r.completion_mask
        ((lp * m).sum() + (values * m).pow(2).sum()).backward()
        return lp.detach(), values.detach(), [p.grad.clone() for p in policy.trainable_parameters()]

    lp_full, v_full, g_full = run(False)
    lp_shared, v_shared, g_shared = run(True)
    m = r.completion_mask.bool()
    assert torch.allclose(lp_shared[m], lp_full[m], atol=1e-4), (lp_shared[m] - lp_full[m]).abs().max()
    assert torch.allclose(v_shared[m], v_full[m], atol=1e-4)
    for a, b in zip(g_shared, g_full):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), (a - b).abs().max()
