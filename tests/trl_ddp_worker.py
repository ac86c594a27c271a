"""One rank of tests/test_integrations_trl.py's 2-rank run: GRPOTrainer (gloo DDP on CPU) with
the skill-safe callback; writes its final trainable parameters and the callback's history.

    python -m torch.distributed.run --nproc_per_node 2 tests/trl_ddp_worker.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_integrations_trl import B_TASKS, MEMORY, Recorder, make_trainer  # noqa: E402


def main(model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
