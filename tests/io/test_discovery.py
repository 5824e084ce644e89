"""Inputs → cases: files, directories (recursive), globs, list files; stable unique ids."""
from __future__ import annotations

import os

import pytest

from covseg_fast.io import DiscoveryError, discover
from tests.ct_helpers import axis_affine, phantom, save_dicom_series, save_nifti


def _tree(root):
    a = root / "site1"
    b = root / "site2"
    a.mkdir()
    b.mkdir()
    save_nifti(str(a / "p1.nii.gz"), phantom((6, 6, 2)), axis_affine("LPS"))
    save_nifti(str(b / "p1.nii.gz"), phantom((6, 6, 2)), axis_affine("RAS"))
    save_nifti(str(b / "p2.nii"), phantom((6, 6, 2)), axis_affine("RAS"))
    save_dicom_series(str(b / "series7"), phantom((6, 6, 3)))
    (b / "notes.txt.bak").write_text("ignored")


def test_directory_glob_list_and_ids(tmp_path):
    _tree(tmp_path)
    cases, roots = discover([str(tmp_path)])
    ids = [c.case_id for c in cases]
    assert sorted(ids) == sorted(["site1__p1", "site2__p1", "p2", "series7"])
    assert {c.case_id: c.kind for c in cases}["series7"] == "dicom"
    assert roots == [str(tmp_path)]
    g, _ = discover([str(tmp_path / "site2" / "*.nii*")])
    assert [c.case_id for c in g] == ["p1", "p2"]
    lst = tmp_path / "list.txt"
    lst.write_text("# cases\nsite2/p2.nii\n\nsite2/series7\n")
    l, _ = discover([str(lst)])
    assert [(c.case_id, c.kind) for c in l] == [("p2", "nifti"), ("series7", "dicom")]
    assert discover([str(tmp_path)])[0] == cases  # stable


def test_missing_inputs_are_a_usage_error(tmp_path):
    """Issue 24: a path that does not exist (given, or in a list file) stops the run before anything is
    written; it used to become a failed case after the output folder was made."""
    _tree(tmp_path)
    lst = tmp_path / "list.txt"
    lst.write_text("site2/p2.nii\nmissing.nii.gz\n")
    with pytest.raises(DiscoveryError, match=r"input not found: .*missing.nii.gz; check the path"):
        discover([str(lst)])
    with pytest.raises(DiscoveryError, match=r"inputs not found: .*nope1, .*nope2"):
        discover([str(tmp_path / "site1"), str(tmp_path / "nope1"), str(tmp_path / "nope2")])


def test_empty_folder_fifo_and_link_loop_become_failed_cases(tmp_path):
    """An empty input folder is a case that fails with the reason; a FIFO or a link loop with a NIfTI name is
    a case its reader fails at once (discovery never opens it: opening a FIFO blocks)."""
    _tree(tmp_path)
    (tmp_path / "empty").mkdir()
    os.mkfifo(tmp_path / "site1" / "pipe.nii.gz")
    os.symlink("loop.nii.gz", tmp_path / "site1" / "loop.nii.gz")
    cases, _ = discover([str(tmp_path / "site1"), str(tmp_path / "empty"), str(tmp_path / "site1" / "pipe.nii.gz")])
    got = {c.case_id: (c.kind, c.problem) for c in cases}
    assert got == {"empty": ("invalid", "folder holds no NIfTI files (.nii, .nii.gz) or DICOM series"),
                   "loop": ("nifti", ""), "p1": ("nifti", ""), "pipe": ("nifti", "")}


