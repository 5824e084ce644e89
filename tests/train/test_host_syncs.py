"""One training step makes no device-to-host transfer from covseg_fast's own code.

On a GPU, ``t.item()``, ``float(t)``, ``bool(t)``, ``t.tolist()``, ``t.nonzero()`` ... wait for every kernel
queued before them: the CPU stops feeding the GPU once per call (8–10 times a step, in the losses, before
this was fixed). On CPU nothing waits, so the test counts the calls that would: each such call made from a
module of covseg_fast while ``Trainer._step`` runs on a batch already on the training device. Calls
inside torch itself are not counted (the optimisers' step counters, for one, live on the host on CUDA too).
"""
import sys

import pytest
import torch

from covseg_fast import _ext
from covseg_fast.train.trainer import Trainer

SYNCING = ("item", "tolist", "numpy", "nonzero", "cpu", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def host_syncs(monkeypatch):
    """A list that collects "module:line method" for every syncing call made from covseg_fast code."""
    calls: list[str] = []

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1)
            module = caller.f_globals.get("__name__", "")
            if module.startswith("covseg_fast"):
                calls.append(f"{module}:{caller.f_lineno} {name}")
            return original(self, *args, **kwargs)
        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    return calls


def _trainer(tmp_path, model, config, criterion_config=None):
    return Trainer(model, config, overrides={"batch_size": 2, "epochs": 1, "compile": False},
                   out_dir=str(tmp_path), device="cpu", progress=False, criterion_config=criterion_config)


def _batch(size, seed, soft=False, labels=None):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 1, size, size, generator=gen)
    mask = (torch.rand(2, 1, size, size, generator=gen) > 0.7).float()
    batch = {"image": image, "mask": mask * 0.8 if soft else mask}
    if labels is not None:
        batch["labels"] = torch.randint(0, labels, (2, size, size), generator=gen)
    return batch


# "per_scale" is what a GPU step runs (targets="auto" there); "pooled" (CPU's) needs the C++ kernel here, since
# the pure-PyTorch class_prob_pool checks the labels with a bool() (host tensors on CPU: no real sync).
TARGETS = ["per_scale"] + (["pooled"] if _ext.loaded else [])


@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("case", ["binary", "soft_mask", "three_classes"])
def test_msa_unet_step_has_no_host_sync(tmp_path, host_syncs, case, targets):
    classes = 3 if case == "three_classes" else 1
    trainer = _trainer(tmp_path, "msa_unet", {"base": 4, "num_classes": classes}, {"targets": targets})
    batch = trainer.prepare_batch(_batch(64, 0, soft=case == "soft_mask", labels=classes if classes > 1 else None))
    host_syncs.clear()  # the host-side facts of the batch are computed before it moves: not counted
    loss, parts = trainer._step(batch)
    assert host_syncs == [], f"{len(host_syncs)} syncing calls in one step: {host_syncs}"
    assert torch.isfinite(loss) and {"main", "aux", "total"} <= set(parts)


@pytest.mark.slow
def test_refnet_step_has_no_host_sync(tmp_path, host_syncs):
    trainer = _trainer(tmp_path, "refnet", {})
    batch = trainer.prepare_batch(_batch(64, 1))
    host_syncs.clear()
    trainer._step(batch)
    assert host_syncs == [], f"{len(host_syncs)} syncing calls in one step: {host_syncs}"


def test_the_counter_sees_a_sync_in_covseg_code(host_syncs):
    """The fixture counts what it should: a float() of a tensor inside covseg_fast code."""
    from covseg_fast.losses import RefNetLoss

    outs = {k: torch.zeros(1, 1, 8, 8) for k in ("m5", "m4", "m3", "m2")}
    _, parts = RefNetLoss()(outs, {"mask": torch.zeros(1, 1, 8, 8)})
    assert host_syncs == []
    float(parts["loss"])  # from this test module: not counted
    assert host_syncs == []
    from covseg_fast.train import trainer as trainer_module
    exec(compile("float(t)", trainer_module.__file__, "eval"), {"__name__": trainer_module.__name__,
                                                              "t": torch.ones(())})
    assert len(host_syncs) == 1 and host_syncs[0].endswith("__float__")
