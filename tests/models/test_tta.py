"""Test-time flip averaging: exact averages of flipped probabilities, logits out, both CLIs."""
import json

import pytest
import torch
from torch import nn

from covseg_fast.models.tta import FlipAveraged, with_tta


class Probe(nn.Module):
    """Logits that depend on position, so every flip gives different probabilities."""

    covseg_name, covseg_config = "probe", {}

    def __init__(self, channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight)

    def forward(self, x):
        h, w = x.shape[-2:]
        ramp = torch.linspace(-2, 2, w)[None, None, None, :] + torch.linspace(-1, 1, h)[None, None, :, None]
        return self.conv(x) + ramp


@pytest.mark.parametrize("mode,flips", [("hflip", [(), (-1,)]), ("flips", [(), (-1,), (-2,), (-2, -1)])])
def test_binary_is_the_mean_of_the_unflipped_probabilities(mode, flips):
    model, x = Probe().eval(), torch.rand(2, 1, 9, 12)
    with torch.no_grad():
        expected = sum(torch.sigmoid(model(x.flip(d) if d else x)).flip(d) if d else torch.sigmoid(model(x))
                       for d in flips) / len(flips)
        got = torch.sigmoid(FlipAveraged(model, mode)(x))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, torch.sigmoid(model(x)), atol=1e-3)   # the average is not the plain output


def test_multiclass_averages_softmax():
    model, x = Probe(channels=3).eval(), torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        expected = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1).flip(-1)) / 2
        got = torch.softmax(FlipAveraged(model, "hflip")(x), 1)
    assert torch.allclose(got, expected, atol=1e-5)


def test_none_is_the_model_itself_and_names_pass_through():
    model = Probe()
    assert with_tta(model, "none") is model and with_tta(model, None) is model
    wrapped = with_tta(model, "flips")
    assert wrapped.covseg_name == "probe" and wrapped.covseg_config == {}
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        FlipAveraged(model, "rot90")


def test_evaluate_and_screen_record_tta(tmp_path):
    import nibabel as nib
    import numpy as np

    from covseg_fast.cli.main import main
    from tests.inference.tiny_model import make_checkpoint
    from tests.slice_folders import write_slice_folder

    ckpt = make_checkpoint(str(tmp_path / "tiny.pt"))
    data = write_slice_folder(tmp_path / "d", 3)
    assert main(["evaluate", "--checkpoint", ckpt, "--data", data, "--out", str(tmp_path / "e"), "--tta", "hflip"]) == 0
    assert json.load(open(tmp_path / "e" / "summary.json"))["tta"] == "hflip"
    hu = np.full((24, 24, 3), -900, np.int16)
    hu[8:16, 8:16] = 40
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    assert main(["screen", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "s"), "--checkpoint", ckpt,
                 "--no-progress", "--workers", "0", "--tta", "flips"]) == 0
    assert json.load(open(tmp_path / "s" / "ct.json"))["tta"] == "flips"