def test_a_folder_named_like_a_nifti_file_is_never_skipped_silently(tmp_path):
    """x.nii.gz/ met in the walk: a DICOM series is found as one whatever its name; a folder holding scans
    has them found; one holding nothing to screen (or a link to a folder, not followed) is a failed case."""
    _tree(tmp_path)
    save_dicom_series(str(tmp_path / "site1" / "series.nii.gz"), phantom((6, 6, 3)))
    (tmp_path / "site1" / "empty.nii.gz").mkdir()
    (tmp_path / "site1" / "outer.nii").mkdir()
    save_nifti(str(tmp_path / "site1" / "outer.nii" / "inner.nii.gz"), phantom((6, 6, 2)), axis_affine("LPS"))
    os.symlink(tmp_path / "site2", tmp_path / "site1" / "linked.nii.gz")
    cases, _ = discover([str(tmp_path / "site1")])
    got = {c.case_id: (c.kind, c.problem) for c in cases}
    assert got["series"] == ("dicom", "") and got["inner"] == ("nifti", "") and got["p1"] == ("nifti", "")
    assert got["empty"][0] == "invalid" and got["empty"][1].startswith("a folder named like a NIfTI file")
    assert got["linked"][0] == "invalid" and "symbolic link to a folder" in got["linked"][1]
    assert "outer" not in got  # it held a scan: nothing was skipped
    # given itself, an empty one is an input folder with nothing to screen
    with pytest.raises(DiscoveryError, match="no NIfTI files or DICOM series"):
        discover([str(tmp_path / "site1" / "empty.nii.gz")])
    alone, _ = discover([str(tmp_path / "site1" / "series.nii.gz")])
    assert [(c.case_id, c.kind) for c in alone] == [("series", "dicom")]


def test_nothing_found_is_a_usage_error(tmp_path):
    with pytest.raises(DiscoveryError, match="matches nothing"):
        discover([str(tmp_path / "*.nii.gz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiscoveryError, match="no NIfTI files or DICOM series"):
        discover([str(tmp_path / "empty")])
    with pytest.raises(DiscoveryError, match="no inputs"):
        discover([])


def test_case_ids_are_unique_and_deterministic():
    from covseg_fast.io.discovery import case_ids

    cases = sorted([("/d/x.nii", "nifti"), ("/d/x.nii.gz", "nifti"), ("/d/x", "dicom"),
                    ("/d/a/p1.nii.gz", "nifti"), ("/d/b/P1.nii.gz", "nifti"),
                    ("/d/summary.nii.gz", "nifti"), ("/d/summary_case.nii.gz", "nifti"),
                    ("/d/FAILURES_shard1of4.nii", "nifti"), ("/d/.hidden.nii.gz", "nifti"),
                    ("/d/Up.nii.gz", "nifti"), ("/d/up.nii.gz", "nifti"), ("/d/ü b.nii.gz", "nifti")])
    ids = dict(zip((p for p, _ in cases), case_ids(cases)))
    assert ids == {"/d/x.nii": "x_nii", "/d/x.nii.gz": "x_nii_gz", "/d/x": "x_dicom",
                   "/d/a/p1.nii.gz": "a__p1", "/d/b/P1.nii.gz": "b__P1",           # letter case: one file system
                   "/d/summary.nii.gz": "summary_case", "/d/summary_case.nii.gz": "summary_case_2",
                   "/d/FAILURES_shard1of4.nii": "FAILURES_shard1of4_case", "/d/.hidden.nii.gz": "_hidden",
                   "/d/Up.nii.gz": "Up", "/d/up.nii.gz": "up_2", "/d/ü b.nii.gz": "__b"}
    assert len({i.lower() for i in ids.values()}) == len(ids)
    assert case_ids(cases) == list(ids.values())  # the same inputs, the same ids


def test_nifti_beside_dicom_and_gz_on_disk(tmp_path):
    save_nifti(str(tmp_path / "x.nii"), phantom((6, 6, 2)), axis_affine("LPS"))
    save_nifti(str(tmp_path / "x.nii.gz"), phantom((6, 6, 2)), axis_affine("LPS"))
    save_dicom_series(str(tmp_path / "x"), phantom((6, 6, 3)))
    cases, _ = discover([str(tmp_path)])
    assert [(c.case_id, c.kind) for c in cases] == [("x_dicom", "dicom"), ("x_nii", "nifti"), ("x_nii_gz", "nifti")]


def test_list_file_that_is_not_text_is_a_usage_error(tmp_path):
    lst = tmp_path / "cases.txt"
    lst.write_bytes(b"a.nii.gz\n\xff\xfe\x00binary")
    with pytest.raises(DiscoveryError, match="not UTF-8 text"):
        discover([str(lst)])
