"""`covseg screen --output-format dicom-seg|both`: the DICOM-SEG references its source series and holds, voxel
for voxel, the NIfTI masks of the same run mapped to the series geometry (synthetic series, and the shared
Lung-PET-CT-Dx series uncompressed and JPEG 2000)."""
from __future__ import annotations

import glob
import os

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom", reason="DICOM-SEG output needs highdicom (pip install 'covseg_fast[dicom]')")

from covseg_fast.cli.main import main  # noqa: E402
from tests.ct_helpers import chest_phantom, save_dicom_series, save_nifti  # noqa: E402
from tests.inference.tiny_model import make_checkpoint  # noqa: E402

SPACING = (4.0, 4.0, 5.0)
SHARED_SERIES = os.path.join("ct", "lung_pet_ct_dx_A0001", "dicom")


def screen(*args) -> int:
    return main(["screen", "--no-progress", "--workers", "0", *map(str, args)])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("ck") / "tiny.pt"))


@pytest.fixture(scope="module")
def chest_series(tmp_path_factory):
    """The chest phantom as a CT series: LPS columns/rows, slices going down (toward -z)."""
    hu, _ = chest_phantom(spacing=SPACING)
    lps = np.round(hu[::-1, ::-1, ::-1])
    return save_dicom_series(str(tmp_path_factory.mktemp("series") / "chest"), lps,
                             spacing=SPACING, origin=(-190.0, -190.0, 300.0), intercept=-3000.0)


def source_slices(folder: str) -> list:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(glob.glob(os.path.join(folder, "*.dcm")))]


def nifti_frame_index(img, ds) -> int:
    """The NIfTI slice k holding DICOM slice ``ds``, from the geometry alone (its first pixel is voxel (0, 0, k))."""
    ras = np.array([-1.0, -1.0, 1.0]) * np.array([float(v) for v in ds.ImagePositionPatient])
    ijk = np.linalg.inv(img.affine) @ np.append(ras, 1.0)
    assert np.allclose(ijk[:2], 0.0, atol=1e-3), ijk
    k = int(round(ijk[2]))
    assert abs(ijk[2] - k) < 1e-3
    return k


