"""The Python API (covseg_fast.screen / load_model / segment_volume): the README's example runs as written, and
the API gives what the CLI gives (one implementation)."""
from __future__ import annotations

import json
import os
import re

import nibabel as nib
import numpy as np
import pytest

import covseg_fast
from covseg_fast.inference.errors import UsageError
from tests.ct_helpers import chest_phantom, reoriented, save_nifti
from tests.inference.tiny_model import make_checkpoint

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
SPACING = (4.0, 4.0, 5.0)


def readme_example() -> str:
    text = open(README, encoding="utf-8").read()
    m = re.search(r"<!-- python-api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README: the Python API example (marked python-api-example) is missing"
    return m.group(1)


@pytest.mark.slow
def test_readme_example_runs_and_says_what_it_claims(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_example(), "README.md (python-api-example)", "exec"), ns)
    report, seg = ns["report"], ns["seg"]
    assert report.exit_code == 0 and [c.case_id for c in report.cases] == ["demo_ct"]
    case = report.cases[0]
    assert case.status in ("ok", "warning") and isinstance(case.burden_pct, float)
    assert os.path.isfile(case.outputs["mask"]) and os.path.isfile(case.outputs["json"])
    assert json.load(open(case.outputs["json"]))["burden_pct"] == case.burden_pct
    written = np.asarray(nib.load("demo_out/demo_ct_infection.nii.gz").dataobj)
    np.testing.assert_array_equal(ns["mask_on_input_grid"], written)  # the comment in the example is true
    assert seg.burden_pct == pytest.approx(case.burden_pct, abs=1e-6)
    assert seg.model == case.record["model"] == "msa_unet" and seg.device == "cpu"


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    hu, _ = chest_phantom(spacing=SPACING)
    folder = tmp_path_factory.mktemp("chest")
    stored, aff = reoriented(np.round(hu), SPACING, "LPS")  # not RAS: the API must map back like the CLI
    save_nifti(str(folder / "chest.nii.gz"), stored, aff)
    return folder, np.round(hu)


def test_api_gives_what_the_cli_gives(chest, tmp_path):
    folder, hu = chest
    ckpt = make_checkpoint(str(tmp_path / "tiny.pt"))
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    report = covseg_fast.screen([str(folder)], str(tmp_path / "out"), checkpoint=ckpt, workers=0, progress=False,
                                save_probabilities=True)
    assert report.exit_code == 1 and [c.case_id for c in report.cases] == ["broken", "chest"]
    broken, case = report.cases
    assert broken.status == "failed" and broken.reason and report.failed == [broken]
    assert case.status == "ok" and case.outputs["mask"] == str(tmp_path / "out" / "chest_infection.nii.gz")
    rows = json.load(open(tmp_path / "out" / "summary.json"))["cases"]
    assert rows[0]["burden_pct"] == case.burden_pct and rows[0]["infected_ml"] == case.infected_ml

    model = covseg_fast.load_model(ckpt, device="cpu")
    assert model.name == "tiny_screen_test" and model.window == (-1250.0, 250.0)
    written = np.asarray(nib.load(case.outputs["mask"]).dataobj)
    by_path = covseg_fast.segment_volume(str(folder / "chest.nii.gz"), model)
    np.testing.assert_array_equal(by_path.to_input_grid(by_path.mask), written)
    assert by_path.statistics["burden_pct"] == case.burden_pct and by_path.warnings == []
    prob = nib.load(case.outputs["probabilities"]).get_fdata()
    assert np.abs(by_path.to_input_grid(by_path.probabilities) - prob).max() <= 1 / 255 + 1e-6
    by_array = covseg_fast.segment_volume(hu, model, spacing=SPACING)  # the canonical (RAS) array itself
    np.testing.assert_array_equal(by_array.mask, by_path.mask)
    assert by_array.lung.max() == 2 and by_array.classes == ()


def test_api_errors_are_exceptions_with_the_cli_messages(chest, tmp_path):
    folder, hu = chest
    ckpt = make_checkpoint(str(tmp_path / "tiny.pt"))
    with pytest.raises(TypeError, match="unknown option.*no_such_flag"):
        covseg_fast.screen(str(folder), str(tmp_path / "o"), checkpoint=ckpt, no_such_flag=True)
    with pytest.raises(UsageError, match="HIGH must be greater"):
        covseg_fast.screen(str(folder), str(tmp_path / "o"), checkpoint=ckpt, window=(250, -1250))
    with pytest.raises(UsageError, match="give spacing"):
        covseg_fast.segment_volume(hu, covseg_fast.load_model(ckpt, device="cpu"))
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        covseg_fast.load_model(ckpt, device="gpu")
    assert not (tmp_path / "o").exists()
