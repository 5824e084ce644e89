"""A .nii.gz is read in full with its gzip CRC-32 and length checked; valid gzip variants still read.

The damaged files themselves (flipped byte, bad CRC, bad length, trailing junk, cut tails) are in
``tests.ct_helpers.write_bad_inputs`` and checked by ``test_bad_inputs.py`` and the screening tests.
"""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

from covseg_fast.io import read_nifti
from tests.ct_helpers import axis_affine, phantom


def _gzip_members(data: bytes, parts: int) -> bytes:
    """``data`` as ``parts`` concatenated gzip members (what bgzip and `cat a.gz b.gz` produce)."""
    step = -(-len(data) // parts)
    return b"".join(gzip.compress(data[i:i + step]) for i in range(0, len(data), step))


def test_valid_gzip_variants_read_like_the_plain_file(tmp_path):
    hu = np.round(phantom((20, 18, 5)))
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(hu.astype(np.int16), axis_affine("LPS")), str(plain))
    ref = read_nifti(str(plain))
    raw = plain.read_bytes()
    variants = {"one.nii.gz": gzip.compress(raw), "members.nii.gz": _gzip_members(raw, 3),
                "zeropad.nii.gz": gzip.compress(raw) + b"\0" * 16,   # zero padding after the stream is legal
                "level1.nii.gz": gzip.compress(raw, compresslevel=1)}
    n2 = tmp_path / "n2.nii"
    nib.save(nib.Nifti2Image(hu.astype(np.int16), axis_affine("LPS")), str(n2))
    variants["nifti2.nii.gz"] = gzip.compress(n2.read_bytes())
    for name, payload in variants.items():
        (tmp_path / name).write_bytes(payload)
        vol = read_nifti(str(tmp_path / name))
        np.testing.assert_array_equal(vol.data, ref.data, err_msg=name)
        np.testing.assert_allclose(vol.affine, ref.affine, err_msg=name)
        assert vol.source_header["sizeof_hdr"] == (540 if name == "nifti2.nii.gz" else 348)

