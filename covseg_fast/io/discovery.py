"""Turn command-line inputs into a sorted list of cases with stable, unique case ids.

An input is a NIfTI file, a DICOM series folder, a directory (searched recursively for NIfTI files and
DICOM series folders), a glob pattern, or a text file (``.txt``/``.lst``) listing such inputs one per
line (``#`` comments; relative paths are relative to the list file).

An input that does not exist is a usage error (nothing is screened). A folder given as an input that
holds nothing to screen, and a folder that cannot be listed (given, or met in the walk), become a case
with a ``problem``: it is reported as a failed case, with the reason, instead of vanishing; so is a folder
met in the walk that is named like a NIfTI file (``x.nii.gz/``), is no DICOM series and holds nothing to
screen (a folder that is a DICOM series is one, whatever its name). Entries are
classified without opening anything but regular files (a FIFO named ``x.nii.gz`` is a case that its
reader fails at once, never a blocked ``open``).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Callable

from .dicom import is_dicom_dir, looks_like_dicom_file
from .files import is_regular_file
from .nifti import is_nifti_path

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclasses.dataclass(frozen=True)
class Case:
    """One volume to screen: ``case_id`` names its outputs; ``kind`` is "nifti", "dicom", "missing" or
    "invalid" (a folder that holds nothing to screen or cannot be listed: ``problem`` says why)."""

    case_id: str
    path: str
    kind: str
    problem: str = ""


class DiscoveryError(ValueError):
    """Inputs that name nothing usable (a usage error)."""


def _strip_ext(name: str) -> str:
    low = name.lower()
    for suf in (".nii.gz", ".nii"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


class _Found:
    """What expanding the inputs found: (path, kind, problem) entries, input folders, missing inputs."""

    def __init__(self):
        self.entries: list[tuple[str, str, str]] = []
        self.roots: list[str] = []
        self.missing: list[str] = []

    def add(self, path: str, kind: str, problem: str = "") -> None:
        self.entries.append((os.path.abspath(path), kind, problem))


EMPTY_FOLDER = "folder holds no NIfTI files (.nii, .nii.gz) or DICOM series"
NIFTI_NAMED_FOLDER = ("a folder named like a NIfTI file, not a file, and no DICOM series: nothing to screen was found "
                      "in it; give the scan file itself")


def _expand(item: str, found: _Found, depth: int = 0) -> None:
    if depth > 4:
        raise DiscoveryError(f"list files nested too deeply at {item}")
    if any(ch in item for ch in "*?[") and not os.path.lexists(item):
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            raise DiscoveryError(f"glob {item!r} matches nothing")
        for m in matches:
            _expand(m, found, depth)
        return
    if os.path.isdir(item):
        _walk(item, found)
        return
    if item.lower().endswith(LIST_SUFFIXES) and is_regular_file(item):
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
            _expand(line if os.path.isabs(line) else os.path.join(base, line), found, depth + 1)
        return
    if not os.path.lexists(item):
        found.missing.append(item)
        return
    # a regular file is sniffed for DICOM; anything else (FIFO, socket, device, broken link) is never
    # opened here: as a "nifti" case its reader fails it at once with the reason
    if is_regular_file(item) and looks_like_dicom_file(item) and not is_nifti_path(item):
        found.add(os.path.dirname(os.path.abspath(item)), "dicom")  # a single DICOM file stands for its series
    else:
        found.add(item, "nifti")


def _walk(item: str, found: _Found) -> None:
    """Every NIfTI file and DICOM series folder under folder ``item``; unlistable folders as problems."""
    found.roots.append(os.path.abspath(item))
    before = len(found.entries)
    if is_dicom_dir(item):
        found.add(item, "dicom")

    def unlistable(exc: OSError) -> None:
        found.add(exc.filename or item, "invalid", f"cannot list folder: {exc.strerror or exc}")

    named_like_nifti = []  # folders named x.nii(.gz) that are no DICOM series: never silently skipped
    for dirpath, dirnames, filenames in os.walk(item, onerror=unlistable):
        dirnames.sort()
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if is_dicom_dir(full):
                found.add(full, "dicom")
            elif is_nifti_path(d):
                named_like_nifti.append(os.path.abspath(full))
        for f in sorted(filenames):
            if is_nifti_path(f):
                found.add(os.path.join(dirpath, f), "nifti")
    for folder in named_like_nifti:
        if not any(p == folder or p.startswith(folder + os.sep) for p, _, _ in found.entries[before:]):
            link = " (a symbolic link to a folder: the walk does not follow it; give it as an input)"
            found.add(folder, "invalid", NIFTI_NAMED_FOLDER + (link if os.path.islink(folder) else ""))
    if len(found.entries) == before:
        found.add(item, "invalid", EMPTY_FOLDER)


def discover(inputs: list[str], exclude: Callable[[str], bool] | None = None) -> tuple[list[Case], list[str]]:
    """Expand ``inputs`` → (cases sorted by path, input root directories).

    Paths for which ``exclude(path)`` is true are dropped before case ids are given (so the ids do not
    depend on them). Case ids (see :func:`case_ids`) are unique and the same inputs always give the
    same ids. An input folder with nothing to screen, or a folder that cannot be listed, is a case of
    kind "invalid" whose ``problem`` says why (it is reported as failed).

    Raises:
        DiscoveryError: no inputs, an input (or a list file's entry) that does not exist, a glob that
            matches nothing, a list file that cannot be read as text, or nothing found at all.
    """
    if not inputs:
        raise DiscoveryError("no inputs given")
    found = _Found()
    for item in inputs:
        _expand(item, found)
    if found.missing:
        names = ", ".join(found.missing[:3]) + (f" and {len(found.missing) - 3} more" if len(found.missing) > 3 else "")
        raise DiscoveryError(f"input{'s' if len(found.missing) > 1 else ''} not found: {names}; check the "
                             "path(s) (nothing was screened)")
    uniq: dict[str, tuple[str, str]] = {}
    for path, kind, problem in found.entries:
        if path not in uniq or (uniq[path][0] == "invalid" and kind != "invalid"):
            uniq[path] = (kind, problem)
    entries = sorted((p, k, why) for p, (k, why) in uniq.items())
    if exclude is not None:
        entries = [e for e in entries if not exclude(e[0])]
    if not entries or all(k == "invalid" and why == EMPTY_FOLDER for _, k, why in entries):
        raise DiscoveryError(f"no NIfTI files or DICOM series found in {inputs}")
    ids = case_ids([(p, k) for p, k, _ in entries])
    return [Case(n, p, k, why) for n, (p, k, why) in zip(ids, entries)], found.roots


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
