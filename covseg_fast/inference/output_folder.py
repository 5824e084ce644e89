"""The output folder of `covseg screen`, in one place: where it may be, whether it can take the run,
which cases it still needs, who may use it now, and the batch reports it ends with.

A run goes through :class:`OutputFolder` in this order (``screen_batch`` only calls it):

1. :meth:`~OutputFolder.check_location`: not a file, not overlapping the inputs (unless allowed), and
   writable (the folder, or the folder it will be created in), checked without writing anything;
2. :meth:`~OutputFolder.lock` when the folder already exists (a second run exits 2, naming the first);
3. :meth:`~OutputFolder.plan_cases`: complete cases (``--resume``), files screen would replace but did not
   write, outputs present without ``--resume``/``--overwrite``; :meth:`~OutputFolder.refuse_foreign_reports`;
4. :meth:`~OutputFolder.check_free_space`: enough for the cases still to screen;
5. (the model loads) :meth:`~OutputFolder.prepare`: create the folder, lock it if new, remove the
   temporaries a killed run left (its cases' outputs and the batch reports);
6. :meth:`~OutputFolder.write_reports`: all batch reports at once, all or nothing
   (:class:`~covseg_fast.inference.errors.ReportWriteError` leaves the previous ones intact);
7. :meth:`~OutputFolder.release`: the lock file goes.

Nothing is created before step 5, so a usage error leaves no folder behind.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil

from ..atomic import atomic_write_all
from ..io import Case
from .errors import ReportWriteError, UsageError
from .html_report import html_report
from .output_lock import OutputLock
from .report import FAILURE_COLUMNS, csv_text, json_text, read_json, summary_columns, written_by_screen

MIB = 1 << 20
# free space a run needs: a floor, plus per case its JSON and montage and a share of the input's size for
# the compressed uint8 mask (masks compress far better than CT) and probabilities (less so)
FREE_FLOOR = 64 * MIB
PER_CASE = MIB // 2
MASK_SHARE, PROBABILITY_SHARE = 0.1, 0.5


# a case's files besides its JSON: output kind, the OutputPlan field that asks for it, file name suffix
CASE_FILES = (("mask", "masks", "_infection.nii.gz"),
              ("unrestricted_mask", "unrestricted", "_infection_unrestricted.nii.gz"),
              ("probabilities", "probabilities", "_probabilities.nii.gz"),
              ("lung_mask", "lung_mask", "_lungmask.nii.gz"),
              ("label_map", "label_map", "_labelmap.nii.gz"),
              ("montage", "montage", "_overlay.png"),
              ("dicom_seg", "dicom_seg", "_seg.dcm"))
DICOM_ONLY = ("dicom_seg",)  # kinds written for DICOM series inputs only
COMPLETE_STATUSES = ("ok", "warning")  # a case with either status is done: --resume skips it (and keeps it)


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """Which files a case produces in ``out_dir``."""

    out_dir: str
    masks: bool = True
    probabilities: bool = False
    montage: bool = True
    unrestricted: bool = False
    lung_mask: bool = False
    label_map: bool = False
    dicom_seg: bool = False

    def paths(self, case_id: str, dicom: bool = False) -> dict[str, str]:
        """Output kind → path for ``case_id`` (the JSON is written last and marks completion); ``dicom``: the
        input is a DICOM series (only then is a DICOM-SEG written)."""
        p = {kind: os.path.join(self.out_dir, case_id + suffix) for kind, flag, suffix in CASE_FILES
             if getattr(self, flag) and (dicom or kind not in DICOM_ONLY)}
        p["json"] = os.path.join(self.out_dir, f"{case_id}.json")
        return p

    def complete(self, case_id: str, path: str | None = None, dicom: bool = False) -> dict | None:
        """The case's JSON record when all its outputs exist and the JSON's status is ok or warning, else None.

        With ``path`` (the input), the record must also be of an input with that file name: outputs
        left under the same id by another input (e.g. before ids were disambiguated) do not count.
        The folder may differ, so a moved or differently mounted input tree still resumes.
        """
        paths = self.paths(case_id, dicom)
        if not all(os.path.isfile(p) for p in paths.values()):
            return None
        rec = read_json(paths["json"])
        if rec is None or rec.get("status") not in COMPLETE_STATUSES:
            return None
        if path is not None and _name(str(rec.get("path", ""))) != _name(path):
            return None
        return rec

    def remove_stray_temporaries(self, case_ids: list[str], extra_names: tuple[str, ...] = ()) -> int:
        """Delete temporary files a killed run left for these cases' outputs (of every kind: the killed run may
        have asked for other outputs than this plan) and for the files named in ``extra_names`` (e.g. the batch
        reports); returns how many.

        Lists the folder once (not once per case: a resumed batch may hold many thousands of files) and
        matches the exact temporary names of ``covseg_fast.atomic`` (``.<output>.<random>.tmp``
        or ``.<output>.<random>.<extension>``), so another case's files are never touched.
        """
        try:
            names = [n for n in os.listdir(self.out_dir) if n.startswith(".")]
        except OSError:
            return 0
        ours = {c + suffix for c in case_ids for suffix in [".json"] + [f[2] for f in CASE_FILES]} | set(extra_names)
        n = 0
        for name in names:
            if any(_is_temporary_of(base, name) for base in _prefixes(name) if base in ours):
                try:
                    os.unlink(os.path.join(self.out_dir, name))
                    n += 1
                except OSError:
                    pass
        return n


def _prefixes(name: str):
    """The candidate final names X of a hidden file ".X.<rest>" (every dot can end X)."""
    return (name[1:i] for i in range(2, len(name)) if name[i] == ".")


def _is_temporary_of(base: str, name: str) -> bool:
    """``name`` is a temporary of ``base`` from covseg_fast.atomic: ".base.<random>.tmp" or ".base.<random>.<ext>"."""
    rest = name[len(base) + 2:]
    rnd, _, suffix = rest.partition(".")
    return bool(re.fullmatch(r"\w+", rnd)) and suffix in ("tmp", base.split(".", 1)[-1])


def _name(path: str) -> str:
    return os.path.basename(path.rstrip("/\\"))


# screen's own per-case NIfTI outputs, and their temporaries (atomic_save: .<name>.<random>.nii.gz)
_KINDS = "|".join(re.escape(suffix[1:-len(".nii.gz")]) for _, _, suffix in CASE_FILES if suffix.endswith(".nii.gz"))
OWN_NIFTI = re.compile(rf".+_({_KINDS})\.nii\.gz|\..+_({_KINDS})\.nii\.gz\.\w+\.nii\.gz")


def is_own_output(path: str, out_dir: str) -> bool:
    """True for a mask, probability, lung-mask or label-map file (or its temporary) that `covseg screen` writes in
    ``out_dir``.

    Such files are never screened as inputs, even when ``out_dir`` lies in the input tree.
    """
    if os.path.realpath(os.path.dirname(os.path.abspath(path))) != os.path.realpath(out_dir):
        return False
    return OWN_NIFTI.fullmatch(os.path.basename(path)) is not None


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_output_dir(out_dir: str, roots: list[str], cases: list[Case], allow: bool) -> None:
    """Refuse an output directory that is a file, or (unless ``allow``) one that overlaps the inputs.

    Overlap: inside an input directory or a DICOM series folder (the next run over that directory would
    find the outputs), or holding an input, i.e. the folder of an input file or a folder above an input
    (outputs would land among the inputs; before, such inputs were silently dropped as "outputs").

    Raises:
        UsageError: with the offending input named.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"output {out_dir} exists and is not a directory")
    if allow:
        return
    hint = "choose another --output or pass --allow-output-in-input"
    for root in roots + [c.path for c in cases if c.kind == "dicom"]:
        if _inside(out_dir, root):
            raise UsageError(f"output directory {out_dir} is inside the input tree {root}; {hint}")
    for c in cases:
        if c.kind not in ("missing", "invalid") and _inside(c.path, out_dir):
            raise UsageError(f"output directory {out_dir} holds the input {c.path} (outputs would mix with the "
                             f"inputs); {hint}")


