"""Exact resume: 2 epochs straight == 1 epoch + resume + 1 epoch, bitwise, on CPU."""
import os

import pytest
import torch

from covseg_fast.models.registry import CheckpointError, read_checkpoint
from covseg_fast.train import Trainer

from ._tiny import NAME, BlobDataset, tiny_overrides


def _trainer(out, preset, epochs, **kw):
    return Trainer(NAME, {"width": 4}, preset, tiny_overrides(epochs=epochs, seed=3), BlobDataset(7), BlobDataset(3, seed=1),
                   str(out), device="cpu", progress=False, **kw)


@pytest.mark.parametrize("preset", ["msa_unet", "refnet"])
def test_resume_is_bitwise_exact(tmp_path, preset):
    straight = _trainer(tmp_path / "a", preset, 2)
    straight.fit()
    first = _trainer(tmp_path / "b", preset, 1)
    first.fit()
    resumed = _trainer(tmp_path / "b", preset, 2).resume(str(tmp_path / "b" / "last.pt"))
    assert resumed.epoch == 1
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the optimiser state matches too, and the lr schedule position
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (k, name)
    assert straight.scheduler.state_dict()["last_epoch"] == resumed.scheduler.state_dict()["last_epoch"] == 2
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    # a different seed gives different weights (the comparison above is not vacuous)
    other = Trainer(NAME, {"width": 4}, preset, tiny_overrides(epochs=2, seed=4), BlobDataset(7), None,
                    str(tmp_path / "c"), device="cpu", progress=False)
    other.fit()
    assert not torch.equal(other.model.state_dict()["body.0.weight"], a["body.0.weight"])


def test_checkpoint_contents(tmp_path):
    t = _trainer(tmp_path, "msa_unet", 1)
    t.fit()
    payload = read_checkpoint(str(tmp_path / "last.pt"))   # weights_only=True load
    assert payload["model"] == NAME and payload["config"] == {"width": 4}
    state = payload["train"]
    assert state["epoch"] == 1 and state["config"]["optimizer"] == "rmsprop"
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert "state" in state["optimizer"] and "last_epoch" in state["scheduler"]
    assert os.path.isfile(tmp_path / "best.pt") and os.path.isfile(tmp_path / "history.json")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_resume_rejects_other_model_and_plain_weights(tmp_path):
    from covseg_fast.models import get_model, save_checkpoint

    plain = str(tmp_path / "plain.pt")
    save_checkpoint(plain, get_model(NAME, width=4))
    t = _trainer(tmp_path / "x", "msa_unet", 1)
    with pytest.raises(CheckpointError, match="no training state"):
        t.resume(plain)
    with pytest.raises(CheckpointError, match="not found"):
        t.resume(str(tmp_path / "missing.pt"))
