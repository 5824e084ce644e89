"""One `covseg screen` run from its options: the implementation that the CLI (``covseg screen``) and the Python
API (:func:`covseg_fast.screen`) both call, so they cannot differ.

:class:`ScreenOptions` holds every option with the CLI's defaults; :func:`run_screen` checks them (a bad one
raises :class:`~.errors.UsageError` with a one-line message before anything is loaded or written), reads the
checkpoint, resolves the device, builds the :class:`~.screener.Screener` and runs :func:`~.batch.screen_batch`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

from .errors import UsageError

log = logging.getLogger(__name__)

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEMO_VOLUME = os.path.join(ASSETS, "demo_ct.nii.gz")
DEMO_CHECKPOINT = os.path.join(ASSETS, "demo_checkpoint.pt")
DEFAULT_DECODE_TIMEOUT_S = 600.0  # = decoding.DEFAULT_TIMEOUT_S (not imported: parsing stays torch-free)
BACKENDS = ("auto", "torch", "compile", "onnxruntime", "tensorrt")  # = backends.CHOICES
BACKEND_ENV = "COVSEG_SCREEN_BACKEND"  # the --backend default when set (e.g. a site that wants eager torch)
CPU_BATCH, CUDA_BATCH = 8, 16  # batch-size defaults (benchmarks/results/cpu_layout_batch_1thread.json)
OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")
REPORT_FORMATS = ("json", "csv", "both")
TTA_MODES = ("none", "hflip", "flips")


def default_backend() -> str:
    """``$COVSEG_SCREEN_BACKEND`` when it names a backend, else ``auto``."""
    value = os.environ.get(BACKEND_ENV) or "auto"
    return value if value in BACKENDS else "auto"  # a bad value must not break --help


@dataclasses.dataclass
class ScreenOptions:
    """Every option of `covseg screen` (``covseg screen --help`` says what each does), with its defaults."""

    checkpoint: Optional[str] = None
    model: Optional[str] = None            # expected model name (checked)
    demo: bool = False                     # the shipped demo checkpoint (and demo volume when no inputs)
    backend: Optional[str] = None           # None: default_backend() (auto unless $COVSEG_SCREEN_BACKEND)
    device: str = "auto"
    threads: Optional[int] = None           # model threads; None: every CPU this process may use
    batch_size: Optional[int] = None        # None: CPU_BATCH on a CPU, CUDA_BATCH on CUDA
    workers: int = 2
    decode_timeout: Optional[float] = None  # seconds; None: DEFAULT_DECODE_TIMEOUT_S; 0: no limit
    writers: Optional[int] = None           # None: min(4, CPUs)
    window: Optional[tuple[float, float]] = None  # HU; None: the checkpoint's, else LUNG_WINDOW
    threshold: float = 0.5
    input_size: Optional[int | tuple[int, int]] = None
    tta: str = "none"
    shard: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    save_probabilities: bool = False
    save_unrestricted_mask: bool = False
    save_lung_mask: bool = False
    save_label_map: bool = False
    masks: bool = True
    montage: bool = True
    output_format: str = "nifti"
    report_format: str = "both"
    allow_output_in_input: bool = False
    progress: bool = True


def check_window(window) -> tuple[float, float]:
    """(LOW, HIGH) HU as floats, HIGH > LOW. Raises UsageError."""
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise UsageError(f"window expects two numbers LOW HIGH in HU (e.g. -1250 250), got {window!r}") from None
    if not hi > lo:
        raise UsageError(f"window {lo:g},{hi:g}: HIGH must be greater than LOW")
    return lo, hi


def resolve_device(text: str) -> str:
    """:func:`covseg_fast.devices.resolve_device`, its ValueError as a UsageError."""
    from ..devices import resolve_device as resolve

    try:
        return resolve(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def read_model_input(checkpoint: str, size=None, window=None):
    """(checkpoint payload, :class:`~covseg_fast.models.model_input.ModelInput`): the input size and HU window,
    given or as the checkpoint recorded. Raises UsageError for an unreadable checkpoint or bad size/window."""
    from ..models.model_input import resolve_input
    from ..models.registry import CheckpointError, read_checkpoint

    try:
        payload = read_checkpoint(checkpoint)
        return payload, resolve_input(payload, checkpoint, size=size,
                                      window=None if window is None else check_window(window))
    except (CheckpointError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def demo_checkpoint() -> str:
    """The shipped demo checkpoint. Raises UsageError when this build does not ship it."""
    if not os.path.isfile(DEMO_CHECKPOINT):
        raise UsageError(f"the demo checkpoint {DEMO_CHECKPOINT} is not shipped in this build (it is trained with "
                         "`covseg train`); pass a checkpoint of your own")
    return DEMO_CHECKPOINT


def _check(inputs: list[str], o: ScreenOptions) -> tuple[list[str], str]:
    """(inputs, checkpoint) after the checks that need nothing loaded (torch is imported only for --model)."""
    for name, value, allowed in (("backend", o.backend, BACKENDS), ("output-format", o.output_format, OUTPUT_FORMATS),
                                 ("report-format", o.report_format, REPORT_FORMATS), ("tta", o.tta, TTA_MODES)):
        if value not in allowed:
            raise UsageError(f"--{name} {value!r}: expected one of {', '.join(allowed)}")
    checkpoint = o.checkpoint
    if o.demo:
        if not os.path.isfile(DEMO_VOLUME):
            raise UsageError(f"--demo: the demo volume {DEMO_VOLUME} is missing from this installation")
        checkpoint = checkpoint or demo_checkpoint()
        inputs = inputs or [DEMO_VOLUME]
    if not inputs:
        raise UsageError("no inputs: give NIfTI files, DICOM folders, directories, globs or a list file "
                         "(or --demo)")
    if checkpoint is None:
        raise UsageError("--checkpoint is required (a model without trained weights cannot screen); "
                         "--demo screens with the shipped demo weights")
    if ((o.batch_size is not None and o.batch_size < 1) or o.workers < 0
            or (o.writers is not None and o.writers < 1)):
        raise UsageError("--batch-size must be ≥ 1, --workers ≥ 0 and --writers ≥ 1")
    if o.threads is not None and o.threads < 1:
        raise UsageError(f"--threads must be ≥ 1, got {o.threads}")
    if o.decode_timeout is not None and not o.decode_timeout >= 0:
        raise UsageError(f"--decode-timeout must be ≥ 0 seconds (0: no limit), got {o.decode_timeout}")
    if o.decode_timeout and o.workers == 0:
        log.warning("--decode-timeout does not apply with --workers 0 (decoding in the main process cannot be "
                    "stopped): a stuck decoder would stop the batch; use --workers 1 or more")
    if not 0.0 < o.threshold < 1.0:
        raise UsageError(f"--threshold must be in (0, 1), got {o.threshold}")
    if o.model is not None:
        from ..models.registry import MODELS  # imports torch: after the checks that answer at once

        if o.model not in MODELS:
            raise UsageError(f"--model {o.model!r}: unknown model; known models: {', '.join(sorted(MODELS))}")
    return inputs, checkpoint


def run_screen(inputs: list[str], output: Optional[str], options: ScreenOptions) -> tuple[int, object, dict]:
    """Screen ``inputs`` into ``output`` (None: ``covseg_screen_out``, or ``covseg_demo_out`` with ``demo``);
    returns (exit code 0/1, :class:`~.screener.ScreenResult`, summary) as :func:`~.batch.screen_batch` does.

    Raises:
        UsageError, DiscoveryError, ReportWriteError, ScreenInterrupted, WorkersUnavailable: as screen_batch.
    """
    o = dataclasses.replace(options, backend=options.backend or default_backend())
    inputs, checkpoint = _check(list(inputs), o)
    # the checks above need no torch: a usage error answers at once
    from .batch import screen_batch
    from .cpu_runtime import apply_threads, inference_threads, tune_allocator
    from .screener import ScreenConfig, default_writers
    payload, model_input = read_model_input(checkpoint, o.input_size, o.window)
    log.info("input %d×%d px (%s); HU window %g … %g (%s); %s slices", *model_input.size,
             model_input.size_source, *model_input.window, model_input.window_source, model_input.plane)
    device = resolve_device(o.device)
    o = dataclasses.replace(o, batch_size=o.batch_size or (CPU_BATCH if device == "cpu" else CUDA_BATCH))
    out_dir = output or ("covseg_demo_out" if o.demo else "covseg_screen_out")
    cfg = ScreenConfig(out_dir=out_dir, window=model_input.window, input_size=model_input.size,
                       threshold=o.threshold, batch_size=o.batch_size, workers=o.workers, device=device,
                       save_masks=o.masks, save_probabilities=o.save_probabilities, montage=o.montage,
                       save_unrestricted_mask=o.save_unrestricted_mask, save_lung_mask=o.save_lung_mask,
                       save_label_map=o.save_label_map, output_format=o.output_format, progress=o.progress,
                       decode_timeout_s=DEFAULT_DECODE_TIMEOUT_S if o.decode_timeout is None else o.decode_timeout,
                       writers=default_writers() if o.writers is None else o.writers)

    threads = inference_threads(o.threads)
    allocator = tune_allocator()  # before the model allocates anything (cpu_runtime: why, and the off-switch)
    apply_threads(threads)

    def factory():
        return build_screener(payload, checkpoint, model_input, o, cfg, os.path.join(out_dir, ".covseg_cache"),
                              threads=threads, allocator=allocator)

    return screen_batch(inputs, factory, cfg, resume=o.resume, overwrite=o.overwrite, shard=o.shard,
                        allow_output_in_input=o.allow_output_in_input, report_format=o.report_format)


def build_screener(payload: dict, checkpoint: str, model_input, options: ScreenOptions, config, cache_dir: str,
                   threads: Optional[int] = None, allocator: bool = False):
    """The :class:`~.screener.Screener` of ``checkpoint`` (its ``payload`` read) run as ``options`` say (model
    check, backend, TTA) on ``config.device`` with ``threads`` model threads; exported backends keep their
    engines in ``cache_dir``. Raises UsageError (a checkpoint that does not fit, a backend that cannot run)."""
    from .. import __version__
    from ..models.model_input import plane_adapter
    from ..models.registry import CheckpointError, get_spec, model_from_checkpoint
    from ..models.tta import with_tta
    from .backends import resolve_backend
    from .cpu_runtime import inference_threads
    from .model_info import model_record
    from .screener import Screener

    o = options
    try:
        model = model_from_checkpoint(payload, checkpoint, expect=o.model)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    threads = threads or inference_threads(o.threads)
    batch_size = o.batch_size or (CPU_BATCH if config.device == "cpu" else CUDA_BATCH)
    choice = resolve_backend(o.backend or default_backend(), config.device)
    runnable, choice = _build_backend(model, choice, config.device, cache_dir, threads, model_input.size, batch_size)
    log.info("model %s (%s, %s parameters); device %s; backend %s (%s); %d inference thread(s), %d decoding "
             "worker(s), %d writer(s); glibc allocator tuning %s", model.covseg_name, checkpoint,
             f"{sum(p.numel() for p in model.parameters()):,}", config.device, choice.name, choice.reason, threads,
             config.workers, config.writers, "on" if allocator else "off")
    meta = {**model_record(model, checkpoint, payload), "covseg_version": __version__, "backend": choice.name,
            "backend_reason": choice.reason, "threads": threads, "tta": o.tta, **model_input.as_record()}
    runnable = plane_adapter(runnable, model_input.plane)  # slices as the model was trained on them
    return Screener(with_tta(runnable, o.tta), get_spec(model.covseg_name), config, meta)


def _build_backend(model, choice, device: str, cache_dir: str, threads: int, size, batch_size: int):
    """(runnable module, the backend actually used): a backend ``auto`` chose that cannot start falls back to
    eager torch with a warning; one the user named is a usage error."""
    from .backends import BackendChoice, make_backend

    try:
        return make_backend(model, choice.name, device, cache_dir, batch_size=batch_size, size=size,
                            threads=threads), choice
    except Exception as exc:  # noqa: BLE001  (auto: whatever stops an export, eager torch still serves)
        if not choice.auto:
            if isinstance(exc, (ValueError, RuntimeError)):
                raise UsageError(f"--backend {choice.name}: {exc}") from None
            raise
        log.warning("--backend auto: %s cannot run here (%s); using eager torch", choice.name, exc)
        return model, BackendChoice("torch", f"auto: {choice.name} failed ({exc})", True)
