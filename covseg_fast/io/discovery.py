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
        with open(item, encoding="utf-8") as fh:
            for line in fh:
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


def discover(inputs: list[str]) -> tuple[list[Case], list[str]]:
    """Expand ``inputs`` → (cases sorted by path, input root directories).

    Case ids are the file name without .nii/.nii.gz (the folder name for DICOM series), made
    filesystem-safe; when two cases share a name, ids use the path relative to their common parent
    with ``/`` replaced by ``__``. The same inputs always give the same ids.

    Raises:
        DiscoveryError: no inputs, a glob that matches nothing, or nothing found at all.
    """
    if not inputs:
        raise DiscoveryError("no inputs given")
    found: list[tuple[str, str]] = []
    roots: list[str] = []
    for item in inputs:
        _expand(item, found, roots)
    uniq = sorted(dict(found).items())
    if not uniq:
        raise DiscoveryError(f"no NIfTI files or DICOM series found in {inputs}")
    names = [_safe(_strip_ext(os.path.basename(p.rstrip(os.sep))) or "case") for p, _ in uniq]
    if len(set(names)) != len(names):
        common = os.path.commonpath([p for p, _ in uniq]) if len(uniq) > 1 else os.path.dirname(uniq[0][0])
        counts = {n: names.count(n) for n in names}
        for i, (p, _) in enumerate(uniq):
            if counts[names[i]] > 1:
                names[i] = _safe(_strip_ext(os.path.relpath(p, common)).replace(os.sep, "__"))
    return [Case(n, p, k) for n, (p, k) in zip(names, uniq)], roots


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)
