"""One rank of tests/test_integrations_trl.py's 2-rank runs (gloo on CPU).

    python -m torch.distributed.run --nproc_per_node 2 tests/trl_ddp_worker.py trl MODEL_DIR OUT_DIR
    python -m torch.distributed.run --nproc_per_node 2 tests/trl_ddp_worker.py hooks MODEL_DIR OUT_DIR
    python tests/trl_ddp_worker.py hooks MODEL_DIR OUT_DIR          # the same global batch in one process
    python -m torch.distributed.run --nproc_per_node 2 tests/trl_ddp_worker.py fsdp MODEL_DIR OUT_DIR

trl: GRPOTrainer (DDP) with the skill-safe callback; writes the final trainable parameters and
the callback's history. hooks: SkillSafeStep around Adam on a fixed global batch split over the
ranks, the target gradient averaged by torch DDP (one process: the whole batch), so a 2-rank
run and a one-process run can be compared step by step. fsdp: the same with the model sharded
by FSDP2's fully_shard (each decoder layer and the causal LM; LoRA parameters become DTensors);
it writes the full (gathered) parameters and steps.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_integrations_trl import B_TASKS, MEMORY, Recorder, make_trainer  # noqa: E402


def trl_run(model_dir: str, out_dir: str) -> None:
    from retainrl.integrations.trl import attach_skill_safety
    from retainrl.parallel import flat_params
    from retainrl.verify import Sandbox

    rank = int(os.environ["RANK"])
    with Sandbox(workers=1) as sb:
        rec = Recorder()
        trainer = make_trainer(model_dir, sb, steps=3, recorder=rec, ddp=True)
        cb = attach_skill_safety(trainer, ["b"], {"b": B_TASKS}, sb, eps=0.0, refresh_every=1, **MEMORY)
        rec.safety = cb
        trainer.train()
    params = flat_params([p for p in trainer.model.parameters() if p.requires_grad])
    torch.save({"params": params, "applied": rec.applied, "rows": rec.rows,
                "world": torch.distributed.get_world_size()}, Path(out_dir) / f"rank{rank}.pt")
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(cb.history))


HOOK_STEPS = 2


def hooks_run(model_dir: str, out_dir: str, shard: bool = False) -> None:
    """The global batch: the 8 rows of skill b's memory (2 prompts x 4 samples, generated once
    with the layer's seed, the same on every rank). Target loss: sum over rows of A_row *
    token-mean log p_row / 8 (it lowers J_b: a conflict the projection must resolve); rank r
    takes rows [r * 8/W, (r + 1) * 8/W) with its loss scaled by W, so DDP's average of .grad is
    the gradient of the one-process loss on all 8 rows."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from retainrl.integrations.step_hooks import SkillSafeStep
    from retainrl.parallel import flat_params
    from retainrl.policy.model import ModelConfig, load_policy, token_logprobs
    from retainrl.policy.rollout import SamplingConfig
    from retainrl.safety.layer import SafetyLayer
    from retainrl.train.config import SafetyConfig
    from retainrl.verify import Sandbox

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    policy = load_policy(ModelConfig(name_or_path=model_dir, device="cpu", lora_r=4, lora_alpha=8,
                                     chat_template="off"))
    params = policy.trainable_parameters()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: give the adapter some weight so the rows are non-trivial
        for p in params:
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    if shard:
        from torch.distributed.fsdp import fully_shard

        lm = policy.model.base_model.model  # the causal LM inside the PeftModel: the root that generate() calls
        for block in lm.model.layers:
            fully_shard(block)
        fully_shard(lm)
        params = policy.trainable_parameters()  # now DTensors, each rank holding one shard

    def full():  # the global flat parameters (gathered from the shards)
        return flat_params([p.full_tensor() if shard else p for p in params])

    cfg = SafetyConfig(enabled=True, constraint="skill_mean", budget="step", eps=0.0, eps_mode="absolute",
                       refresh_every=100, **MEMORY)
    # seed 5: both memory prompts get mixed rewards on this tiny model (non-zero advantages)
    layer = SafetyLayer(cfg, {"b": B_TASKS}, SamplingConfig(max_new_tokens=8), seed=5)
    model = DistributedDataParallel(policy.model) if world > 1 and not shard else policy.model
    opt = torch.optim.Adam(params, lr=5e-2)
    out = {"world": world, "applied": [], "proposed": [], "rows": [], "metrics": []}
    with Sandbox(workers=1) as sb:
        mem = layer.refresh_if_due(policy, sb, 0, "b")          # step 0's memory, before the target loss
        batch, adv = mem.rollout, mem.advantages
        n = batch.prompt_ids.shape[0]
        mine = list(range(rank * n // world, (rank + 1) * n // world))
        hooks = SkillSafeStep(layer, ["b"], sb, policy)
        for step in range(HOOK_STEPS):
            opt.zero_grad(set_to_none=True)
            part = batch.select(mine)
            ids, mask = part.full()
            P = part.prompt_ids.shape[1]
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, P - 1:-1]
            lp = token_logprobs(logits, ids[:, P:])
            cmask = part.completion_mask.float()
            per_row = (lp * cmask).sum(-1) / cmask.sum(-1).clamp(min=1)
            loss = (adv[mine] * per_row).sum() * world / n
            loss.backward()                                         # DDP / FSDP: .grad = mean over ranks
            start = full()
            hooks.before(params, step)
            opt.step()
            proposed = full() - start
            m = hooks.after(params)
            out["applied"].append(full() - start)
            out["proposed"].append(proposed)
            out["rows"].append(hooks.last_rows.clone())             # sharded: this rank's columns
            out["metrics"].append(m)
    out["params"] = full()
    torch.save(out, Path(out_dir) / f"{'fsdp' if shard else 'hooks'}_w{world}_rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode = sys.argv[1]
    {"trl": trl_run, "hooks": hooks_run, "fsdp": lambda m, o: hooks_run(m, o, shard=True)}[mode](*sys.argv[2:4])
