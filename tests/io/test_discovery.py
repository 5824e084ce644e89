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
    lst.write_text("# cases\nsite2/p2.nii\n\nsite2/series7\nmissing.nii.gz\n")
    l, _ = discover([str(lst)])
    assert [(c.case_id, c.kind) for c in l] == [("missing", "missing"), ("p2", "nifti"), ("series7", "dicom")]
    assert discover([str(tmp_path)])[0] == cases  # stable


def test_nothing_found_is_a_usage_error(tmp_path):
    with pytest.raises(DiscoveryError, match="matches nothing"):
        discover([str(tmp_path / "*.nii.gz")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiscoveryError, match="no NIfTI files or DICOM series"):
        discover([str(tmp_path / "empty")])
    with pytest.raises(DiscoveryError, match="no inputs"):
        discover([])
