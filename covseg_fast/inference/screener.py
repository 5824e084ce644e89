"""`covseg screen` engine: a pipeline that keeps the accelerator busy.

Stages (each overlaps the others):

1. decode — worker processes (:mod:`.decoding`, ``workers`` of them, a bounded look-ahead) read NIfTI/DICOM
   into a canonical :class:`~covseg_fast.io.Volume` and compute its anatomy (body, right/left lung, the
   margin where infection counts, plausibility checks: :mod:`.anatomy`); a worker that dies (out of
   memory, a decoder crash) is replaced and only the case that kills it again, alone, fails;
2. device — in a thread of its own (:mod:`.prefetch`), one case ahead of the inference loop: the HU volume
   goes to the device (pinned memory, non-blocking copy on CUDA), where the slices are put in display
   orientation, windowed, resized to the model's input size and normalised;
3. inference — slices from ANY number of volumes are packed into fixed-size batches (bf16 autocast on
   CUDA); probabilities (sigmoid of one logit channel, or softmax over K classes) return to per-case
   buffers on the device; a finished case is resized back to its slice size, thresholded (one channel) or
   given its most probable class (K channels), and mapped back to its canonical grid;
4. write — ``writers`` background threads (gzip/zlib and PNG encoding release the GIL) each write whole
   cases: the infection restricted to the lungs and their margin (:mod:`.burden`) on the input grid (input
   affine), optional probabilities, unrestricted mask, lung mask and label map, the PNG montage and the
   JSON record (last: it marks the case complete). Records and failures are returned in input order.

A failing case (unreadable, corrupt, not 3-D, NaN, ...) is recorded with a one-line reason and the batch
goes on.

Every run also accounts for where the time went (:class:`StageTimes`, host ``perf_counter`` only, no
device synchronisation added): the busy time of each stage and how long the inference loop waited for
decoded input (starved) or for room in the write queue (back-pressure), and names the bottleneck.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..io import Case
from ..models.registry import ModelSpec, prepare_input
from .burden import class_names
from .decoding import DEFAULT_TIMEOUT_S, decoded_in_order, reason as _reason
from .errors import ScreenInterrupted
from .output_folder import OutputPlan
from .outputs import write_case
from .prefetch import Prefetch
from .progress import logs_through, progress_bar
from .stage_times import StageTimes

log = logging.getLogger(__name__)
POST_CHUNK = 32  # slices resized back and classified at a time
PREP_CHUNK = 32  # slices windowed and resized at a time


def default_writers() -> int:
    """Writer threads by default: min(4, CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


@dataclasses.dataclass
class ScreenConfig:
    """Knobs of one screening run (see ``covseg screen --help``)."""

    out_dir: str
    window: tuple[float, float] = (-1250.0, 250.0)
    input_size: Optional[tuple[int, int]] = None  # (H, W) the model is fed; None: the model's registered size
    threshold: float = 0.5
    batch_size: int = 16
    workers: int = 2
    device: str = "cpu"
    writers: int = dataclasses.field(default_factory=default_writers)
    save_masks: bool = True
    save_probabilities: bool = False
    save_unrestricted_mask: bool = False
    save_lung_mask: bool = False
    save_label_map: bool = False
    montage: bool = True
    output_format: str = "nifti"  # infection mask as "nifti", "dicom-seg" (DICOM series inputs) or "both"
    progress: bool = True
    decode_timeout_s: float = DEFAULT_TIMEOUT_S  # per case, with workers ≥ 1 (0: no limit)

    def plan(self) -> OutputPlan:
        return OutputPlan(self.out_dir, masks=self.save_masks and self.output_format != "dicom-seg",
                          probabilities=self.save_probabilities, montage=self.montage,
                          unrestricted=self.save_unrestricted_mask, lung_mask=self.save_lung_mask,
                          label_map=self.save_label_map, dicom_seg=self.output_format in ("dicom-seg", "both"))


@dataclasses.dataclass
class ScreenResult:
    """What a run did: records of finished cases, failures (case, path, reason), timing."""

    records: list[dict] = dataclasses.field(default_factory=list)
    failures: list[dict] = dataclasses.field(default_factory=list)
    slices: int = 0
    wall_s: float = 0.0
    stages: StageTimes = dataclasses.field(default_factory=StageTimes)

    @property
    def volumes_per_s(self) -> float:
        return len(self.records) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def slices_per_s(self) -> float:
        return self.slices / self.wall_s if self.wall_s > 0 else 0.0


class _Pending:
    """A case on the device: its model-ready slices and the probability buffer being filled."""

    def __init__(self, item: dict, slices: torch.Tensor, plane: tuple[int, int]):
        self.item = item
        self.slices = slices            # (Z, C, H, W) model input
        self.plane = plane              # display-plane size (rows, cols) to resize back to
        self.prob: Optional[torch.Tensor] = None  # (Z, K, H, W): K (1 or the classes) known from the first batch
        self.sent = 0                   # slices handed to a batch
        self.done = 0                   # slices with probabilities
        self.t_device = time.perf_counter()


class Screener:
    """Screen cases with a registered model (eval ``model(x)`` → logits (B, K, H, W): K = 1 one sigmoid channel,
    K ≥ 2 softmax classes, 0 background; e.g. ``covseg train --multiclass``: 1 GGO, 2 consolidation).

    Args:
        model: the network (moved to ``config.device`` and put in eval mode here).
        spec: its :class:`ModelSpec` (input size, channels, normalisation).
        config: :class:`ScreenConfig`.
        meta: extra fields for every JSON record (model name, checkpoint, covseg version, ...).
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, config: ScreenConfig, meta: Optional[dict] = None):
        self.device = torch.device(config.device)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.cfg = config
        self.meta = dict(meta or {})
        self.plan = config.plan()
        self.autocast = self.device.type == "cuda"

    # ---------------------------------------------------------------- device stage
    def to_model_slices(self, data: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(X, Y, Z) canonical HU → (Z, C, H, W) model input on the device, plus the display-plane size.

        ``PREP_CHUNK`` slices at a time (each slice's result is the same), so the only full-size float
        arrays are the input and the model-size result: no flipped or windowed copy of the whole volume.
        """
        t = torch.from_numpy(data)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        lo, hi = self.cfg.window
        plane = (t.shape[1], t.shape[0])  # display plane: rows along Y, columns along X
        size = tuple(self.cfg.input_size or self.spec.input_size)
        out = None
        for s in range(0, t.shape[2], PREP_CHUNK):
            # display orientation: flip X (→ patient left) and Y (→ posterior), slices first: (Z, Y, X)
            part = t[:, :, s:s + PREP_CHUNK].flip(0, 1).permute(2, 1, 0)
            grey = ((part - lo) / (hi - lo)).clamp_(0.0, 1.0).unsqueeze(1)
            if plane != size:
                down = plane[0] > size[0] or plane[1] > size[1]
                grey = F.interpolate(grey, size=size, mode="bilinear", align_corners=False, antialias=down)
                grey = grey.clamp_(0.0, 1.0)
            x = prepare_input(grey, self.spec)
            if out is None:
                out = torch.empty((t.shape[2], *x.shape[1:]), dtype=x.dtype, device=x.device)
            out[s:s + x.shape[0]] = x
        if out is None:
            raise ValueError(f"a volume of shape {tuple(t.shape)} has no slices")
        return out, plane

    def from_model_probs(self, prob: torch.Tensor, plane: tuple[int, int]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(Z, K, H, W) probabilities → (classes, probability) on the canonical grid (X, Y, Z).

        ``classes`` uint8: K = 1: 1 where the probability ≥ the threshold; K > 1: the most probable class
        (0 background). ``probability`` float32 of infection (K > 1: 1 - P(background)), only with
        ``save_probabilities`` (else None). Resized back ``POST_CHUNK`` slices at a time, so no full-size
        K-channel float copy is made.
        """
        z, k = prob.shape[0], prob.shape[1]
        classes = torch.empty((z, *plane), dtype=torch.uint8)
        keep = torch.empty((z, *plane), dtype=torch.float32) if self.cfg.save_probabilities else None
        for s in range(0, z, POST_CHUNK):
            p = prob[s:s + POST_CHUNK]
            if tuple(p.shape[2:]) != tuple(plane):
                p = F.interpolate(p, size=plane, mode="bilinear", align_corners=False)
            if k == 1:
                cls = p[:, 0] >= self.cfg.threshold
                infection = p[:, 0]
            else:
                cls = p.argmax(dim=1)
                infection = 1.0 - p[:, 0]
            classes[s:s + POST_CHUNK] = cls.to(torch.uint8).cpu()
            if keep is not None:
                keep[s:s + POST_CHUNK] = infection.float().cpu()
        to_canonical = lambda t: np.ascontiguousarray(t.permute(2, 1, 0).flip(0, 1).numpy())  # noqa: E731
        return to_canonical(classes), (to_canonical(keep) if keep is not None else None)

    @torch.inference_mode()
    def _infer(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) model input → (B, K, H, W) probabilities: sigmoid for K = 1, softmax over K > 1 classes."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(x)
        if isinstance(logits, dict):
            logits = logits["out"]
        logits = logits.float()
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def segment(self, data: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray], int]:
        """One (X, Y, Z) canonical HU volume in memory, through the same device, model and post-processing steps
        as :meth:`run`: (classes, probability, K), as :meth:`from_model_probs` returns them."""
        x, plane = self.to_model_slices(data)
        bs = self.cfg.batch_size
        probs = torch.cat([self._infer(x[s:s + bs]) for s in range(0, x.shape[0], bs)])
        classes, prob = self.from_model_probs(probs, plane)
        return classes, prob, int(probs.shape[1])

    # ---------------------------------------------------------------- pipeline
    def run(self, cases: list[Case]) -> ScreenResult:
        """Screen ``cases``; returns records, failures and stage times (does not write the batch CSVs).

        Records and failures come back in the order of ``cases`` whatever order the writers finish in.
        Log lines go through the progress bar (``tqdm.write``) while it is shown, so they do not break it.

        Raises:
            ScreenInterrupted: Ctrl-C; the cases being written are finished first, queued ones dropped.
            WorkersUnavailable: the decoding workers die as soon as they start (the decoded cases are written first).
        """
        n_writers = max(1, int(self.cfg.writers))
        res = ScreenResult()
        res.stages = StageTimes(workers=self.cfg.workers, writers=n_writers, device=str(self.device))
        t0 = time.perf_counter()
        write_q: queue.Queue = queue.Queue(maxsize=max(4, n_writers))
        lock = threading.Lock()
        bar = progress_bar(len(cases), self.cfg.progress)
        writers = [threading.Thread(target=self._writer, args=(write_q, res, lock, bar), daemon=True,
                                    name=f"covseg-writer-{i}") for i in range(n_writers)]
        for w in writers:
            w.start()
        interrupted = False
        stop = threading.Event()
        prepared = Prefetch(decoded_in_order(cases, self.cfg.workers, self.cfg.decode_timeout_s, stop),
                            self.to_model_slices, stop, _reason).start()
        logs = contextlib.ExitStack()  # until the bar closes: the writers log while they drain, too
        logs.enter_context(logs_through(bar))
        try:
            self._produce(prepared, res, lock, write_q, bar)
        except KeyboardInterrupt:
            interrupted = True
            _drop_queued(write_q)
        finally:
            prepared.stop()  # now, not when garbage-collected: an early stop kills the decoding workers
            res.stages.device_s += prepared.busy_s
            t_drain = time.perf_counter()
            for _ in writers:
                write_q.put(None)  # one stop mark per writer, after every case
            for w in writers:
                w.join()
            res.stages.drain_s = time.perf_counter() - t_drain
            res.wall_s = time.perf_counter() - t0
            bar.close()
            logs.close()
        order = {c.case_id: i for i, c in enumerate(cases)}
        if interrupted:
            raise ScreenInterrupted(len(res.records) + len(res.failures), len(cases), res)
        res.records.sort(key=lambda r: order.get(r["case_id"], len(order)))
        res.failures.sort(key=lambda r: order.get(r["case_id"], len(order)))
        return res

    def _fail(self, res: ScreenResult, lock: threading.Lock, case: Case, reason: str, bar, decoded: bool = True) -> None:
        log.warning("FAILED %s (%s): %s", case.case_id, case.path, reason)
        with lock:
            res.failures.append({"case_id": case.case_id, "status": "failed", "path": case.path, "reason": reason})
        bar.volume_finished(decoded)

    def _produce(self, prepared: Prefetch, res, lock, write_q, bar) -> None:
        pending: collections.deque[_Pending] = collections.deque()
        bs = self.cfg.batch_size
        queued = 0  # slices waiting for a batch
        st_times = res.stages
        clock = time.perf_counter

        def run_batch(n: int) -> None:
            nonlocal queued
            parts, owners = [], []
            while n > 0 and pending:
                # the oldest case with unsent slices
                st = next((p for p in pending if p.sent < p.slices.shape[0]), None)
                if st is None:
                    break
                take = min(n, st.slices.shape[0] - st.sent)
                parts.append(st.slices[st.sent:st.sent + take])
                owners.append((st, st.sent, take))
                st.sent += take
                n -= take
                queued -= take
            if not parts:
                return
            t_inf = clock()
            try:
                probs = self._infer(torch.cat(parts) if len(parts) > 1 else parts[0])
            except Exception as exc:
                for st, _, _ in owners:
                    st.item["error"] = f"inference failed: {_reason(exc)}"
                    queued -= st.slices.shape[0] - st.sent
                    st.sent = st.done = st.slices.shape[0]
            else:
                off = 0
                for st, start, take in owners:
                    if st.prob is None:
                        st.prob = torch.empty((st.slices.shape[0], *probs.shape[1:]), dtype=torch.float32,
                                              device=probs.device)
                    st.prob[start:start + take] = probs[off:off + take]
                    off += take
                    st.done += take
                bar.inferred(off)
            st_times.inference_s += clock() - t_inf
            while pending and pending[0].done == pending[0].slices.shape[0]:
                self._finish(pending.popleft(), res, lock, write_q, bar)

        while True:
            t_wait = clock()
            item = prepared.next_item()  # blocks while the next case is still being decoded or prepared
            st_times.starved_s += clock() - t_wait
            if item is None:
                break
            case = item["case"]
            st_times.decode_s += item.get("decode_s", 0.0)
            if "error" in item:
                self._fail(res, lock, case, item["error"], bar, decoded=False)
                continue
            x, plane = item.pop("x"), item.pop("plane")
            item["t_dequeued"] = time.perf_counter()
            bar.decoded(x.shape[0])
            pending.append(_Pending(item, x, plane))
            queued += x.shape[0]
            while queued >= bs:
                run_batch(bs)
        while queued > 0:
            run_batch(bs)

    def _finish(self, st: _Pending, res, lock, write_q, bar) -> None:
        item = st.item
        if "error" in item:
            self._fail(res, lock, item["case"], item["error"], bar)
            return
        t_post = time.perf_counter()
        try:  # resize back, copy to the host, threshold: e.g. out of memory on a huge volume fails this case
            item["num_classes"] = int(st.prob.shape[1])
            item["classes"], prob = self.from_model_probs(st.prob, st.plane)
        except Exception as exc:
            st.slices = st.prob = None
            res.stages.postprocess_s += time.perf_counter() - t_post
            self._fail(res, lock, item["case"], f"postprocessing failed: {_reason(exc)}", bar)
            return
        item["prob"] = prob  # None unless written: queued cases hold only what is written
        t_put = time.perf_counter()
        res.stages.postprocess_s += t_put - t_post
        item["infer_s"] = t_put - item["t_dequeued"]
        st.slices = st.prob = None  # free device memory now
        write_q.put(item)  # blocks while the writers are behind (back-pressure)
        res.stages.backpressure_s += time.perf_counter() - t_put

    def _writer(self, write_q: queue.Queue, res: ScreenResult, lock, bar) -> None:
        while True:
            item = write_q.get()
            if item is None:
                return
            t_w = time.perf_counter()
            case = item["case"]
            try:
                vol = item["volume"]
                names = class_names(item["num_classes"])
                record = {"case_id": case.case_id, "status": "ok", "path": case.path, "format": vol.fmt,
                          "shape": list(vol.source_shape), "spacing_mm": [round(s, 6) for s in vol.spacing],
                          "slices": int(vol.data.shape[2]), **self.meta, "device": str(self.device),
                          "decision": "argmax" if names else "threshold",
                          "threshold": None if names else self.cfg.threshold, "window_hu": list(self.cfg.window),
                          "warnings": list(vol.warnings)}
                if names:
                    record["classes"] = list(names)
                for w in vol.warnings:
                    log.warning("%s: %s", case.case_id, w)
                record["decode_s"] = round(item["decode_s"], 4)
                record["infer_s"] = round(item["infer_s"], 4)
                record["time_s"] = round(item["decode_s"] + item["infer_s"] + (time.perf_counter() - t_w), 4)
                rec = write_case(self.plan, case.case_id, vol, item["classes"], item["anatomy"], item["prob"],
                                 record, self.cfg.window, names)
                for w in rec["lung_checks"]["failed"]:
                    log.warning("%s: %s", case.case_id, w)
                with lock:
                    res.records.append(rec)
                    res.slices += rec["slices"]
                    res.stages.write_s += time.perf_counter() - t_w
                bar.volume_finished()
            except Exception as exc:
                with lock:
                    res.stages.write_s += time.perf_counter() - t_w
                self._fail(res, lock, case, f"writing outputs failed: {_reason(exc)}", bar)


def _drop_queued(write_q: queue.Queue) -> None:
    """Ctrl-C: forget the cases waiting to be written (the writers finish the ones they hold)."""
    while True:
        try:
            write_q.get_nowait()
        except queue.Empty:
            return
