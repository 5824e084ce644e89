"""Turn command-line inputs into a sorted list of cases with stable, unique case ids.

An input is a NIfTI file, a DICOM series folder, a directory (searched recursively for NIfTI files and
DICOM series folders), a glob pattern, or a text file (``.txt``/``.lst``) listing such inputs one per
line (``#`` comments; relative paths are relative to the list file).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Callable

from .dicom import is_dicom_dir, looks_like_dicom_file
from .nifti import is_nifti_path

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclasses.dataclass(frozen=True)
class Case:
    """One volume to screen: ``case_id`` names its outputs; ``kind`` is "nifti", "dicom" or "missing"."""

    case_id: str
    path: str
    kind: str


class DiscoveryError(ValueError):
    """Inputs that name nothing usable (a usage error)."""


def _strip_ext(name: str) -> str:
    low = name.lower()
    for suf in (".nii.gz", ".nii"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def _expand(item: str, out: list[tuple[str, str]], roots: list[str], depth: int = 0) -> None:
    if depth > 4:
        raise DiscoveryError(f"list files nested too deeply at {item}")
    if any(ch in item for ch in "*?[") and not os.path.exists(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise DiscoveryError(f"glob {item!r} matches nothing")
        for m in matches:
            _expand(m, out, roots, depth)
        return
    if os.path.isdir(item):
        roots.append(os.path.abspath(item))
        if is_dicom_dir(item):
            out.append((os.path.abspath(item), "dicom"))
        for dirpath, dirnames, filenames in os.walk(item):
            dirnames.sort()
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if is_dicom_dir(full):
                    out.append((os.path.abspath(full), "dicom"))
            for f in sorted(filenames):
                if is_nifti_path(f):
                    out.append((os.path.abspath(os.path.join(dirpath, f)), "nifti"))
        return
    if item.lower().endswith(LIST_SUFFIXES) and os.path.isfile(item):
        base = os.path.dirname(os.path.abspath(item))
        try:
            with open(item, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except UnicodeDecodeError as exc:
            raise DiscoveryError(f"list file {item} is not UTF-8 text (byte {exc.start}: "
                                 f"{exc.object[exc.start:exc.start + 1]!r}); a list names one path per line") from None
        except OSError as exc:
            raise DiscoveryError(f"cannot read list file {item}: {exc.strerror or exc}") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            _expand(line if os.path.isabs(line) else os.path.join(base, line), out, roots, depth + 1)
        return
    if os.path.isfile(item):
        kind = "dicom" if (looks_like_dicom_file(item) and not is_nifti_path(item)) else "nifti"
        if kind == "dicom":  # a single DICOM file stands for its series folder
            out.append((os.path.abspath(os.path.dirname(item)), "dicom"))
        else:
            out.append((os.path.abspath(item), "nifti"))
        return
    out.append((os.path.abspath(item), "missing"))


def discover(inputs: list[str], exclude: Callable[[str], bool] | None = None) -> tuple[list[Case], list[str]]:
    """Expand ``inputs`` → (cases sorted by path, input root directories).

    Paths for which ``exclude(path)`` is true are dropped before case ids are given (so the ids do not
    depend on them). Case ids (see :func:`case_ids`) are unique and the same inputs always give the
    same ids.

    Raises:
        DiscoveryError: no inputs, a glob that matches nothing, a list file that cannot be read as text,
            or nothing found at all.
    """
    if not inputs:
        raise DiscoveryError("no inputs given")
    found: list[tuple[str, str]] = []
    roots: list[str] = []
    for item in inputs:
        _expand(item, found, roots)
    uniq = sorted(dict(found).items())
    if exclude is not None:
        uniq = [(p, k) for p, k in uniq if not exclude(p)]
    if not uniq:
        raise DiscoveryError(f"no NIfTI files or DICOM series found in {inputs}")
    return [Case(n, p, k) for n, (p, k) in zip(case_ids(uniq), uniq)], roots


# ids that would name a batch report (summary.json, summary_shard0of2.json, ...) rather than a case
RESERVED_IDS = re.compile(r"(summary|failures)(_shard\d+of\d+)?", re.IGNORECASE)


def case_ids(cases: list[tuple[str, str]]) -> list[str]:
    """Unique, filesystem-safe case ids for sorted (path, kind) pairs; deterministic.

    1. the file name without ``.nii``/``.nii.gz`` (the folder name for a DICOM series);
    2. names shared by several cases (ignoring letter case, as outputs may land on a case-insensitive
       file system) become the path relative to the closest folder holding all of them, with ``__``
       for ``/`` (``site1/p1.nii.gz`` → ``site1__p1``);
    3. still shared by inputs of different kinds (``x.nii`` beside ``x.nii.gz``, a DICOM folder ``x/``
       beside ``x.nii.gz``): the kind is appended: ``x_nii``, ``x_nii_gz``, ``x_dicom``;
    4. an id that is a batch report's name (``summary``, ``failures``, ``summary_shard0of2``, ...) gets
       ``_case`` appended; a leading dot becomes ``_`` (outputs are never hidden files);
    5. anything still shared gets ``_2``, ``_3``, ... in path order.
    """
    paths = [p for p, _ in cases]
    ids = [_safe(_strip_ext(os.path.basename(p.rstrip(os.sep)))) for p in paths]
    for group in _shared(ids):
        common = os.path.commonpath([os.path.dirname(paths[i]) for i in group])
        for i in group:
            ids[i] = _safe(_strip_ext(os.path.relpath(paths[i], common)).replace(os.sep, "__"))
    for group in _shared(ids):
        labels = [_kind_label(*cases[i]) for i in group]
        if len(set(labels)) > 1:
            for i, label in zip(group, labels):
                ids[i] = f"{ids[i]}_{label}"
    ids = [f"{n}_case" if RESERVED_IDS.fullmatch(n) else n for n in ids]
    taken = {n.lower() for n in ids}
    for group in _shared(ids):
        for rank, i in enumerate(group[1:], start=2):
            k = rank
            while f"{ids[i]}_{k}".lower() in taken:
                k += 1
            ids[i] = f"{ids[i]}_{k}"
            taken.add(ids[i].lower())
    return ids


def _shared(ids: list[str]) -> list[list[int]]:
    """Index groups (in order) of ids that are equal ignoring letter case."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(ids):
        groups.setdefault(n.lower(), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _kind_label(path: str, kind: str) -> str:
    low = path.lower()
    if low.endswith(".nii.gz"):
        return "nii_gz"
    if low.endswith(".nii"):
        return "nii"
    return kind


def _safe(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    return re.sub(r"^\.", "_", name) or "case"
