"""DistributedDataParallel on CPU with gloo: 2 spawned ranks end with identical weights; only rank 0
writes checkpoints; validation and loss are reduced over ranks."""
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from covseg_fast.train.batching import EpochSampler

from ._ddp_worker import run_rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_ranks_end_identical(tmp_path):
    mp.spawn(run_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "final0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "final1.pt", weights_only=True)
    # weights and buffers (BatchNorm statistics, synced from rank 0 after each epoch) agree
    for k, v in r0["state_dict"].items():
        assert torch.equal(v, r1["state_dict"][k]), k
    # 11 images over 2 ranks: 6 each (padded), batch 2 → 3 batches × 3 rates per epoch, 2 epochs
    assert r0["global_step"] == r1["global_step"] == 2 * 3 * 3
    # loss and validation are all-reduced: both ranks record the same numbers
    for h0, h1 in zip(r0["history"], r1["history"]):
        assert h0["loss"] == h1["loss"] and h0["val_dice"] == h1["val_dice"]
        assert h0["images"] == 12
    # only rank 0 writes checkpoints and history
    assert sorted(f for f in os.listdir(tmp_path / "rank0") if not f.startswith(".")) == \
        ["best.pt", "history.json", "last.pt"]
    assert not os.path.exists(tmp_path / "rank1") or not os.listdir(tmp_path / "rank1")
    ckpt = torch.load(tmp_path / "rank0" / "last.pt", weights_only=True)
    assert ckpt["train"]["world_size"] == 2
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(v, r0["state_dict"][k]), k


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_cli_under_torchrun(tmp_path):
    from .test_cli_train import _folder

    data = _folder(tmp_path / "train", 6, 0)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), os.path.join(os.path.dirname(__file__),
                                                                            "_torchrun_cli.py"),
                           "--preset", "msa_unet", "--data", data, "--val-fraction", "0.34", "--out", str(out),
                           "--epochs", "2", "--batch-size", "2", "--set", "input_size=32", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("2 epochs; best.pt: epoch ") == 1        # the summary comes from rank 0 only
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["train"]["world_size"] == 2 and ckpt["train"]["epoch"] == 2


def test_epoch_sampler_shards():
    shards = [list(EpochSampler(9, seed=1, rank=r, world_size=2, pad=True)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert set(shards[0]) | set(shards[1]) == set(range(9))
    val = [list(EpochSampler(9, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert sorted(val[0] + val[1]) == list(range(9))
    s = EpochSampler(9, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0 and sorted(list(s)) == list(range(9))
    s.set_epoch(0)
    assert list(s) == e0
