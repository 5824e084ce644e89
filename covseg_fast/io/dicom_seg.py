"""Write masks as a DICOM Segmentation object (highdicom) that references its source DICOM series.

The segmentation lies on the source series' own grid: frame k covers the source slice ``volume.source_files[k]``
(the reader keeps them in the order of the input grid's third axis), with that slice's rows and columns, so a
viewer overlays it on the series and an archive links it through the Study, Series and Frame of Reference UIDs
and each source SOP Instance UID (highdicom copies them from the source headers). Segments may overlap (the
lungs and the infection inside them): the object is BINARY with one bit plane per segment.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..atomic import atomic_save
from .volume import Volume, VolumeError

Code = tuple[str, str, str]  # (code value, coding scheme designator, code meaning), e.g. ("39607008", "SCT", "Lung")
AI_FAMILY: Code = ("123110", "DCM", "Artificial Intelligence")  # CID 7162, the algorithm family
# Patient and General Study attributes highdicom copies from the source (all DICOM type 2)
TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                "AccessionNumber", "ReferringPhysicianName")
SERIES_NUMBER = 9901  # a series number unlikely to clash with a scanner's own


@dataclasses.dataclass(frozen=True)
class Segment:
    """One segment: ``mask`` (X, Y, Z) bool on the canonical grid of the volume; codes from DICOM CID 7150/7151."""

    label: str                 # Segment Label (LO, 64 characters at most)
    category: Code             # Segmented Property Category
    type: Code                 # Segmented Property Type
    mask: np.ndarray
    description: str = ""      # Segment Description (free text)
    anatomic_region: Code | None = None


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Who made the segments: written in each segment's Algorithm Identification and the series' equipment."""

    name: str                  # e.g. "covseg_fast msa_unet"
    version: str               # e.g. the covseg_fast version
    model: str                 # Manufacturer's Model Name
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. checkpoint, threshold, window


def _highdicom():
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise VolumeError("DICOM-SEG output needs highdicom: pip install 'covseg_fast[dicom]'") from None
    return highdicom, pydicom


def _code(hd, code: Code):
    return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])


def source_headers(volume: Volume) -> list:
    """The headers (no pixel data) of ``volume``'s source slices, in input-grid order.

    Raises:
        VolumeError: the volume was not read from a DICOM series, or its slices changed since.
    """
    _, pydicom = _highdicom()
    if volume.fmt != "dicom" or not volume.source_files:
        raise VolumeError("DICOM-SEG output needs a DICOM series input (this input is not one); "
                          "use --output-format nifti or both")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.source_files]
    for h in headers:  # type 2 (required, may be empty) attributes that some exporters drop: empty, as allowed
        for keyword in TYPE2_COPIED:
            if keyword not in h:
                setattr(h, keyword, "")
    cols, rows, n = volume.source_shape
    if len(headers) != n or any((int(h.Rows), int(h.Columns)) != (rows, cols) for h in headers):
        raise VolumeError(f"the series in {volume.path} changed while it was screened (slices or their size differ)")
    return headers


def seg_frames(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """(X, Y, Z) canonical mask → (slices, rows, columns) frames on the source series' grid (slice k = source k)."""
    return np.ascontiguousarray(volume.to_source(mask).transpose(2, 1, 0))


def write_dicom_seg(path: str, volume: Volume, segments: list[Segment], algorithm: Algorithm,
                    series_description: str, content_description: str) -> None:
    """Write ``segments`` of ``volume`` (a DICOM series input) to ``path`` as a DICOM-SEG, atomically.

    ``series_description`` and ``content_description`` are cut to 64 characters (DICOM LO).

    Raises:
        VolumeError: not a DICOM series input, highdicom missing, or the series changed since it was read.
    """
    hd, _ = _highdicom()
    if not segments:
        raise ValueError("write_dicom_seg: no segments")
    headers = source_headers(volume)
    pixels = np.stack([seg_frames(volume, s.mask.astype(bool)) for s in segments], axis=-1)
    algo = hd.AlgorithmIdentificationSequence(name=algorithm.name, family=_code(hd, AI_FAMILY),
                                              version=algorithm.version, parameters=algorithm.parameters or None)
    descriptions = []
    for number, s in enumerate(segments, start=1):
        d = hd.seg.SegmentDescription(
            segment_number=number, segment_label=s.label[:64], segmented_property_category=_code(hd, s.category),
            segmented_property_type=_code(hd, s.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            anatomic_regions=[_code(hd, s.anatomic_region)] if s.anatomic_region else None)
        if s.description:
            d.SegmentDescription = s.description
        descriptions.append(d)
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="covseg_fast",
        manufacturer_model_name=algorithm.model[:64], software_versions=algorithm.version,
        device_serial_number="none", series_description=series_description[:64],
        content_description=content_description[:64], content_label="COVSEG")
    atomic_save(path, lambda tmp: seg.save_as(tmp, enforce_file_format=True))


def read_dicom_seg(path: str, source_files: list[str]) -> tuple[list[str], np.ndarray]:
    """(segment labels, (slices, rows, columns, segments) bool) of a DICOM-SEG at ``path``, frame k on
    ``source_files[k]`` (matched by SOP Instance UID); for checks and notebooks."""
    hd, pydicom = _highdicom()
    seg = hd.seg.segread(path)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in source_files]
    numbers = list(range(1, seg.number_of_segments + 1))
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                               ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    labels = [str(seg.get_segment_description(n).segment_label) for n in numbers]
    return labels, pixels.astype(bool)