def report_names(suffix: str, report_format: str) -> list[str]:
    """File names of the batch reports a run writes: failures (always), the summary format(s) and the page."""
    names = [f"failures{suffix}.csv"]
    if report_format in ("csv", "both"):
        names.append(f"summary{suffix}.csv")
    if report_format in ("json", "both"):
        names.append(f"summary{suffix}.json")
    return names + [f"index{suffix}.html"]


def refuse_foreign_reports(out_dir: str, suffix: str, report_format: str) -> None:
    """Raise UsageError when a batch report about to be written (failures/summary ``suffix`` .csv/.json) exists
    and was not written by screen: it may be the user's own file."""
    for name in report_names(suffix, report_format):
        path = os.path.join(out_dir, name)
        if os.path.exists(path) and not written_by_screen(path):
            raise UsageError(f"{path} exists and was not written by covseg screen (the batch report would "
                             "replace it); move it or choose another --output")


def check_writable(out_dir: str) -> str:
    """The existing folder at or above ``out_dir`` that the run writes into (``out_dir`` itself, or the
    ancestor it will be created in), after checking it can be written; writes nothing.

    Raises:
        UsageError: not a directory, on a read-only file system, or not writable for this user.
    """
    probe = os.path.abspath(out_dir)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    what = "output folder" if probe == os.path.abspath(out_dir) else f"folder {probe}, where the output folder " \
        f"{out_dir} would be created,"
    if not os.path.isdir(probe):
        raise UsageError(f"cannot create output folder {out_dir}: {probe} is not a directory")
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise UsageError(f"the {what} is on a read-only file system; choose another --output")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"the {what} is not writable for this user (permission denied); choose another --output "
                         "or fix its permissions")
    return probe


