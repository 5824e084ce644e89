"""CT input/output: the one place that decides orientation, spacing and affine."""
from .dicom import read_dicom_series
from .discovery import Case, DiscoveryError, discover
from .nifti import read_nifti
from .volume import Volume, VolumeError
from .writer import save_mask, save_probabilities


def read_case(path: str, kind: str) -> Volume:
    """Read a NIfTI file (kind "nifti") or a DICOM series folder (kind "dicom")."""
    if kind == "dicom":
        return read_dicom_series(path)
    if kind == "missing":
        raise VolumeError("file not found")
    if kind == "invalid":
        raise VolumeError("not a readable input (see the case's problem)")
    return read_nifti(path)


__all__ = ["Case", "DiscoveryError", "Volume", "VolumeError", "discover", "read_case", "read_dicom_series",
           "read_nifti", "save_mask", "save_probabilities"]
