"""Synthetic CT inputs for the io and screening tests: NIfTI in any orientation, DICOM series, bad files."""
from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np


def phantom(shape=(64, 64, 12), seed=0) -> np.ndarray:
    """A chest-like phantom in HU: body ellipse (40 HU) in air, two lungs (-850 HU), a bright marker."""
    rng = np.random.default_rng(seed)
    x, y, z = shape
    i, j = np.meshgrid(np.arange(x), np.arange(y), indexing="ij")
    body = ((i - x / 2) / (0.45 * x)) ** 2 + ((j - y / 2) / (0.4 * y)) ** 2 < 1
    lung_l = ((i - 0.32 * x) / (0.11 * x)) ** 2 + ((j - y / 2) / (0.25 * y)) ** 2 < 1
    lung_r = ((i - 0.68 * x) / (0.11 * x)) ** 2 + ((j - y / 2) / (0.25 * y)) ** 2 < 1
    vol = np.full(shape, -1000.0, dtype=np.float32)
    vol[body] = 40.0
    vol[lung_l | lung_r] = -850.0
    vol += rng.normal(0, 5, size=shape).astype(np.float32)
    return vol


def axis_affine(codes: str, spacing=(0.8, 0.7, 2.5), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """Voxel→RAS affine whose axes point to ``codes`` (e.g. "LPS", "RAS", "LAS", "PSL")."""
    dirs = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    aff = np.zeros((4, 4))
    for ax, c in enumerate(codes):
        world, sign = dirs[c]
        aff[world, ax] = sign * spacing[ax]
    aff[:3, 3] = origin
    aff[3, 3] = 1
    return aff


def oblique_affine(degrees: float = 12.0, spacing=(0.8, 0.7, 2.5)) -> np.ndarray:
    """An LPS affine rotated by ``degrees`` about the z and x axes (an oblique acquisition)."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = axis_affine("LPS", spacing)
    aff[:3, :3] = rz @ rx @ aff[:3, :3]
    return aff


def save_nifti(path: str, data: np.ndarray, affine: np.ndarray, dtype=np.int16, slope=None, inter=None,
               sform_only: bool = False) -> str:
    """Write ``data`` (HU) stored as ``dtype``, optionally with scl_slope/scl_inter."""
    if slope is not None:
        stored = np.round((data - (inter or 0.0)) / slope)
    else:
        stored = data
    img = nib.Nifti1Image(np.asarray(stored).astype(dtype), affine)
    img.set_qform(affine, code=0 if sform_only else 1)
    img.set_sform(affine, code=2 if sform_only else 1)
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    nib.save(img, path)
    return path


def save_dicom_series(folder: str, vol_lps: np.ndarray, spacing=(0.8, 0.8, 2.5), origin=(-100.0, -120.0, 50.0),
                      skip=(), duplicate=(), intercept=-1024.0) -> str:
    """Write (cols, rows, slices) HU as a CT series, slices going toward -z (as scanners often do)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(vol_lps.shape[2]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.FrameOfReferenceUID = frame
        ds.Rows, ds.Columns = vol_lps.shape[1], vol_lps.shape[0]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] - k * spacing[2]]
        ds.SliceThickness = spacing[2]
        ds.InstanceNumber = k + 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray((vol_lps[:, :, k].T - intercept).astype(np.uint16)).tobytes()
        names = [f"s{k:03d}.dcm"] + ([f"s{k:03d}_copy.dcm"] if k in duplicate else [])
        for n in names:
            ds.save_as(os.path.join(folder, n), enforce_file_format=True)
    return folder