def needed_bytes(plan: OutputPlan, cases: list[Case]) -> int:
    """Free space the outputs of ``cases`` are expected to need (the estimate is in the README)."""
    # uint8 masks, compressed alike; a DICOM-SEG (1 bit per voxel and segment, uncompressed) counted as one of them
    masks = sum((plan.masks, plan.unrestricted, plan.lung_mask, plan.label_map, plan.dicom_seg))
    share = MASK_SHARE * masks + (PROBABILITY_SHARE if plan.probabilities else 0.0)
    total = FREE_FLOOR
    for c in cases:
        total += PER_CASE + int(share * _input_bytes(c))
    return total


def _input_bytes(case: Case) -> int:
    try:
        if case.kind == "dicom":
            return sum(e.stat().st_size for e in os.scandir(case.path) if e.is_file())
        return os.stat(case.path).st_size
    except OSError:
        return 0


def check_free_space(folder: str, needed: int) -> None:
    """Raise UsageError when the file system of ``folder`` has less than ``needed`` bytes free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell: the writes themselves will say
    if free < needed:
        raise UsageError(f"not enough free space for the outputs: {free / MIB:.0f} MiB free on the file system of "
                         f"{folder}, about {needed / MIB:.0f} MiB needed; free some space or choose another --output")


class OutputFolder:
    """The output folder of one run (see the module docstring for the order of the calls)."""

    def __init__(self, plan: OutputPlan, shard: tuple[int, int] = (0, 1), report_format: str = "both"):
        k, n = shard
        self.plan = plan
        self.path = plan.out_dir
        self.suffix = "" if n == 1 else f"_shard{k}of{n}"
        self.report_format = report_format
        self._lock = OutputLock(self.path, self.suffix)
        self._writable_at = self.path

    def check_location(self, roots: list[str], cases: list[Case], allow: bool) -> None:
        """Where the folder is may be used: see :func:`check_output_dir` and :func:`check_writable`."""
        check_output_dir(self.path, roots, cases, allow)
        self._writable_at = check_writable(self.path)

    def lock(self) -> None:
        """Take the folder's lock if the folder exists (a new folder is locked by :meth:`prepare`)."""
        if os.path.isdir(self.path):
            self._lock.acquire()

    def plan_cases(self, cases: list[Case], resume: bool, overwrite: bool) -> tuple[list[Case], list[dict]]:
        """(cases to screen, records of complete cases skipped by ``resume``).

        Raises:
            UsageError: a ``<case>.json`` that screen did not write, or outputs present without
                ``resume``/``overwrite``.
        """
        todo, done = [], []
        for c in cases:
            rec = self.plan.complete(c.case_id, c.path, c.kind == "dicom") if resume else None
            if rec is not None:
                done.append(rec)
                continue
            paths = self.plan.paths(c.case_id, c.kind == "dicom")
            if os.path.exists(paths["json"]) and not written_by_screen(paths["json"], c.case_id):
                raise UsageError(f"{paths['json']} exists and was not written by covseg screen (screening case "
                                 f"{c.case_id} would replace it); move it or choose another --output")
            if not resume and not overwrite and any(os.path.exists(p) for p in paths.values()):
                raise UsageError(f"outputs for case {c.case_id} already exist in {self.path}; pass --resume "
                                 "(skip complete cases) or --overwrite")
            todo.append(c)
        return todo, done

    def refuse_foreign_reports(self) -> None:
        refuse_foreign_reports(self.path, self.suffix, self.report_format)

    def check_free_space(self, todo: list[Case]) -> None:
        """Enough free space for ``todo``'s outputs (after :meth:`check_location`). Raises UsageError."""
        check_free_space(self._writable_at, needed_bytes(self.plan, todo))

    def prepare(self, case_ids: list[str]) -> int:
        """Create the folder, lock it, remove what a killed run left for these cases and the reports;
        returns the number of temporaries removed."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output folder {self.path}: {exc.strerror or exc}") from None
        self._lock.acquire()
        return self.plan.remove_stray_temporaries(case_ids, tuple(report_names(self.suffix, "both")))

    def write_reports(self, rows: list[dict], failures: list[dict]) -> None:
        """summary.csv/.json (as ``report_format`` says), failures.csv and index.html, all or nothing.

        Raises:
            ReportWriteError: one line naming the problem (e.g. no space left); the previous reports are intact.
        """
        files = {}
        if self.report_format in ("csv", "both"):
            files[f"summary{self.suffix}.csv"] = csv_text(rows, summary_columns(rows))
        if self.report_format in ("json", "both"):
            files[f"summary{self.suffix}.json"] = json_text({"cases": rows, "failures": failures})
        files[f"failures{self.suffix}.csv"] = csv_text(failures, FAILURE_COLUMNS)
        files[f"index{self.suffix}.html"] = html_report(rows, failures, list(files))
        write_reports_atomically(self.path, files)

    def release(self) -> None:
        self._lock.release()


def write_reports_atomically(out_dir: str, files: dict[str, str]) -> None:
    """Write report ``files`` (name → text) in ``out_dir`` all or nothing; ReportWriteError on failure."""
    try:
        atomic_write_all({os.path.join(out_dir, name): text.encode("utf-8") for name, text in files.items()})
    except OSError as exc:
        code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        raise ReportWriteError(f"cannot write the batch reports ({', '.join(files)}) in {out_dir}: "
                               f"{exc.strerror or exc}{f' ({code})' if code else ''}; the previous reports are "
                               "unchanged and every finished case's own outputs are kept: fix the cause (e.g. free "
                               "space), then rerun with --resume to write them") from None
