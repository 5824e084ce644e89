"""`covseg screen` end to end: orientation, robustness, atomicity, resume, output location, shards, demo."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest

from covseg_fast.cli import screen as screen_cli
from covseg_fast.cli.main import main
from covseg_fast.inference import decoding
from covseg_fast.inference.anatomy.margin import ball_dilation
from tests.ct_helpers import (axis_affine, oblique_affine, phantom, save_dicom_series, save_nifti,
                              write_bad_inputs)
from tests.inference.tiny_model import make_checkpoint

THRESH_HU = -1250 + 0.55 * 1500  # the tiny model's boundary in the default window: -425 HU


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ck") / "tiny.pt"))


def screen(*args) -> int:
    return main(["screen", "--no-progress", "--workers", "0", *map(str, args)])


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _marked(shape, seed):
    if shape[1] < shape[2]:  # the PSL layout: a chest phantom stored as (P, S, L)
        return np.round(phantom((shape[2], shape[0], shape[1]), seed)).transpose(1, 2, 0).copy()
    return np.round(phantom(shape, seed))


# chest-sized voxels (6 × 5.5 mm in-plane, 10 mm slices) so the phantom's lungs are found (≈ 1.5 L)
BIG = {"LPS": (6.0, 5.5, 10.0), "PSL": (5.5, 10.0, 6.0)}
ORIENT = {"LPS": (axis_affine("LPS", BIG["LPS"]), (64, 64, 6)), "RAS": (axis_affine("RAS", BIG["LPS"]), (64, 64, 6)),
          "LAS": (axis_affine("LAS", BIG["LPS"]), (64, 64, 6)), "PSL": (axis_affine("PSL", BIG["PSL"]), (64, 6, 64)),
          "oblique": (oblique_affine(12.0, BIG["LPS"]), (64, 64, 6))}


def test_orientation_round_trip_through_the_pipeline(tmp_path, ckpt):
    """Mask voxel (i, j, k) = image voxel (i, j, k) for LPS, RAS, LAS, permuted and oblique inputs: the model's
    unrestricted mask, the lung mask, and the written mask = the unrestricted one within 5 mm of the lungs."""
    inp = tmp_path / "in"
    inp.mkdir()
    src = {}
    for n, (name, (aff, shape)) in enumerate(sorted(ORIENT.items())):
        data = _marked(shape, n)
        data[2:5, 3:5, 1] = 300.0          # asymmetric bright markers in the air
        data[50, 4, 4] = 300.0
        src[name] = (data, aff)
        save_nifti(str(inp / f"{name}.nii.gz"), data, aff)
    # batch size 4 with 6-slice volumes: batches hold slices of two volumes
    assert screen(inp, "-o", tmp_path / "out", "--checkpoint", ckpt, "--batch-size", 4, "--save-unrestricted-mask",
                  "--save-lung-mask", "--save-label-map") == 0
    for name, (data, aff) in src.items():
        out = tmp_path / "out"
        raw = nib.load(str(out / f"{name}_infection_unrestricted.nii.gz"))
        m, lung = nib.load(str(out / f"{name}_infection.nii.gz")), nib.load(str(out / f"{name}_lungmask.nii.gz"))
        for img in (raw, m, lung):
            np.testing.assert_allclose(img.affine, aff, atol=1e-5)
            assert img.shape == data.shape
        raw, m, lung = (np.asarray(i.dataobj) for i in (raw, m, lung))
        np.testing.assert_array_equal(raw > 0, data > THRESH_HU, err_msg=name)
        truth = np.abs(data + 850) < 40  # the phantom's lungs
        assert ((lung > 0) == truth).mean() > 0.98, name
        allowed = ball_dilation(lung > 0, 5.0, nib.affines.voxel_sizes(aff)) | (lung > 0)
        np.testing.assert_array_equal(m > 0, (raw > 0) & allowed, err_msg=name)
        labels = np.asarray(nib.load(str(out / f"{name}_labelmap.nii.gz")).dataobj)
        np.testing.assert_array_equal(labels == 3, m > 0)
        np.testing.assert_array_equal(np.where(labels == 3, 0, labels), np.where(m > 0, 0, lung))
        rec = json.load(open(out / f"{name}.json"))
        # 6 slices of 10 mm cannot hold whole lungs: screened, with a warning that says why
        assert rec["status"] == "warning" and rec["slices"] == 6 and rec["model"] == "tiny_screen_test"
        assert any("span 60 mm" in w for w in rec["warnings"]) and rec["burden_trustworthy"] is False
        vox = abs(np.linalg.det(aff[:3, :3])) / 1000
        assert rec["infected_ml"] == pytest.approx((m > 0).sum() * vox, rel=1e-4)
        assert rec["excluded_outside_lung_ml"] == pytest.approx(((raw > 0) & ~allowed).sum() * vox, rel=1e-4)
        assert rec["lung_checks"]["lung_mask_ml"] == pytest.approx((lung > 0).sum() * vox, rel=1e-4)
        assert rec["lung_right_ml"] + rec["lung_left_ml"] == pytest.approx(rec["lung_ml"], abs=0.01)
        assert 1000 < rec["lung_ml"] and 0 <= rec["burden_pct"] <= 100


def test_bad_inputs_do_not_stop_the_batch(tmp_path, ckpt, caplog):
    inp = tmp_path / "in"
    expect = write_bad_inputs(str(inp))
    save_nifti(str(inp / "good.nii.gz"), _marked((32, 32, 4), 1), axis_affine("LPS"))
    save_nifti(str(inp / "notct.nii.gz"), np.random.default_rng(0).random((16, 16, 3)) * 200,
               axis_affine("RAS"))
    save_dicom_series(str(inp / "dcm_missing"), phantom((16, 16, 6)), skip=(3,))
    save_dicom_series(str(inp / "dcm_dup"), phantom((16, 16, 6)), duplicate=(2,))
    expect.update({"dcm_missing": "missing slices", "dcm_dup": "duplicate slices"})
    out = tmp_path / "out"
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 1
    fails = {r["case_id"]: r for r in _rows(out / "failures.csv")}
    assert set(fails) == set(expect)
    for case, words in expect.items():
        assert words in fails[case]["reason"], (case, fails[case]["reason"])
        assert "\n" not in fails[case]["reason"]
        assert any(case in r.getMessage() and "FAILED" in r.getMessage() for r in caplog.records)
    ok = {r["case_id"]: r for r in _rows(out / "summary.csv")}
    assert set(ok) == {"good", "notct"}
    assert "does not look like CT" in ok["notct"]["warnings"]
    assert (out / "good_infection.nii.gz").is_file() and (out / "good_overlay.png").is_file()


def _digest(folder):
    h = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                h[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return h


def _three_cases(inp):
    inp.mkdir()
    for n, name in enumerate(["a", "b", "c"]):
        save_nifti(str(inp / f"{name}.nii.gz"), _marked((32, 32, 3), n), axis_affine("LPS"))


def test_resume_after_a_killed_run(tmp_path, ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    _three_cases(inp)
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 0
    before = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    # simulate a kill: b lost its JSON (written last), c has a stray temporary and no montage/JSON
    os.unlink(out / "b.json")
    os.unlink(out / "c.json")
    os.unlink(out / "c_overlay.png")
    (out / ".c_infection.nii.gz.x1y2z3.nii.gz").write_bytes(b"half a file")
    # outputs exist: a plain rerun is refused
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 2
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume") == 0
    assert sorted(os.listdir(out)) == sorted(
        [f"{c}{s}" for c in "abc" for s in (".json", "_infection.nii.gz", "_overlay.png")] +
        ["summary.csv", "summary.json", "failures.csv", "index.html"])  # no temporaries, nothing duplicated
    for f in ("a.json", "a_infection.nii.gz", "a_overlay.png"):
        assert os.stat(out / f).st_mtime_ns == before[f]  # complete case untouched
    rows = _rows(out / "summary.csv")
    assert sorted(r["case_id"] for r in rows) == ["a", "b", "c"]
    # a keeps its status (these 3-slice phantoms are too small for whole lungs: "warning"), and says it was resumed
    assert {r["case_id"]: (r["status"], r["resumed"]) for r in rows} == {
        "a": ("warning", "true"), "b": ("warning", "false"), "c": ("warning", "false")}
    assert json.load(open(out / "b.json"))["status"] == "warning"
    # --overwrite redoes everything
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--overwrite") == 0
    assert os.stat(out / "a.json").st_mtime_ns != before["a.json"]


def test_write_failure_leaves_no_partial_file(tmp_path, ckpt, monkeypatch):
    import covseg_fast.io.writer as writer

    inp, out = tmp_path / "in", tmp_path / "out"
    _three_cases(inp)
    real = nib.save

    def dying_save(img, path):
        if "b_infection" in str(path):
            with open(path, "wb") as fh:
                fh.write(b"partial")
            raise OSError("disk full (simulated)")
        real(img, path)

    monkeypatch.setattr(writer.nib, "save", dying_save)
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 1
    assert [r["case_id"] for r in _rows(out / "failures.csv")] == ["b"]
    assert "disk full" in _rows(out / "failures.csv")[0]["reason"]
    assert not [f for f in os.listdir(out) if f.startswith(".") or f.startswith("b")]
    monkeypatch.setattr(writer.nib, "save", real)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume") == 0
    assert (out / "b.json").is_file()


_REAL_DECODE = decoding.decode_case


def _decode_or_die(case):
    """Decoding in a worker, except that case c3 kills its worker process (like the OOM killer or a segfault)."""
    if case.case_id == "c3":
        os._exit(137)
    return _REAL_DECODE(case)


def test_a_dying_decoding_worker_fails_only_its_case(tmp_path, ckpt, monkeypatch, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = _six_cases(inp)
    monkeypatch.setattr(decoding, "decode_case", _decode_or_die)  # forked workers inherit the patch
    # 2 workers, 4 cases in flight when c3 dies: the others in flight are retried alone and succeed
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--workers", 2) == 1
    fails = _rows(out / "failures.csv")
    assert [f["case_id"] for f in fails] == ["c3"]
    assert "decoding worker process died" in fails[0]["reason"] and "retried alone" in fails[0]["reason"]
    ok = [n for n in names if n != "c3"]
    assert [r["case_id"] for r in _rows(out / "summary.csv")] == ok
    assert all((out / f"{n}_infection.nii.gz").is_file() for n in ok) and not (out / "c3.json").exists()
    assert "retrying" in caplog.text
    # --resume tries c3 again, fails it the same way, keeps the rest
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--workers", 2, "--resume") == 1
    assert [f["case_id"] for f in _rows(out / "failures.csv")] == ["c3"]
    assert {r["resumed"] for r in _rows(out / "summary.csv")} == {"true"}
    monkeypatch.setattr(decoding, "decode_case", _REAL_DECODE)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--workers", 2, "--resume") == 0
    assert [r["case_id"] for r in _rows(out / "summary.csv")] == names


class _PoolThatCannotStart:
    """A process pool whose workers die as soon as they start: every submit finds it broken."""

    def __init__(self, *args, **kwargs):
        self._processes = {}

    def submit(self, *args, **kwargs):
        from concurrent.futures.process import BrokenProcessPool

        raise BrokenProcessPool("a child process terminated abruptly")

    def shutdown(self, *args, **kwargs):
        pass


def test_decoding_workers_that_cannot_start_are_one_line_exit_2(tmp_path, ckpt, monkeypatch, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    _six_cases(inp)
    monkeypatch.setattr(decoding.cf, "ProcessPoolExecutor", _PoolThatCannotStart)
    caplog.set_level("INFO")
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--workers", 2) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "die as soon as they start" in errors[0] and "rerun with --workers 0" in errors[0]
    assert "Traceback" not in caplog.text
    assert not (out / "summary.csv").exists() and not (out / ".covseg_screen.lock").exists()
    monkeypatch.undo()
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--workers", 0, "--resume") == 0


def _decode_or_hang(case):
    """Decoding in a worker, except that case c3 never finishes (a stuck decoder)."""
    if case.case_id == "c3":
        import time

        time.sleep(3600)
    return _REAL_DECODE(case)


def test_a_stuck_decoder_fails_its_case_after_decode_timeout(tmp_path, ckpt, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = _six_cases(inp)
    monkeypatch.setattr(decoding, "decode_case", _decode_or_hang)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--workers", 2, "--decode-timeout", 2) == 1
    fails = _rows(out / "failures.csv")
    assert [f["case_id"] for f in fails] == ["c3"] and "decoding took longer than 2 s" in fails[0]["reason"]
    assert [r["case_id"] for r in _rows(out / "summary.csv")] == [n for n in names if n != "c3"]


def test_decode_timeout_with_workers_0_says_it_does_not_apply(tmp_path, ckpt, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    _six_cases(inp)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--decode-timeout", 5) == 0  # --workers 0 (screen())
    assert "--decode-timeout does not apply with --workers 0" in caplog.text
    caplog.clear()
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume") == 0  # the default limit: nothing to say
    assert "--decode-timeout" not in caplog.text


def test_an_error_after_inference_fails_one_case(tmp_path, ckpt, monkeypatch):
    from covseg_fast.inference.screener import Screener

    inp, out = tmp_path / "in", tmp_path / "out"
    _three_cases(inp)
    real, calls = Screener.from_model_probs, []

    def oom_on_second(self, prob, plane):  # cases finish in input order: the second is b
        calls.append(plane)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, prob, plane)

    monkeypatch.setattr(Screener, "from_model_probs", oom_on_second)
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 1
    assert [(f["case_id"], f["reason"]) for f in _rows(out / "failures.csv")] == [
        ("b", "postprocessing failed: RuntimeError: CUDA out of memory (simulated)")]
    assert [r["case_id"] for r in _rows(out / "summary.csv")] == ["a", "c"]


TIMING_KEYS = {"decode_s", "infer_s", "time_s"}


def _six_cases(inp):
    inp.mkdir()
    names = [f"c{n}" for n in range(6)]
    for n, name in enumerate(names):
        save_nifti(str(inp / f"{name}.nii.gz"), _marked((24 + 4 * n, 28, 3 + n % 3), n), axis_affine("LPS"))
    return names


def _outputs(out):
    """File name → bytes (NIfTI, PNG) or the record minus timings (JSON), summary rows minus time."""
    got = {}
    for f in sorted(os.listdir(out)):
        if f.endswith(".json") and not f.startswith("summary"):
            got[f] = {k: v for k, v in json.load(open(out / f)).items() if k not in TIMING_KEYS}
        elif f.startswith("summary") and f.endswith(".csv"):
            got[f] = [{k: v for k, v in r.items() if k != "time_s"} for r in _rows(out / f)]
        elif f.startswith("summary"):
            got[f] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in json.load(open(out / f))["cases"]]
        else:
            got[f] = open(out / f, "rb").read()
    return got


def test_parallel_writers_give_the_same_outputs_as_one(tmp_path, ckpt, monkeypatch):
    import threading
    import time

    from covseg_fast.inference import screener

    inp = tmp_path / "in"
    names = _six_cases(inp)
    assert screen(inp, "-o", tmp_path / "w1", "--checkpoint", ckpt, "--writers", 1, "--batch-size", 4,
                  "--save-probabilities") == 0
    # the first case writes slowly: with 3 writers the others finish before it, on other threads
    real, threads = screener.write_case, set()

    def slow_first(plan, case_id, *a, **k):
        threads.add(threading.current_thread().name)
        if case_id == names[0]:
            time.sleep(0.5)
        return real(plan, case_id, *a, **k)

    monkeypatch.setattr(screener, "write_case", slow_first)
    assert screen(inp, "-o", tmp_path / "w3", "--checkpoint", ckpt, "--writers", 3, "--batch-size", 4,
                  "--save-probabilities") == 0
    assert len(threads) > 1
    one, three = _outputs(tmp_path / "w1"), _outputs(tmp_path / "w3")
    assert sorted(one) == sorted(three) and len(one) == 6 * 4 + 4  # + summary.csv, .json, failures.csv, index.html
    for f in one:
        assert one[f] == three[f], f
    assert [r["case_id"] for r in three["summary.csv"]] == names  # sorted by case id, not by finish time


def test_write_failure_with_parallel_writers(tmp_path, ckpt, monkeypatch):
    import covseg_fast.io.writer as writer
    from covseg_fast.inference import screener
    from covseg_fast.inference.progress import ScreenProgress

    inp, out = tmp_path / "in", tmp_path / "out"
    names = _six_cases(inp)
    real = nib.save

    def dying_save(img, path):
        if "c2_infection" in str(path):
            raise OSError("disk full (simulated)")
        real(img, path)

    class Bar:  # counts what the progress bar is told (it counts slices; volumes are in its postfix)
        n = total = 0
        closed = False
        postfix = ""

        def update(self, k):
            self.n += k

        def set_postfix_str(self, text):
            self.postfix = text

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    bar = Bar()
    monkeypatch.setattr(screener, "progress_bar", lambda volumes, enabled: ScreenProgress(bar, volumes))
    monkeypatch.setattr(writer.nib, "save", dying_save)
    assert main(["screen", str(inp), "-o", str(out), "--checkpoint", ckpt, "--workers", "0", "--writers", "3"]) == 1
    slices = sum(nib.load(str(inp / f"{n}.nii.gz")).shape[2] for n in names)
    assert bar.n == bar.total == slices and bar.closed  # c2 failed while writing: its slices did run
    assert bar.postfix.startswith("6/6 volumes")
    assert [(r["case_id"], "disk full" in r["reason"]) for r in _rows(out / "failures.csv")] == [("c2", True)]
    assert [r["case_id"] for r in _rows(out / "summary.csv")] == [n for n in names if n != "c2"]
    assert all((out / f"{n}.json").is_file() for n in names if n != "c2")
    assert not [f for f in os.listdir(out) if f.startswith(".") or f.startswith("c2")]
    monkeypatch.setattr(writer.nib, "save", real)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume", "--writers", 3) == 0
    rows = _rows(out / "summary.csv")
    assert [r["case_id"] for r in rows] == names and sum(r["resumed"] == "false" for r in rows) == 1


def test_stage_accounting_in_summary_and_cli(tmp_path, ckpt, caplog):
    from covseg_fast.inference.batch import screen_batch
    from covseg_fast.inference.screener import ScreenConfig, Screener, StageTimes
    from covseg_fast.models.registry import get_spec, load_model

    inp = tmp_path / "in"
    _three_cases(inp)
    cfg = ScreenConfig(out_dir=str(tmp_path / "out"), workers=1, writers=2, progress=False)
    model = load_model(ckpt)
    code, res, s = screen_batch([str(inp)], lambda: Screener(model, get_spec(model.covseg_name), cfg), cfg)
    assert code == 0 and [r["case_id"] for r in res.records] == ["a", "b", "c"]
    assert (s["screened"], s["ok"], s["warning"]) == (3, 0, 3)  # phantoms too small for whole lungs
    st = s["stages"]
    for k in ("decode_s", "device_s", "inference_s", "postprocess_s", "write_s", "starved_s",
              "backpressure_s", "drain_s"):
        assert st[k] >= 0, k
    assert st["decode_s"] > 0 and st["inference_s"] > 0 and st["write_s"] > 0
    assert st["workers"] == 1 and st["writers"] == 2
    # one thread's time: its parts cannot exceed the wall time (device_s runs in the preparation thread)
    loop = st["starved_s"] + st["backpressure_s"] + st["drain_s"] + st["inference_s"] + st["postprocess_s"]
    assert loop <= res.wall_s + 1e-3
    assert st["device_s"] <= res.wall_s + 1e-3
    assert s["bottleneck"] == st["bottleneck"] in {"decode", "write", "inference", "postprocess"}
    assert "bottleneck" in s["stage_line"]
    # the bottleneck is the largest share of the inference loop's time
    assert StageTimes(starved_s=3, inference_s=1).bottleneck == "decode"
    assert StageTimes(backpressure_s=1, drain_s=2.5, inference_s=3).bottleneck == "write"
    assert StageTimes(postprocess_s=2, inference_s=1, device="cuda:0").bottleneck == "gpu"
    assert StageTimes().bottleneck == ""
    caplog.set_level("INFO", logger="covseg.screen")
    assert screen(inp, "-o", tmp_path / "cli", "--checkpoint", ckpt, "--writers", 2) == 0
    assert any("stages (busy s): decode" in r.getMessage() and "2 writers" in r.getMessage() and
               "bottleneck:" in r.getMessage() for r in caplog.records)


def test_output_inside_input_is_refused_and_inputs_untouched(tmp_path, ckpt):
    inp = tmp_path / "in"
    _three_cases(inp)
    before = _digest(inp)
    assert screen(inp, "-o", inp / "results", "--checkpoint", ckpt) == 2
    assert not (inp / "results").exists()
    assert screen(inp, "-o", inp / "results", "--checkpoint", ckpt, "--allow-output-in-input") == 0
    after = _digest(inp)
    assert {p: h for p, h in after.items() if "/results/" not in p} == before
    # a second run does not screen its own outputs as inputs
    assert screen(inp, "-o", inp / "results", "--checkpoint", ckpt, "--allow-output-in-input", "--resume") == 0
    assert len(_rows(inp / "results" / "summary.csv")) == 3


def test_output_holding_the_inputs_is_refused(tmp_path, ckpt, caplog):
    """An output folder above the inputs, or the folder of an input file, used to screen nothing (exit 0)."""
    scans = tmp_path / "p" / "scans"
    tmp_path.joinpath("p").mkdir()
    _three_cases(scans)
    before = _digest(tmp_path / "p")
    for inputs, out in (([scans], tmp_path / "p"), ([scans / "a.nii.gz"], scans), ([scans / "b.nii.gz"], tmp_path)):
        caplog.clear()
        assert screen(*inputs, "-o", out, "--checkpoint", ckpt) == 2
        assert "holds the input" in caplog.text and "--allow-output-in-input" in caplog.text
    assert _digest(tmp_path / "p") == before
    # allowed: every input is screened, and only screen's own files in the output folder are skipped
    assert screen(scans, "-o", tmp_path / "p", "--checkpoint", ckpt, "--allow-output-in-input") == 0
    assert [r["case_id"] for r in _rows(tmp_path / "p" / "summary.csv")] == ["a", "b", "c"]
    assert screen(scans, "-o", scans, "--checkpoint", ckpt, "--allow-output-in-input", "--save-probabilities") == 0
    rows = _rows(scans / "summary.csv")
    assert [r["case_id"] for r in rows] == ["a", "b", "c"]
    (scans / ".a_infection.nii.gz.x1y2z3.nii.gz").write_bytes(b"half a file")  # a killed run's temporary
    caplog.set_level("INFO")
    assert screen(scans, "-o", scans, "--checkpoint", ckpt, "--allow-output-in-input", "--save-probabilities",
                  "--resume") == 0
    assert [r["resumed"] for r in _rows(scans / "summary.csv")] == ["true"] * 3
    assert "skipping 7 file(s)" in caplog.text  # 3 masks, 3 probabilities, 1 temporary
    assert not (scans / ".a_infection.nii.gz.x1y2z3.nii.gz").exists()


@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]])
def test_user_files_named_like_outputs_are_never_replaced(tmp_path, ckpt, caplog, mode):
    """Output folder = input folder: the user's own a.json or summary.csv is refused, never overwritten."""
    scans = tmp_path / "scans"
    _three_cases(scans)
    args = (scans, "-o", scans, "--checkpoint", ckpt, "--allow-output-in-input", *mode)
    for name, text in (("a.json", '{"patient": "notes the user keeps"}'), ("summary.csv", "id,score\n1,2\n")):
        (scans / name).write_text(text)
        before = _digest(scans)
        caplog.clear()
        assert screen(*args) == 2
        assert f"{scans / name} exists and was not written by covseg screen" in caplog.text
        assert _digest(scans) == before
        (scans / name).unlink()
    assert screen(*args) == 0
    # screen's own record and reports are screen's to replace
    assert screen(scans, "-o", scans, "--checkpoint", ckpt, "--allow-output-in-input", "--overwrite") == 0