def write_bad_inputs(folder: str) -> dict[str, str]:
    """Write one of each bad input into ``folder``; returns case id → expected words in the reason."""
    os.makedirs(folder, exist_ok=True)
    good = phantom((16, 16, 4))
    aff = axis_affine("LPS")
    expect = {}
    # damaged gzip. At this size nibabel alone reads every one but "truncated" and "notgzip" as a fine
    # volume: it stops reading once it has the voxels, so it never reaches the CRC-32 and length trailer
    p = save_nifti(os.path.join(folder, "full.nii.gz"), phantom((48, 48, 8)), aff)
    raw = open(p, "rb").read()
    os.unlink(p)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x55  # one byte inside the compressed data
    crc = bytearray(raw)
    crc[-6] ^= 0x01                 # the stored CRC-32 (trailer: CRC-32, then length, 4 bytes each)
    size = bytearray(raw)
    size[-2] ^= 0x01                # the stored uncompressed length
    damaged = {"truncated": (raw[: len(raw) // 2], "truncated gzip"),
               "cut4": (raw[:-4], "truncated gzip"), "cut10": (raw[:-10], "truncated gzip"),
               "flipbyte": (bytes(flipped), "corrupt gzip"), "badcrc": (bytes(crc), "corrupt gzip: CRC"),
               "badlength": (bytes(size), "corrupt gzip"),
               "trailingjunk": (raw + b"junk after the stream", "after the end of the compressed stream"),
               "notgzip": (gzip.decompress(raw), "not gzip-compressed")}
    for case, (payload, words) in damaged.items():
        with open(os.path.join(folder, f"{case}.nii.gz"), "wb") as fh:
            fh.write(payload)
        expect[case] = words
    with open(os.path.join(folder, "corrupt.nii.gz"), "wb") as fh:
        fh.write(gzip.compress(b"this is not a nifti header at all" * 20))
    expect["corrupt"] = "not a readable NIfTI"
    with open(os.path.join(folder, "textfile.nii"), "w") as fh:
        fh.write("hello, I am a text file\n" * 30)
    expect["textfile"] = "not a readable NIfTI"
    save_nifti(os.path.join(folder, "twod.nii.gz"), good[:, :, 0], aff)
    expect["twod"] = "2-D"
    save_nifti(os.path.join(folder, "fourd.nii.gz"), np.stack([good, good], -1), aff)
    expect["fourd"] = "4-D"
    save_nifti(os.path.join(folder, "fived.nii.gz"), good[..., None, None].repeat(2, axis=4), aff)
    expect["fived"] = "5-D"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((16, 0, 4))
    hdr.set_data_dtype(np.int16)
    with open(os.path.join(folder, "zerosize.nii"), "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * 4)
    expect["zerosize"] = "zero-size"
    bad = good.copy()
    bad[3, 3, 1] = np.nan
    save_nifti(os.path.join(folder, "nanvox.nii.gz"), bad, aff, dtype=np.float32)
    expect["nanvox"] = "non-finite"
    bad = good.copy()
    bad[2, 5, 0] = np.inf
    save_nifti(os.path.join(folder, "infvox.nii.gz"), bad, aff, dtype=np.float32)
    expect["infvox"] = "non-finite"
    os.symlink(os.path.join(folder, "does_not_exist.nii.gz"), os.path.join(folder, "unreadable.nii.gz"))
    expect["unreadable"] = "not found"
    return expect


def chest_phantom(shape=(96, 96, 60), spacing=(4.0, 4.0, 5.0), *, table: bool = True, padding: float = -2048.0,
                  gas: bool = True, trachea: bool = True, seed: int = 0) -> tuple[np.ndarray, dict]:
    """A chest CT in HU on the canonical grid (x → patient right, y → anterior, z up) and its truth masks.

    Body ellipse (40 HU; 330 × 230 mm) with a vertebra; two lungs (ellipsoids of aerated lung: -860 HU
    with vessels; the left one shortened by the heart), about 3.5 L; a trachea (air) from the top slice
    down to the carina at z = 230 mm, and two main bronchi into the lungs; stomach gas (-1000 HU) under the
    left lung base and bowel with lung-like mottled content (-800 HU) under the right one; a hollow scanner
    table (1-voxel shell of 300 HU around 16 mm of air, 240 mm wide) touching the back through a 1-voxel
    pad; ``padding`` outside the circular field of view. Truth: ``right``, ``left``, ``airway``, ``stomach``,
    ``bowel``, ``table_air`` (bool, same shape).
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    sx, sy, sz = spacing
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    z = np.arange(nz) * sz
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")

    def ellipsoid(c, r):
        return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 < 1

    def tube(p0, p1, radius):  # voxels within ``radius`` of the segment p0-p1
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        t = np.clip(((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (Z - p0[2]) * d[2]) / (d @ d), 0, 1)
        return (X - p0[0] - t * d[0]) ** 2 + (Y - p0[1] - t * d[1]) ** 2 + (Z - p0[2] - t * d[2]) ** 2 < radius ** 2

    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = (X / 165) ** 2 + ((Y - 10) / 115) ** 2 < 1
    hu[body] = 40.0
    hu[(X ** 2 + (Y + 70) ** 2) < 15 ** 2] = 400.0  # vertebra
    heart = ellipsoid((-25, 25, 120), (60, 50, 55))
    right = ellipsoid((75, 5, 175), (55, 75, 115))
    left = ellipsoid((-75, 5, 180), (50, 70, 110)) & ~heart
    lungs = right | left
    hu[lungs] = -860.0 + rng.normal(0, 40, size=int(lungs.sum()))
    vessels = lungs & (rng.random(shape) < 0.03)
    hu[vessels] = 0.0
    truth = {"right": right, "left": left}
    airway = np.zeros(shape, dtype=bool)
    if trachea:
        airway = tube((0, 25, 230), (0, 25, z[-1] + sz), 9.0)
        for side in (1, -1):
            airway |= tube((0, 25, 230), (side * 45, 12, 195), 6.0)
        airway &= ~lungs
        hu[airway] = -1000.0
    truth["airway"] = airway
    stomach = ellipsoid((-60, 20, 35), (40, 30, 15)) if gas else np.zeros(shape, bool)
    bowel = ellipsoid((50, -10, 25), (30, 25, 15)) if gas else np.zeros(shape, bool)
    hu[stomach] = -1000.0
    hu[bowel] = -800.0 + rng.normal(0, 40, size=int(bowel.sum()))
    truth.update(stomach=stomach, bowel=bowel)
    table_air = np.zeros(shape, dtype=bool)
    if table:
        jb = int(np.flatnonzero(body[nx // 2, :, 0])[0])       # the body's lowest row at the centre line
        i0, i1 = np.searchsorted(x, -120), np.searchsorted(x, 120)
        hu[i0:i1, jb - 1, :] = 0.0                             # pad
        hu[i0:i1, jb - 7:jb - 1, :] = 300.0                    # shell ...
        hu[i0 + 1:i1 - 1, jb - 6:jb - 2, :] = -1000.0          # ... around the air inside
        table_air[i0 + 1:i1 - 1, jb - 6:jb - 2, :] = True
    truth["table_air"] = table_air
    hu += rng.normal(0, 10, size=shape).astype(np.float32)
    fov = (X ** 2 + Y ** 2) > (min(nx * sx, ny * sy) / 2) ** 2
    hu[fov] = padding
    return hu.astype(np.float32), truth


def reoriented(ras: np.ndarray, spacing, codes: str, origin=(-150.0, -160.0, -300.0)) -> tuple[np.ndarray, np.ndarray]:
    """A canonical (RAS) array stored with axes ``codes`` (e.g. "LAS", "LPS", "PSL"): (stored array, its affine)."""
    from nibabel import orientations as nio

    ras_aff = np.diag([*spacing, 1.0])
    ras_aff[:3, 3] = origin
    ornt = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.axcodes2ornt(tuple(codes)))
    stored = nio.apply_orientation(ras, ornt)
    return np.ascontiguousarray(stored), ras_aff @ nio.inv_ornt_aff(ornt, ras.shape)
