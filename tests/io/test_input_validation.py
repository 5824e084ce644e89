"""Inputs validated before they can hurt (issue 24): every input of the broken corpus fails alone with its
one-line reason, without hanging; headers are checked, never repaired; memory follows the real data."""
from __future__ import annotations

import gzip
import os
import re
import threading

import nibabel as nib
import numpy as np
import pytest

from covseg_fast.inference.decoding import decode_case
from covseg_fast.io import VolumeError, discover, read_dicom_series, read_nifti
from covseg_fast.io.nifti import _scaled_float32
from tests.broken_corpus import write_corpus
from tests.ct_helpers import axis_affine, phantom, save_nifti
from tests.privileges import as_unprivileged

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets and file modes of POSIX systems")


def _decode_all(cases):
    out = {}
    for case in cases:
        out[case.case_id] = decode_case(case)
    return out


def test_every_broken_input_fails_alone_with_its_reason(tmp_path):
    corpus = write_corpus(str(tmp_path / "in"))
    cases, _ = discover([str(tmp_path / "in"), *corpus.extra_inputs])
    got = {}
    worker = threading.Thread(target=lambda: got.update(_decode_all(cases)), daemon=True)
    worker.start()
    worker.join(timeout=120)  # a FIFO that is opened would block here forever
    assert not worker.is_alive(), "decoding the corpus hung"
    root = os.geteuid() == 0
    for case, words in corpus.broken.items():
        if root and case in corpus.non_root:
            continue  # root reads these; see test_unreadable_for_a_normal_user
        err = got[case].get("error")
        assert err and re.search(words, err), (case, err)
        assert "\n" not in err and len(err) < 400, (case, err)
    for case in corpus.not_ct | corpus.good:
        assert "error" not in got[case], (case, got[case])
    for case in corpus.not_ct:
        assert any("does not look like CT in HU" in w for w in got[case]["volume"].warnings)
    assert "label map (3 distinct integer values in [0, 2])" in got["label_map"]["volume"].warnings[0]
    assert "8-bit image" in got["eight_bit"]["volume"].warnings[0]


def test_unreadable_for_a_normal_user(open_tmp):
    corpus = write_corpus(os.path.join(open_tmp, "in"))
    folder = os.path.join(open_tmp, "in")

    def read_them():
        cases, _ = discover([folder])
        by_id = {c.case_id: c for c in cases}
        return {case: decode_case(by_id[case]).get("error") for case in sorted(corpus.non_root)}

    got = as_unprivileged(read_them)
    for case in corpus.non_root:
        assert got[case] and re.search(corpus.broken[case], got[case]), (case, got[case])


def test_nibabel_would_have_repaired_these_headers(tmp_path):
    """The damage nibabel fixes silently (and the volume then screened as ok with 1 mm voxels) fails here."""
    corpus = write_corpus(str(tmp_path / "in"))
    for case in ("sizeof_540", "sizeof_1000", "pixdim1_zero", "pixdim3_negative", "qform_code_bad"):
        path = next(os.path.join(tmp_path, "in", f) for f in os.listdir(tmp_path / "in") if f.startswith(case + "."))
        nib.load(path).get_fdata()  # nibabel reads it, repaired
        with pytest.raises(VolumeError, match="damaged NIfTI header") as info:
            read_nifti(path)
        assert re.search(corpus.broken[case], str(info.value))
        assert "nothing is repaired" in str(info.value)


@pytest.mark.parametrize("dtype,slope,inter", [(np.int16, None, None), (np.uint16, 1.0, -1024.0),
                                              (np.int32, 0.5, -1000.0), (np.float32, None, None),
                                              (np.uint8, 4.0, -1024.0)])
def test_slab_reading_equals_nibabel(tmp_path, dtype, slope, inter):
    """Voxels are read and scaled a slab of slices at a time; the result is nibabel's, bit for bit."""
    hu = np.round(phantom((20, 18, 11))) if dtype != np.uint8 else np.round(phantom((20, 18, 11)) / 4) * 4
    path = save_nifti(str(tmp_path / "x.nii.gz"), hu, axis_affine("LPS"), dtype=dtype, slope=slope, inter=inter)
    img = nib.load(path)
    want = np.asanyarray(img.dataobj).astype(np.float32)
    for slab in (1, 20 * 18 * 8 * 3, 1 << 30):  # one slice, three slices, everything at once
        np.testing.assert_array_equal(_scaled_float32(img, (20, 18, 11), slab_bytes=slab), want)
    np.testing.assert_array_equal(read_nifti(path).data, want[::-1, ::-1, :])


@pytest.mark.parametrize("affine", [np.diag([-1.0, -1, 1, 1]), np.diag([1.0, 1, -3, 1]),
                                    np.array([[0, 0, -2, 10], [0, 1.5, 0, 5], [-0.8, 0, 0, 3], [0, 0, 0, 1.0]]),
                                    np.array([[0, 1.0, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])])
def test_slabs_go_straight_into_the_canonical_frame(tmp_path, affine):
    """Read into the canonical frame slab by slab (flips, a flipped slice axis, swapped axes): the same array as
    reading everything, then reorienting; one float32 copy instead of two."""
    from nibabel import orientations as nio

    hu = np.round(phantom((20, 18, 11)))
    path = save_nifti(str(tmp_path / "x.nii.gz"), hu, affine, dtype=np.int16, slope=0.5, inter=-3.0)
    img = nib.load(path)
    ornt = nio.io_orientation(affine)
    want = np.ascontiguousarray(nio.apply_orientation(np.asanyarray(img.dataobj).astype(np.float32), ornt))
    for slab in (1, 20 * 18 * 8 * 3, 1 << 30):
        got = _scaled_float32(img, (20, 18, 11), ornt, slab_bytes=slab)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(read_nifti(path).data, want)


def test_a_small_file_claiming_a_huge_volume_is_refused_before_allocating_it(tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), axis_affine("LPS"))
    raw = bytearray(img.to_bytes())
    hdr = nib.Nifti1Header(bytes(raw[:348]), check=False)
    hdr.set_data_shape((512, 512, 20000))  # 10.5 GB of int16 claimed by a 1 KB file
    raw[:348] = hdr.binaryblock
    (tmp_path / "claim.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(VolumeError, match=r"truncated voxel data: the header claims shape \(512, 512, 20000\) "
                                          r"int16 = 10.5 GB from byte 352, the decompressed file holds 1.0 KB"):
        read_nifti(str(tmp_path / "claim.nii.gz"))


def test_decompression_stops_at_what_the_header_describes(tmp_path):
    """A stream far longer than its header's voxels (a decompression bomb) is refused, not decompressed."""
    raw = nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), axis_affine("LPS")).to_bytes()
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(raw + bytes(8 << 20), compresslevel=1))
    with pytest.raises(VolumeError, match="decompresses to more than the header describes"):
        read_nifti(str(tmp_path / "bomb.nii.gz"))
    (tmp_path / "slack.nii.gz").write_bytes(gzip.compress(raw + bytes(1000)))  # a little extra is accepted
    assert read_nifti(str(tmp_path / "slack.nii.gz")).data.shape == (8, 8, 8)


def test_dicom_folder_with_a_fifo_beside_its_slices_still_reads(tmp_path):
    corpus = write_corpus(str(tmp_path / "in"))
    assert "dcm_fifo_beside_slices" in corpus.good
    vol = read_dicom_series(str(tmp_path / "in" / "dcm_fifo_beside_slices"))
    assert vol.data.shape == (8, 8, 5)