def check_seg(seg_path: str, series: str, expected: dict[str, np.ndarray]) -> dict:
    """Assert the DICOM-SEG at ``seg_path`` references every slice of ``series`` and that its segment with each
    label in ``expected`` equals, slice for slice, that (source-grid NIfTI) mask; returns a few numbers."""
    seg = hd.seg.segread(seg_path)
    src = source_slices(series)
    assert seg.StudyInstanceUID == src[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    (ref,) = seg.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == src[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == {d.SOPInstanceUID for d in src}
    assert "research" in seg.SeriesDescription.lower()
    labels = {str(seg.get_segment_description(n).segment_label): n for n in range(1, seg.number_of_segments + 1)}
    assert sorted(labels) == sorted(expected)
    for label, n in labels.items():
        item = seg.get_segment_description(n)
        assert "research use" in item.SegmentDescription and "model tiny_screen_test" in item.SegmentDescription
        assert "tiny_screen_test" in item.SegmentAlgorithmName
    uids = [d.SOPInstanceUID for d in src]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=list(labels.values()),
                                               ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    img = nib.load(next(iter(expected.values()))[1])
    voxels = 0
    for i, ds in enumerate(src):
        k = nifti_frame_index(img, ds)
        for s, label in enumerate(labels):
            want = expected[label][0][:, :, k].T  # NIfTI (columns, rows) → DICOM (rows, columns)
            np.testing.assert_array_equal(pixels[i, :, :, s].astype(bool), want, err_msg=f"{label}, slice {k}")
            voxels += int(want.sum())
    return {"slices": len(src), "segments": len(labels), "voxels": voxels}


def nifti(path: str) -> tuple[np.ndarray, str]:
    return np.asarray(nib.load(path).dataobj), path


def expected_binary(out: str, case: str) -> dict:
    inf, inf_path = nifti(os.path.join(out, f"{case}_infection.nii.gz"))
    lung, lung_path = nifti(os.path.join(out, f"{case}_lungmask.nii.gz"))
    return {"infection": (inf == 1, inf_path), "right lung": (lung == 1, lung_path),
            "left lung": (lung == 2, lung_path)}


def test_synthetic_series_round_trip_binary_with_lungs(chest_series, tmp_path, ckpt):
    out = tmp_path / "out"
    assert screen(chest_series, "--checkpoint", ckpt, "-o", out, "--output-format", "both", "--save-lung-mask") == 0
    expected = expected_binary(str(out), "chest")
    assert expected["infection"][0].any() and expected["right lung"][0].any()
    res = check_seg(str(out / "chest_seg.dcm"), chest_series, expected)
    assert res["slices"] == 60 and res["segments"] == 3


def test_multiclass_series_has_a_segment_per_class_with_their_codes(chest_series, tmp_path):
    ckpt = make_checkpoint(str(tmp_path / "mc.pt"), multiclass=True)
    out = tmp_path / "out"
    # a window that puts aerated lung (-860 HU) at grey 0.95: consolidation (class 2) there, GGO (1) at its edges
    assert screen(chest_series, "--checkpoint", ckpt, "-o", out, "--output-format", "both",
                  "--window=-2000,-800") == 0
    labels, path = nifti(str(out / "chest_infection.nii.gz"))
    assert (labels == 1).any() and (labels == 2).any()
    check_seg(str(out / "chest_seg.dcm"), chest_series,
              {"ground-glass opacity": (labels == 1, path), "consolidation": (labels == 2, path)})
    seg = hd.seg.segread(str(out / "chest_seg.dcm"))
    types = {str(seg.get_segment_description(n).segment_label): seg.get_segment_description(n).segmented_property_type
             for n in (1, 2)}
    assert (types["ground-glass opacity"].value, types["ground-glass opacity"].scheme_designator) == ("112120", "DCM")
    assert (types["consolidation"].value, types["consolidation"].scheme_designator) == ("95436008", "SCT")


def test_dicom_seg_only_writes_no_nifti_mask_and_resumes(chest_series, tmp_path, ckpt):
    out = tmp_path / "out"
    assert screen(chest_series, "--checkpoint", ckpt, "-o", out, "--output-format", "dicom-seg") == 0
    assert (out / "chest_seg.dcm").is_file() and not (out / "chest_infection.nii.gz").exists()
    before = os.stat(out / "chest_seg.dcm").st_mtime_ns
    assert screen(chest_series, "--checkpoint", ckpt, "-o", out, "--output-format", "dicom-seg", "--resume") == 0
    assert os.stat(out / "chest_seg.dcm").st_mtime_ns == before  # complete: not screened again


def test_nifti_input_with_dicom_seg_only_is_a_usage_error(tmp_path, ckpt, caplog):
    hu, _ = chest_phantom(shape=(32, 32, 8), spacing=SPACING)
    path = save_nifti(str(tmp_path / "vol.nii.gz"), np.round(hu), np.diag([*SPACING, 1.0]))
    out = tmp_path / "out"
    assert screen(path, "--checkpoint", ckpt, "-o", out, "--output-format", "dicom-seg") == 2
    assert "is a NIfTI file" in caplog.text and "--output-format both" in caplog.text
    assert not out.exists()


def test_nifti_input_with_both_writes_nifti_only(tmp_path, ckpt):
    hu, _ = chest_phantom(shape=(48, 48, 12), spacing=SPACING)
    path = save_nifti(str(tmp_path / "vol.nii.gz"), np.round(hu), np.diag([*SPACING, 1.0]))
    out = tmp_path / "out"
    assert screen(path, "--checkpoint", ckpt, "-o", out, "--output-format", "both") in (0, 1)
    assert not glob.glob(str(out / "*.dcm"))


def _jpeg2000_copy(src: str, dst: str) -> str:
    from pydicom.uid import JPEG2000Lossless

    os.makedirs(dst)
    for f in sorted(glob.glob(os.path.join(src, "*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless)
        ds.save_as(os.path.join(dst, os.path.basename(f)), enforce_file_format=True)
    return dst


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["uncompressed", "jpeg2000"])
def test_shared_series_round_trip(shared_data, tmp_path, ckpt, encoding):
    series = os.path.join(shared_data, SHARED_SERIES)
    if not os.path.isdir(series):
        pytest.skip(f"the shared DICOM series is not at {series} "
                    "(set COVSEG_SHARED_DATA or put ../shared beside the checkout)")
    if encoding == "jpeg2000":
        for pkg in ("pylibjpeg", "openjpeg"):
            pytest.importorskip(pkg, reason="JPEG 2000 needs pylibjpeg and pylibjpeg-openjpeg (the test extra)")
        series = _jpeg2000_copy(series, str(tmp_path / "j2k"))
        assert str(pydicom.dcmread(glob.glob(os.path.join(series, "*.dcm"))[0]).file_meta.TransferSyntaxUID) == \
            "1.2.840.10008.1.2.4.90"
    out = tmp_path / "out"
    assert screen(series, "--checkpoint", ckpt, "-o", out, "--output-format", "both", "--save-lung-mask") in (0, 1)
    case = os.path.basename(series)
    res = check_seg(str(out / f"{case}_seg.dcm"), series, expected_binary(str(out), case))
    assert res["slices"] == 64 and res["voxels"] > 0
    print(f"DICOM-SEG round trip, shared series ({encoding}): {res}")
