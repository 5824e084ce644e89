"""What `covseg screen --output-format dicom-seg|both` puts in a case's DICOM-SEG: which segments, their codes
and the wording that says who made them and that they are for research.

Segments: the infection counted by the reports (restricted to the lungs and their margin, as the NIfTI mask),
one per class of a multi-class model (ground-glass opacity, consolidation), and with ``--save-lung-mask`` the
right and left lung. Codes (DICOM PS3.16): category SCT 49755003 Morphologically Abnormal Structure for the
findings, SCT 91723000 Anatomical Structure for the lungs; types SCT 52988006 Lesion (binary infection), DCM
112120 Ground glass opacity (CID 6104: SNOMED CT has no pre-coordinated concept for it that DICOM lists),
SCT 95436008 Lung consolidation, SCT 3341006 Right lung, SCT 44029006 Left lung; anatomic region SCT 39607008
Lung.
"""
from __future__ import annotations

import numpy as np

from ..io.dicom_seg import Algorithm, Code, Segment, write_dicom_seg
from ..io.volume import Volume

FINDING: Code = ("49755003", "SCT", "Morphologically Abnormal Structure")
ANATOMY: Code = ("91723000", "SCT", "Anatomical Structure")
LUNG: Code = ("39607008", "SCT", "Lung")
CLASS_TYPES: dict[str, Code] = {
    "infection": ("52988006", "SCT", "Lesion"),
    "ggo": ("112120", "DCM", "Ground glass opacity"),
    "consolidation": ("95436008", "SCT", "Lung consolidation"),
}
CLASS_LABELS = {"infection": "infection", "ggo": "ground-glass opacity", "consolidation": "consolidation"}
LUNG_TYPES: tuple[tuple[int, str, Code], ...] = ((1, "right lung", ("3341006", "SCT", "Right lung")),
                                                 (2, "left lung", ("44029006", "SCT", "Left lung")))
RESEARCH = "research use only, not for diagnosis"


def case_segments(infection: np.ndarray, lung: np.ndarray | None, names: tuple[str, ...], model: str,
                  version: str) -> list[Segment]:
    """Segments of one case: ``infection`` (X, Y, Z) uint8 classes restricted to the lungs (binary: 0/1; K classes:
    0 background, c = ``names[c - 1]``), ``lung`` (1 right, 2 left) or None to leave the lungs out."""
    by = f"covseg_fast {version}, model {model}; {RESEARCH}"
    segments = []
    for c, name in enumerate(names or ("infection",), start=1):
        code = CLASS_TYPES.get(name, CLASS_TYPES["infection"])
        label = CLASS_LABELS.get(name, name)
        segments.append(Segment(label=label, category=FINDING, type=code, mask=infection == c,
                                description=f"{label} by {by}", anatomic_region=LUNG))
    if lung is not None:
        for value, label, code in LUNG_TYPES:
            segments.append(Segment(label=label, category=ANATOMY, type=code, mask=lung == value,
                                    description=f"{label} by {by}"))
    return segments


def write_case_seg(path: str, volume: Volume, infection: np.ndarray, lung: np.ndarray | None,
                   names: tuple[str, ...], record: dict) -> None:
    """Write one case's DICOM-SEG (see :func:`case_segments`); ``record``: its JSON record so far (model,
    version, checkpoint, threshold, window)."""
    model = str(record.get("model", "unknown model"))
    version = str(record.get("covseg_version", ""))
    params = {"checkpoint": str(record.get("checkpoint", "")), "window_hu": str(record.get("window_hu", "")),
              "decision": str(record.get("decision", "")), "threshold": str(record.get("threshold", ""))}
    algorithm = Algorithm(name=f"covseg_fast {model}", version=version or "unknown", model=model,
                          parameters={k: v for k, v in params.items() if v not in ("", "None")})
    write_dicom_seg(path, volume, case_segments(infection, lung, names, model, version), algorithm,
                    series_description=f"covseg {model} infection: research use, not diagnosis",
                    content_description=f"covseg_fast lung infection, {RESEARCH}")
