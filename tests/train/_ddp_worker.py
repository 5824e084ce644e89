"""Entry point of one rank in the DDP test (spawned; must be importable by the child process)."""
import os

import torch

from covseg_fast.train import Trainer
from covseg_fast.train import distributed as D

from ._tiny import NAME, BlobDataset, tiny_overrides


def run_rank(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = D.init_distributed(backend="gloo", timeout_s=60)
    assert info.world_size == world_size and info.rank == rank
    try:
        # each rank gets its own out_dir so the test can see that only rank 0 writes
        t = Trainer(NAME, {"width": 4}, "refnet", tiny_overrides(epochs=2, seed=7), BlobDataset(11),
                    BlobDataset(5, seed=2, flip=False), os.path.join(out, f"rank{rank}"), device="cpu",
                    progress=False)
        assert t.dist.enabled
        summary = t.fit()
        torch.save({"state_dict": t.model.state_dict(), "summary": summary, "global_step": t.global_step,
                    "history": t.history}, os.path.join(out, f"final{rank}.pt"))
    finally:
        D.cleanup()