def test_usage_error_leaves_no_output_folder(tmp_path, ckpt, caplog):
    import torch

    inp = tmp_path / "in"
    _three_cases(inp)
    bad = tmp_path / "bad.pt"
    torch.save({"model": "tiny_screen_test", "config": {"nosuch": 1}, "state_dict": {}}, str(bad))
    assert screen(inp, "-o", tmp_path / "out", "--checkpoint", bad) == 2
    assert "config does not fit" in caplog.text and "nosuch" in caplog.text
    assert not (tmp_path / "out").exists()


def test_case_names_never_collide(tmp_path, ckpt):
    """x.nii beside x.nii.gz, a DICOM folder x/ beside x.nii.gz, and an input named like a batch report."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shapes = {"coll.nii": (20, 22, 3), "coll.nii.gz": (24, 22, 4), "x.nii.gz": (18, 16, 3),
              "summary.nii.gz": (16, 20, 5), "Summary_shard0of2.nii.gz": (16, 16, 3)}
    for n, (name, shape) in enumerate(shapes.items()):
        save_nifti(str(inp / name), _marked(shape, n), axis_affine("RAS"))
    save_dicom_series(str(inp / "x"), np.round(phantom((16, 18, 4))))
    assert screen(inp, "-o", out, "--checkpoint", ckpt) == 0
    want = {"coll_nii": ("coll.nii", 3), "coll_nii_gz": ("coll.nii.gz", 4), "x_nii_gz": ("x.nii.gz", 3),
            "x_dicom": ("x", 4), "summary_case": ("summary.nii.gz", 5),
            "Summary_shard0of2_case": ("Summary_shard0of2.nii.gz", 3)}
    for case, (name, slices) in want.items():
        rec = json.load(open(out / f"{case}.json"))
        assert os.path.basename(rec["path"]) == name and rec["slices"] == slices, case
        assert nib.load(str(out / f"{case}_infection.nii.gz")).shape[2] == slices
    assert sorted(r["case_id"] for r in _rows(out / "summary.csv")) == sorted(want)
    assert len(json.load(open(out / "summary.json"))["cases"]) == len(want)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume") == 0
    assert {r["resumed"] for r in _rows(out / "summary.csv")} == {"true"}
    # a record left under an id by ANOTHER input (e.g. before ids were disambiguated) is not complete
    rec = json.load(open(out / "coll_nii.json"))
    rec["path"] = str(inp / "coll.nii.gz")
    (out / "coll_nii.json").write_text(json.dumps(rec))
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--resume") == 0
    resumed = {r["case_id"]: r["resumed"] for r in _rows(out / "summary.csv")}
    assert resumed.pop("coll_nii") == "false" and set(resumed.values()) == {"true"}


def test_shards_partition_the_cases(tmp_path, ckpt, monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    _three_cases(inp)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--shard", "0/2", "--report-format", "csv",
                  "--window=-1000,200") == 0
    assert json.load(open(out / "a.json"))["window_hu"] == [-1000.0, 200.0]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--report-format", "csv") == 0
    s0 = [r["case_id"] for r in _rows(out / "summary_shard0of2.csv")]
    s1 = [r["case_id"] for r in _rows(out / "summary_shard1of2.csv")]
    assert sorted(s0 + s1) == ["a", "b", "c"] and not set(s0) & set(s1)
    assert not (out / "summary_shard0of2.json").exists()
    assert not (out / "summary.csv").exists()
    (out / "summary.csv").write_text("my,own\n1,2\n")  # the user's file: the merge refuses to replace it
    assert main(["screen", "--merge-shards", str(out)]) == 2
    assert (out / "summary.csv").read_text() == "my,own\n1,2\n"
    (out / "summary.csv").unlink()
    assert main(["screen", "--merge-shards", str(out)]) == 0
    assert [r["case_id"] for r in _rows(out / "summary.csv")] == ["a", "b", "c"]
    assert _rows(out / "failures.csv") == [] and not (out / "summary.json").exists()  # the shards wrote CSV only


def test_window_defaults_to_the_one_the_checkpoint_was_trained_with(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    inp, out = tmp_path / "in", tmp_path / "out"
    _three_cases(inp)
    trained = make_checkpoint(str(tmp_path / "vol.pt"), input_info={"source": "volumes", "window": [-1000, 200]})
    assert screen(inp, "-o", out, "--checkpoint", trained) == 0
    assert json.load(open(out / "a.json"))["window_hu"] == [-1000.0, 200.0]
    assert "HU window -1000 … 200 (recorded in the checkpoint)" in caplog.text
    assert screen(inp, "-o", tmp_path / "o2", "--checkpoint", trained, "--window=-1250,250") == 0   # the flag wins
    assert json.load(open(tmp_path / "o2" / "a.json"))["window_hu"] == [-1250.0, 250.0]
    bad = make_checkpoint(str(tmp_path / "bad.pt"), input_info={"window": "lung"})
    assert screen(inp, "-o", tmp_path / "o3", "--checkpoint", bad) == 2
    assert "recorded HU window 'lung' is not [low, high]" in caplog.text


def test_merge_shards_refuses_incomplete_or_mixed_reports(tmp_path, ckpt, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    _three_cases(inp)
    assert main(["screen", "--merge-shards", str(out)]) == 2  # no such folder
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--shard", "1/3") == 0
    assert main(["screen", "--merge-shards", str(out)]) == 2
    assert "shard(s) 0, 2 of 3 have not written their reports" in caplog.text
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--shard", "0/3") == 0
    (inp / "c.nii.gz").write_bytes(b"not a volume any more")
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--shard", "2/3") == 1
    assert main(["screen", "--merge-shards", str(out)]) == 1  # one case failed
    assert [r["case_id"] for r in _rows(out / "summary.csv")] == ["a", "b"]
    assert [r["case_id"] for r in _rows(out / "failures.csv")] == ["c"]
    merged = json.load(open(out / "summary.json"))
    assert [r["case_id"] for r in merged["cases"]] == ["a", "b"] and merged["shards"] == 3
    assert merged["cases"][0]["infected_ml"] == json.load(open(out / "a.json"))["infected_ml"]
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--shard", "0/2", "--overwrite") == 1  # a, c (broken)
    caplog.clear()
    assert main(["screen", "--merge-shards", str(out)]) == 2
    assert "2 shard counts" in caplog.text
    assert main(["screen", "--merge-shards", str(out), str(inp)]) == 2


@pytest.mark.parametrize("args,words", [(["--window", "250,-1250"], "HIGH must be greater"),
                                        (["--shard", "2/2"], "0 ≤ K < N"),
                                        (["--threshold", "1.5"], "threshold"),
                                        (["--writers", "0"], "--writers ≥ 1"),
                                        (["--no-checkpoint"], "--checkpoint is required"),
                                        (["--model", "nosuch"], "unknown model; known models: "),
                                        (["--device", "cuda:0"], "CUDA is not available"),
                                        (["--device", "mps"], "--device 'mps': expected auto, cpu, cuda or cuda:N"),
                                        (["--device", "gpu"], "--device 'gpu': expected auto, cpu, cuda or cuda:N"),
                                        (["--decode-timeout", "-1"], "--decode-timeout must be ≥ 0")])
def test_usage_errors(tmp_path, ckpt, caplog, args, words):
    import torch

    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    inp = tmp_path / "in"
    _three_cases(inp)
    extra = [] if args == ["--no-checkpoint"] else ["--checkpoint", ckpt, *args]
    assert screen(inp, "-o", tmp_path / "out", *extra) == 2
    assert words in caplog.text
    assert "tiny_screen_test" in caplog.text or args[0] != "--model"
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_and_list_files_are_usage_errors(tmp_path, ckpt, caplog):
    import torch

    inp = tmp_path / "in"
    _three_cases(inp)
    state = torch.load(ckpt, weights_only=True)
    for config, words in (({"nosuch": 1}, "config does not fit model 'tiny_screen_test'"),
                          ([1, 2], "config in the checkpoint is not a dict"),
                          ({"hidden": "four"}, "config does not fit")):
        torch.save(dict(state, config=config), str(tmp_path / "bad.pt"))
        caplog.clear()
        assert screen(inp, "-o", tmp_path / "out", "--checkpoint", tmp_path / "bad.pt") == 2
        assert words in caplog.text and "Traceback" not in caplog.text, caplog.text
    # files that are not checkpoints: one line naming the file and what was expected (issue 24)
    (tmp_path / "text.pt").write_bytes(b"ey, this is not a torch file" * 4)  # torch said "KeyError: 101"
    torch.save(torch.nn.Conv2d(1, 1, 1), str(tmp_path / "module.pt"))  # torch: advice to set weights_only=False
    (tmp_path / "cut.pt").write_bytes(open(ckpt, "rb").read()[:500])
    for name, words in (("text.pt", "is not a torch file"), ("module.pt", "holds Python objects other than tensors"),
                        ("cut.pt", "damaged or not a torch file")):
        caplog.clear()
        assert screen(inp, "-o", tmp_path / "out", "--checkpoint", tmp_path / name) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\n" not in errors[0] and words in errors[0], errors
        assert str(tmp_path / name) in errors[0] and "expected a checkpoint written by `covseg train`" in errors[0]
        assert "weights_only" not in errors[0]
    lst = tmp_path / "cases.txt"
    lst.write_bytes(b"in/a.nii.gz\n\x89PNG\r\n\x1a\n\x00\x00")
    assert screen(lst, "-o", tmp_path / "out", "--checkpoint", ckpt) == 2
    assert "not UTF-8 text" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing is created before the inputs and checkpoint pass


def test_device_cuda_under_torchrun_follows_local_rank(monkeypatch):
    import torch

    from covseg_fast.inference.screen_run import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == resolve_device("auto") == "cuda:3"
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("cpu") == "cpu"  # explicit wins
    monkeypatch.setenv("LOCAL_RANK", "5")
    from covseg_fast.inference.errors import UsageError

    with pytest.raises(UsageError, match="LOCAL_RANK=5.*GPU 5 does not exist; this machine has 4"):
        resolve_device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "zero")
    with pytest.raises(UsageError, match="LOCAL_RANK='zero' is not a GPU index"):
        resolve_device("cuda")
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == "cuda:0"


def test_log_lines_do_not_break_the_progress_bar(tmp_path, ckpt, capsys):
    """A warning while the bar shows is written through tqdm: on its own line, the bar redrawn after it."""
    import sys

    inp = tmp_path / "in"
    _three_cases(inp)
    (inp / "bad.nii.gz").write_bytes(b"not a volume")
    handler = logging.StreamHandler(sys.stderr)  # what the CLI's logging.basicConfig installs
    logging.getLogger().addHandler(handler)
    try:
        assert main(["screen", str(inp), "-o", str(tmp_path / "out"), "--checkpoint", ckpt, "--workers", "0"]) == 1
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    lines = [seg.split("\r")[-1] for seg in err.split("\n")]  # what each terminal line ends up showing
    failed = [ln for ln in lines if "FAILED bad" in ln]
    assert failed and all(ln.startswith("FAILED bad") for ln in failed), failed
    assert "screening: 100%" in err


def test_no_masks_and_json_report(tmp_path, ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    _three_cases(inp)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--no-masks", "--report-format", "json") == 0
    assert sorted(os.listdir(out)) == sorted([f"{c}{s}" for c in "abc" for s in (".json", "_overlay.png")] +
                                             ["summary.json", "failures.csv", "index.html"])
    report = json.load(open(out / "summary.json"))
    assert [r["case_id"] for r in report["cases"]] == ["a", "b", "c"] and report["failures"] == []
    rec = json.load(open(out / "a.json"))
    assert "mask" not in rec["outputs"] and report["cases"][0]["mask"] == ""
    # 32×32×3 voxels of 0.8 mm hold no lung: nothing is counted, what the model marked is reported as excluded
    assert rec["infected_ml"] == 0 and rec["excluded_outside_lung_ml"] > 0 and rec["burden_pct"] is None
    assert "no lung found" in rec["warnings"][0] and rec["status"] == "warning"
    # --resume knows complete cases by the outputs of this plan (no masks expected)
    assert screen(inp, "-o", out, "--checkpoint", ckpt, "--no-masks", "--report-format", "json", "--resume") == 0
    assert {r["resumed"] for r in json.load(open(out / "summary.json"))["cases"]} == {True}


def test_demo_volume_end_to_end_with_worker_processes(tmp_path, ckpt):
    demo = screen_cli.DEMO_VOLUME
    src = nib.load(demo)
    out = tmp_path / "out"
    rc = main(["screen", "--demo", "--checkpoint", ckpt, "-o", str(out), "--workers", "1", "--no-progress",
               "--save-probabilities", "--batch-size", "24", "--save-unrestricted-mask", "--save-lung-mask"])
    assert rc == 0
    m = nib.load(str(out / "demo_ct_infection.nii.gz"))
    assert m.shape == src.shape == (128, 128, 64)
    np.testing.assert_allclose(m.affine, src.affine, atol=1e-5)
    hu = np.asanyarray(src.dataobj)
    mask = np.asarray(m.dataobj) > 0
    raw = np.asarray(nib.load(str(out / "demo_ct_infection_unrestricted.nii.gz")).dataobj) > 0
    # the tiny model marks bright tissue: its mask agrees with HU > -425 except at edges blurred by the
    # 128 → 64 → 128 in-plane resampling to the tiny model's input size
    assert (raw == (hu > THRESH_HU)).mean() > 0.95
    # the mask written is the model's within 5 mm of the lungs: no infection voxel outside
    lung = np.asarray(nib.load(str(out / "demo_ct_lungmask.nii.gz")).dataobj) > 0
    allowed = ball_dilation(lung, 5.0, nib.affines.voxel_sizes(src.affine)) | lung
    assert not (mask & ~allowed).any()
    np.testing.assert_array_equal(mask, raw & allowed)
    p = nib.load(str(out / "demo_ct_probabilities.nii.gz")).get_fdata()
    np.testing.assert_array_equal(p >= 0.5 - 1 / 255, raw | (p >= 0.5 - 1 / 255))  # probabilities: unrestricted
    rec = json.load(open(out / "demo_ct.json"))
    assert rec["status"] == "ok" and rec["lung_checks"]["passed"] and rec["warnings"] == []
    vox = abs(np.linalg.det(src.affine[:3, :3])) / 1000
    assert 4500 < rec["lung_checks"]["lung_mask_ml"] < 6500 and rec["slices"] == 64 and rec["covseg_version"]
    assert rec["lung_checks"]["lung_mask_ml"] == pytest.approx(lung.sum() * vox, abs=0.01)
    # lung volume: the lung mask plus the counted infection in its margin (lung the air threshold missed)
    assert rec["lung_ml"] == pytest.approx((lung | mask).sum() * vox, abs=0.01)
    assert rec["infected_ml"] == pytest.approx(mask.sum() * vox, abs=0.01)
    assert rec["window_hu"] == [-1250.0, 250.0] and rec["threshold"] == 0.5 and rec["device"] == "cpu"
    assert rec["note"] == "research use, not a medical device"
    from PIL import Image

    assert Image.open(out / "demo_ct_overlay.png").size == (768, 44 + 512 + 24)  # header, 2 × 3 tiles, legend
    assert [r["case_id"] for r in _rows(out / "summary.csv")] == ["demo_ct"]


def test_demo_without_shipped_checkpoint_says_so(tmp_path, caplog):
    if os.path.isfile(screen_cli.DEMO_CHECKPOINT):
        pytest.skip("the demo checkpoint is shipped in this build")
    assert main(["screen", "--demo", "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "demo_checkpoint.pt" in caplog.text and "not shipped" in caplog.text


@pytest.mark.data
@pytest.mark.slow
def test_real_dicom_and_nifti_give_the_same_mask_in_world_space(shared_data, tmp_path, ckpt):
    d = os.path.join(shared_data, "ct", "lung_pet_ct_dx_A0001")
    out = tmp_path / "out"
    assert screen(os.path.join(d, "dicom"), os.path.join(d, "Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz"),
                  "-o", out, "--checkpoint", ckpt, "--no-montage", "--workers", 1) == 0
    src = nib.load(os.path.join(d, "Lung_Dx-A0001_5mm_kernelL_LPS.nii.gz"))
    m_nii = nib.load(str(out / "Lung_Dx-A0001_5mm_kernelL_LPS_infection.nii.gz"))
    m_dcm = nib.load(str(out / "dicom_infection.nii.gz"))
    np.testing.assert_allclose(m_nii.affine, src.affine, atol=1e-5)  # NIfTI input: its own affine
    a, b = nib.as_closest_canonical(m_nii), nib.as_closest_canonical(m_dcm)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)          # same world grid
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    r_nii = json.load(open(out / "Lung_Dx-A0001_5mm_kernelL_LPS.json"))
    r_dcm = json.load(open(out / "dicom.json"))
    assert r_dcm["format"] == "dicom" and r_nii["lung_ml"] == r_dcm["lung_ml"]
    assert 3000 < r_nii["lung_ml"] < 8000 and r_nii["infected_ml"] == r_dcm["infected_ml"]


@pytest.mark.cuda
def test_cuda_pipeline_matches_cpu(tmp_path, ckpt):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    inp = tmp_path / "in"
    _three_cases(inp)
    assert screen(inp, "-o", tmp_path / "cpu", "--checkpoint", ckpt, "--device", "cpu") == 0
    assert screen(inp, "-o", tmp_path / "gpu", "--checkpoint", ckpt, "--device", "cuda", "--workers", 2) == 0
    for c in "abc":
        a = np.asarray(nib.load(str(tmp_path / "cpu" / f"{c}_infection.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "gpu" / f"{c}_infection.nii.gz")).dataobj)
        assert (a == b).mean() > 0.999  # bf16 autocast may flip voxels at the decision boundary only


def test_progress_counts_slices_and_moves_within_a_volume():
    from covseg_fast.inference.progress import ScreenProgress

    class Bar:
        n = total = 0
        postfix = ""

        def update(self, k):
            self.n += k

        def set_postfix_str(self, text):
            self.postfix = text

        def refresh(self):
            pass

        def close(self):
            pass

    bar = Bar()
    p = ScreenProgress(bar, volumes=3)
    p.decoded(100)
    assert bar.total == 300  # 100 known + 2 volumes still to decode at the mean so far
    p.inferred(16)
    assert bar.n == 16 and p.finished == 0  # moved within the first volume
    p.volume_finished(decoded=False)  # the second volume fails to decode: no slices to come from it
    assert bar.total == 200 and bar.postfix.startswith("1/3 volumes")
    p.decoded(40)
    assert bar.total == 140
    p.inferred(124)
    p.volume_finished()
    p.volume_finished()
    p.close()
    assert bar.n == bar.total == 140 and bar.postfix.startswith("3/3 volumes")
