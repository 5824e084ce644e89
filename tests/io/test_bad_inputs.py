"""Every bad input gives a one-line VolumeError; DICOM series errors (synthetic series)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from covseg_fast.io import VolumeError, read_dicom_series, read_nifti
from covseg_fast.io.dicom import decoder_available
from tests.ct_helpers import phantom, save_dicom_series, write_bad_inputs


def test_each_bad_nifti_has_a_one_line_reason(tmp_path):
    expect = write_bad_inputs(str(tmp_path))
    for case, words in expect.items():
        path = next(str(tmp_path / f) for f in os.listdir(tmp_path) if f.startswith(case + "."))
        with pytest.raises(VolumeError) as info:
            read_nifti(path)
        msg = str(info.value)
        assert words in msg, (case, msg)
        assert "\n" not in msg


def test_dicom_series_geometry_and_values(tmp_path):
    lps = np.round(phantom((24, 20, 5)))
    vol = read_dicom_series(save_dicom_series(str(tmp_path / "s"), lps))
    # canonical RAS: flip the L and P axes of (cols, rows) and put slices in ascending z
    np.testing.assert_array_equal(vol.data, lps[::-1, ::-1, ::-1])
    np.testing.assert_allclose(vol.spacing, (0.8, 0.8, 2.5))
    # voxel 0 of the canonical grid = last column/row of the LOWEST slice: RAS x = -(x0 + 23·0.8)
    np.testing.assert_allclose(vol.affine[:3, 3], [100.0 - 23 * 0.8, 120.0 - 19 * 0.8, 50.0 - 4 * 2.5])


def test_dicom_missing_slice(tmp_path):
    with pytest.raises(VolumeError, match="missing slices: gap of 5.00 mm"):
        read_dicom_series(save_dicom_series(str(tmp_path / "s"), phantom((8, 8, 6)), skip=(3,)))


def test_dicom_duplicate_slice(tmp_path):
    with pytest.raises(VolumeError, match="duplicate slices"):
        read_dicom_series(save_dicom_series(str(tmp_path / "s"), phantom((8, 8, 6)), duplicate=(2,)))


def test_dicom_empty_and_unreadable(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(VolumeError, match="no DICOM image slices"):
        read_dicom_series(str(tmp_path / "e"))
    s = save_dicom_series(str(tmp_path / "s"), phantom((8, 8, 3)))
    raw = open(os.path.join(s, "s001.dcm"), "rb").read()
    with open(os.path.join(s, "s001.dcm"), "wb") as fh:  # truncated in the pixel data
        fh.write(raw[: len(raw) - 40])
    with pytest.raises(VolumeError, match="s001.dcm"):
        read_dicom_series(s)


def _recompress(series: str, tsuid: str, frame: bytes) -> None:
    """Give every slice of ``series`` the transfer syntax ``tsuid`` and one encapsulated ``frame``."""
    import pydicom
    from pydicom.encaps import encapsulate

    for f in sorted(os.listdir(series)):
        ds = pydicom.dcmread(os.path.join(series, f))
        ds.file_meta.TransferSyntaxUID = tsuid
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.save_as(os.path.join(series, f), enforce_file_format=True)


JPEG_LS = "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless: needs pylibjpeg-libjpeg or gdcm (Pillow cannot)
RLE = "1.2.840.10008.1.2.5"         # RLE lossless: pydicom decodes it itself (numpy only)


def test_compressed_without_decoder_names_the_package(tmp_path):
    pytest.importorskip("pydicom")
    if decoder_available(JPEG_LS) is not False:
        pytest.skip("a JPEG-LS decoder is installed (or pydicom cannot tell)")
    s = save_dicom_series(str(tmp_path / "s"), phantom((8, 8, 2)))
    _recompress(s, JPEG_LS, b"\xff\xd8\xff\xf7" + b"\0" * 60)
    with pytest.raises(VolumeError, match="no decoder installed: pip install pylibjpeg-libjpeg"):
        read_dicom_series(s)


def test_corrupt_compressed_data_is_not_called_a_missing_decoder(tmp_path):
    pytest.importorskip("pydicom")
    assert decoder_available(RLE)
    s = save_dicom_series(str(tmp_path / "s"), phantom((8, 8, 2)))
    _recompress(s, RLE, b"\x07\x00\x00\x00" + b"\xff" * 60)  # an RLE header claiming 7 bogus segments
    with pytest.raises(VolumeError) as info:
        read_dicom_series(s)
    msg = str(info.value)
    assert "corrupt compressed data" in msg and "pixel data of s00" in msg and "no decoder" not in msg
    assert "\n" not in msg


def test_rle_compressed_series_reads_like_the_uncompressed_one(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    lps = np.round(phantom((12, 10, 4)))
    plain = read_dicom_series(save_dicom_series(str(tmp_path / "plain"), lps))
    s = save_dicom_series(str(tmp_path / "rle"), lps)
    for f in sorted(os.listdir(s)):
        ds = pydicom.dcmread(os.path.join(s, f))
        ds.compress(RLE)  # pydicom's own RLE encoder
        ds.save_as(os.path.join(s, f), enforce_file_format=True)
    assert str(pydicom.dcmread(os.path.join(s, "s000.dcm")).file_meta.TransferSyntaxUID) == RLE
    vol = read_dicom_series(s)
    np.testing.assert_array_equal(vol.data, plain.data)
    np.testing.assert_allclose(vol.affine, plain.affine)
