"""A corpus of broken CT inputs, built on the fly (tiny volumes: the whole corpus is a few MB).

:func:`write_corpus` writes every kind of damage issue 24 names (truncated, flipped and junk-appended
gzip; wrong dims; NaN/Inf; huge claimed sizes; damaged headers; FIFO, socket, device, link loop; files
and folders unreadable for a non-root user; DICOM series with missing, duplicate, mixed or corrupt
slices) and returns, for each broken input, the regular expression its one-line reason must match.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import socket

import nibabel as nib
import numpy as np

from tests.ct_helpers import axis_affine, phantom, save_dicom_series, save_nifti, write_bad_inputs

SHAPE = (16, 16, 6)
GZIP_WORDS = r"gzip|decompresses to more"  # a flipped bit ends as a CRC, length, stream or size error


@dataclasses.dataclass
class Corpus:
    """``broken``: case id → reason regex; ``extra_inputs``: paths to give besides the folder (an empty
    folder); ``non_root``: case ids that only fail for a user other than root (permissions);
    ``not_ct``: case ids screened with a "does not look like CT" warning; ``good``: inputs that must screen
    (a DICOM series with a FIFO beside its slices); ``sockets``: keep them open while the corpus is used."""

    broken: dict[str, str]
    extra_inputs: list[str]
    non_root: set[str]
    not_ct: set[str]
    good: set[str]
    sockets: list


def _good_bytes() -> bytes:
    img = nib.Nifti1Image(np.round(phantom(SHAPE)).astype(np.int16), axis_affine("LPS"))
    img.set_qform(axis_affine("LPS"), code=1)
    img.set_sform(axis_affine("LPS"), code=1)
    return img.to_bytes()


def _header_edit(raw: bytes, **fields) -> bytes:
    """``raw`` (a .nii) with header fields set (unchecked: nibabel must not repair them here)."""
    hdr = nib.Nifti1Header(raw[:348], check=False)
    for key, value in fields.items():
        if key == "shape":
            hdr["dim"][0] = len(value)
            hdr["dim"][1:len(value) + 1] = value
        elif key.startswith("pixdim"):
            hdr["pixdim"][int(key[-1])] = value
        elif key.startswith("dim"):
            hdr["dim"][int(key[-1])] = value
        else:
            hdr[key] = value
    return hdr.binaryblock + raw[348:]


def _write(folder: str, name: str, data: bytes) -> None:
    with open(os.path.join(folder, name), "wb") as fh:
        fh.write(data)


def write_corpus(folder: str) -> Corpus:
    """Write the corpus into ``folder`` (DICOM series as sub-folders); see :class:`Corpus`."""
    os.makedirs(folder, exist_ok=True)
    broken = {k: _escape(v) for k, v in write_bad_inputs(folder).items()}  # 20 classic ones
    raw = _good_bytes()
    gz = gzip.compress(raw)

    # gzip damage: cut, flipped, junk appended
    for frac in (0.1, 0.25, 0.75, 0.9):
        _write(folder, f"gz_cut{int(frac * 100)}.nii.gz", gz[:int(len(gz) * frac)])
        broken[f"gz_cut{int(frac * 100)}"] = "truncated gzip"
    for n in (1, 2, 7):
        _write(folder, f"gz_tail{n}.nii.gz", gz[:-n])
        broken[f"gz_tail{n}"] = "truncated gzip"
    for pos in (0.2, 0.4, 0.6, 0.8):
        b = bytearray(gz)
        b[int(len(b) * pos)] ^= 0xA5
        _write(folder, f"gz_flip{int(pos * 100)}.nii.gz", bytes(b))
        broken[f"gz_flip{int(pos * 100)}"] = GZIP_WORDS
    b = bytearray(gz)
    b[-1] ^= 0x10  # the length (ISIZE) trailer
    _write(folder, "gz_isize.nii.gz", bytes(b))
    broken["gz_isize"] = "corrupt gzip"
    for name, junk in (("gz_junk_text", b"trailing text"), ("gz_junk_byte", b"\x01"),
                       ("gz_junk_magic", b"\x1f\x8b"), ("gz_junk_random", bytes(range(7, 250, 3)))):
        _write(folder, f"{name}.nii.gz", gz + junk)
        broken[name] = "gzip"
    _write(folder, "gz_empty_file.nii.gz", b"")
    broken["gz_empty_file"] = "not gzip-compressed"
    _write(folder, "gz_of_nothing.nii.gz", gzip.compress(b""))
    broken["gz_of_nothing"] = "not a readable NIfTI"
    _write(folder, "gz_short_header.nii.gz", gzip.compress(raw[:200]))
    broken["gz_short_header"] = "not a readable NIfTI"
    _write(folder, "png_named_gz.nii.gz", b"\x89PNG\r\n\x1a\n" + bytes(100))
    broken["png_named_gz"] = "not gzip-compressed"
    _write(folder, "random_bytes.nii", bytes((i * 37) % 256 for i in range(2000)))
    broken["random_bytes"] = "not a readable NIfTI"
    _write(folder, "empty_plain.nii", b"")
    broken["empty_plain"] = "not a readable NIfTI"

    # wrong dimensions and claimed sizes (memory must follow the data, not these claims)
    header_cases = {
        "dim0_zero": ({"dim0": 0}, "dim\\[0\\]"), "dim0_eight": ({"dim0": 8}, "dim\\[0\\]"),
        "dim_negative": ({"dim2": -16}, "negative dimension"),
        "claims_4gb_gz": ({"shape": (512, 512, 8000)}, "truncated voxel data.*4.2 GB"),
        "claims_70tb": ({"shape": (32767, 32767, 32767)}, "truncated voxel data"),
        "claims_more_slices": ({"shape": (16, 16, 60)}, "truncated voxel data"),
        "sizeof_0": ({"sizeof_hdr": 0}, "sizeof_hdr is 0"), "sizeof_540": ({"sizeof_hdr": 540}, "sizeof_hdr is 540"),
        "sizeof_1000": ({"sizeof_hdr": 1000}, "sizeof_hdr is 1000"),
        "sizeof_349": ({"sizeof_hdr": 349}, "sizeof_hdr is 349"),
        "datatype_unknown": ({"datatype": 9999}, "data code 9999 not recognized"),
        "datatype_zero": ({"datatype": 0}, "data code 0"),
        "vox_offset_zero": ({"vox_offset": 0}, "vox_offset 0 points inside the header"),
        "vox_offset_low": ({"vox_offset": 100}, "vox_offset 100 points inside the header"),
        "vox_offset_far": ({"vox_offset": 10 ** 7}, "truncated voxel data"),
        "sform_code_bad": ({"sform_code": 99}, "sform_code 99 not valid"),
        "qform_code_bad": ({"qform_code": -3}, "qform_code -3 not valid"),
        "magic_pair": ({"magic": b"ni1"}, "hdr/.img pair"),
        "sform_singular": ({"srow_z": [0.0, 0.0, 0.0, 30.0]}, "singular"),
        "sform_nan": ({"srow_x": [np.nan, 0.0, 0.0, 1.0]}, "singular or non-finite"),
    }
    for axis in (1, 2, 3):
        header_cases[f"pixdim{axis}_zero"] = ({f"pixdim{axis}": 0.0}, "must be positive")
        header_cases[f"pixdim{axis}_negative"] = ({f"pixdim{axis}": -0.8}, "must be positive")
    header_cases["pixdim1_nan"] = ({"pixdim1": np.nan}, "non-finite voxel size")
    header_cases["pixdim3_inf"] = ({"pixdim3": np.inf}, "non-finite voxel size")
    for name, (fields, words) in header_cases.items():
        data = _header_edit(raw, **fields)
        if name.endswith("_gz") or name.startswith(("sizeof", "pixdim")):
            _write(folder, f"{name}.nii.gz", gzip.compress(data))
        else:
            _write(folder, f"{name}.nii", data)
        broken[name] = words
    n2 = nib.Nifti2Header()
    n2.set_data_shape((10 ** 6, 10 ** 6, 10 ** 6))  # NIfTI-2: int64 dimensions, an exabyte claimed
    n2.set_data_dtype(np.int16)
    n2["vox_offset"] = 544
    _write(folder, "nifti2_exabyte.nii.gz", gzip.compress(n2.binaryblock + b"\0" * 4 + b"\0" * 4096))
    broken["nifti2_exabyte"] = "truncated voxel data"

    # values that are not CT, or not numbers
    data = phantom(SHAPE)
    data[:, :, 2] = -np.inf
    save_nifti(os.path.join(folder, "neg_inf.nii.gz"), data, axis_affine("LPS"), dtype=np.float32)
    broken["neg_inf"] = "non-finite"
    save_nifti(os.path.join(folder, "all_nan.nii.gz"), np.full(SHAPE, np.nan), axis_affine("LPS"), dtype=np.float64)
    broken["all_nan"] = "non-finite"
    labels = np.zeros(SHAPE)
    labels[4:12, 3:9, :] = 1
    labels[9:12, 3:5, 2:4] = 2
    save_nifti(os.path.join(folder, "label_map.nii.gz"), labels, axis_affine("LPS"), dtype=np.uint8)
    save_nifti(os.path.join(folder, "eight_bit.nii.gz"), np.arange(np.prod(SHAPE)).reshape(SHAPE) % 256,
               axis_affine("LPS"), dtype=np.uint8)

    # entries that are not regular files
    os.mkfifo(os.path.join(folder, "fifo.nii.gz"))
    broken["fifo"] = "not a regular file: it is a FIFO"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(folder, "socket.nii.gz"))
    broken["socket"] = "not a regular file: it is a socket"
    os.symlink("/dev/zero", os.path.join(folder, "device.nii.gz"))
    broken["device"] = "not a regular file: it is a character device"
    os.symlink("link_loop.nii.gz", os.path.join(folder, "link_loop.nii.gz"))
    broken["link_loop"] = "symbolic link loop"
    os.symlink("nowhere/gone.nii.gz", os.path.join(folder, "dangling.nii.gz"))
    broken["dangling"] = "broken symbolic link"
    os.mkdir(os.path.join(folder, "folder_named.nii.gz"))  # a folder with a scan's name, holding nothing
    broken["folder_named"] = "a folder named like a NIfTI file"
    empty = os.path.join(os.path.dirname(os.path.abspath(folder)), "empty_input_folder")
    os.makedirs(empty, exist_ok=True)
    broken["empty_input_folder"] = "folder holds no NIfTI files"

    # unreadable for a user other than root
    _write(folder, "no_permission.nii.gz", gz)
    os.chmod(os.path.join(folder, "no_permission.nii.gz"), 0)
    broken["no_permission"] = "permission denied"
    locked = os.path.join(folder, "locked_folder")
    os.makedirs(locked)
    _write(locked, "hidden_case.nii.gz", gz)
    os.chmod(locked, 0)
    broken["locked_folder"] = "cannot list folder: Permission denied"
    dcm = save_dicom_series(os.path.join(folder, "dcm_slice_no_permission"), phantom((8, 8, 4)))
    os.chmod(os.path.join(dcm, "s002.dcm"), 0)
    broken["dcm_slice_no_permission"] = "unreadable DICOM file s002.dcm \\(permission denied\\)"
    broken.update(_dicom_series(folder))
    non_root = {"no_permission", "locked_folder", "dcm_slice_no_permission"}
    return Corpus(broken, [empty], non_root, {"label_map", "eight_bit"}, {"dcm_fifo_beside_slices"}, [sock])


def _dicom_series(folder: str) -> dict[str, str]:
    """DICOM series with missing, duplicate, mixed or corrupt slices → expected reason."""
    import pydicom

    vol = np.round(phantom((8, 8, 5)))
    out = {}

    def series(name, **kw):
        return save_dicom_series(os.path.join(folder, name), vol, **kw)

    def edit(path, **tags):
        ds = pydicom.dcmread(path)
        for k, v in tags.items():
            if v is None:
                del ds[k]
            else:
                setattr(ds, k, v)
        ds.save_as(path, enforce_file_format=True)

    series("dcm_missing", skip=(2,))
    out["dcm_missing"] = "missing slices"
    series("dcm_duplicate", duplicate=(1,))
    out["dcm_duplicate"] = "duplicate slices"
    s = series("dcm_two_series")
    edit(os.path.join(s, "s003.dcm"), SeriesInstanceUID=pydicom.uid.generate_uid())
    out["dcm_two_series"] = "2 series in one folder"
    s = series("dcm_mixed_orientation")
    edit(os.path.join(s, "s001.dcm"), ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    out["dcm_mixed_orientation"] = "mixed series: slice s001.dcm has a different orientation"
    s = series("dcm_mixed_spacing")
    edit(os.path.join(s, "s004.dcm"), PixelSpacing=[0.5, 0.5])
    out["dcm_mixed_spacing"] = "mixed series: slice s004.dcm has pixel spacing"
    s = series("dcm_mixed_size")
    other = save_dicom_series(os.path.join(folder, ".tmp_size"), np.round(phantom((10, 8, 5))))
    ds = pydicom.dcmread(os.path.join(other, "s002.dcm"))
    ds.SeriesInstanceUID = pydicom.dcmread(os.path.join(s, "s000.dcm")).SeriesInstanceUID
    ds.save_as(os.path.join(s, "s002.dcm"), enforce_file_format=True)
    for f in os.listdir(other):
        os.unlink(os.path.join(other, f))
    os.rmdir(other)
    out["dcm_mixed_size"] = "mixed series: slice s002.dcm is 8×10 pixels"
    s = series("dcm_irregular")  # a slice of another acquisition between two slices: steps 2.5, 1.0, 1.5, 2.5
    ds = pydicom.dcmread(os.path.join(s, "s002.dcm"))
    ds.ImagePositionPatient = [-100.0, -120.0, 46.0]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(os.path.join(s, "s002b.dcm"), enforce_file_format=True)
    out["dcm_irregular"] = "irregular slice spacing"
    s = series("dcm_no_position")
    edit(os.path.join(s, "s003.dcm"), ImagePositionPatient=None)
    out["dcm_no_position"] = "s003.dcm has no valid ImagePositionPatient"
    s = series("dcm_no_orientation")
    edit(os.path.join(s, "s000.dcm"), ImageOrientationPatient=None)
    out["dcm_no_orientation"] = "missing or invalid geometry tag"
    s = series("dcm_truncated_slice")
    p = os.path.join(s, "s001.dcm")
    with open(p, "rb") as fh:
        head = fh.read()
    with open(p, "wb") as fh:
        fh.write(head[: len(head) - 50])
    out["dcm_truncated_slice"] = "s001.dcm"
    s = series("dcm_garbage_slice")
    _write(s, "s005.dcm", b"this is not DICOM at all" * 10)
    out["dcm_garbage_slice"] = "unreadable DICOM file s005.dcm"
    s = series("dcm_header_only")
    for f in os.listdir(s):
        edit(os.path.join(s, f), PixelData=None)
    out["dcm_header_only"] = "no DICOM image slices"
    s = series("dcm_fifo_beside_slices")  # not broken: the FIFO is never opened, the series screens
    os.mkfifo(os.path.join(s, "s009.dcm"))
    return out


def _escape(words: str) -> str:
    import re

    return re.escape(words)
