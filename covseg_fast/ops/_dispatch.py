"""Backend selection for the fused ops.

Every op owns an ordered list of :class:`Backend` s; the pure-PyTorch reference
is always last and always available, so something always serves. The order is
the preference: the first backend that is available for the tensor's device
and accepts the call's arguments runs.

``COVSEG_BACKEND=<name>`` (or :func:`use_backend`) forces one backend for every
op. Forcing ``reference`` always works; forcing anything else raises, listing
every backend's reason, when that backend cannot serve the call.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from . import knobs

REFERENCE = "reference"
_forced: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("covseg_backend", default=None)

# Reason strings are returned (not raised) so `covseg info` can print them.
Reason = Optional[str]


@dataclass
class Backend:
    """One implementation of an op.

    ``available(device_type)`` says once whether the backend can run on that
    device type at all (library built, Triton importable, ...); ``accepts``
    says per call whether these arguments fit (dtype, sizes). Both return
    ``None`` when fine, else a short human reason.
    """

    name: str
    fn: Callable
    available: Callable[[str], Reason]
    accepts: Callable[..., Reason] = field(default=lambda *a, **k: None)


def forced_backend() -> Optional[str]:
    """The backend forced by :func:`use_backend` or ``COVSEG_BACKEND``, if any."""
    value = _forced.get()
    if value is None:
        value = knobs.value("COVSEG_BACKEND") or None  # not os.environ: this runs inside traced op bodies
    return value


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Force ``name`` (e.g. ``"reference"``) for every op inside the block; ``None`` restores the default."""
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


class BackendError(RuntimeError):
    """No backend can serve a call; the message lists each backend's reason."""


class OpBackends:
    """The ordered backends of one op, with selection and reporting."""

    def __init__(self, op_name: str, reference: Callable):
        self.op_name = op_name
        self._backends: list[Backend] = []
        self.reference = Backend(REFERENCE, reference, lambda device_type: None)

    def register(self, backend: Backend) -> Backend:
        """Add a backend ahead of the reference (earlier registrations win)."""
        self._backends.append(backend)
        return backend

    @property
    def backends(self) -> list[Backend]:
        return [*self._backends, self.reference]

    def get(self, name: str) -> Backend:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise BackendError(f"{self.op_name}: unknown backend {name!r}; known: {[b.name for b in self.backends]}")

    def reasons(self, device_type: str, *args, **kwargs) -> dict[str, Reason]:
        """For each backend, None if it would serve this call, else why not."""
        out: dict[str, Reason] = {}
        for backend in self.backends:
            reason = backend.available(device_type)
            if reason is None and (args or kwargs):
                reason = backend.accepts(*args, **kwargs)
            out[backend.name] = reason
        return out

    def select(self, device_type: str, *args, **kwargs) -> Backend:
        """The backend that serves this call (honouring a forced backend)."""
        forced = forced_backend()
        if forced is not None:
            backend = self.get(forced) if forced in {b.name for b in self.backends} else None
            if backend is None:
                # An op without that backend falls back to its reference: forcing
                # "triton" must not break ops that have only a C++ kernel.
                return self.reference
            reason = backend.available(device_type) or backend.accepts(*args, **kwargs)
            if reason is None:
                return backend
            detail = "; ".join(f"{n}: {r or 'ok'}" for n, r in self.reasons(device_type, *args, **kwargs).items())
            raise BackendError(
                f"{self.op_name}: forced backend {forced!r} cannot serve this call on {device_type} ({detail})"
            )
        for backend in self.backends:
            if backend.available(device_type) is None and backend.accepts(*args, **kwargs) is None:
                return backend
        raise BackendError(f"{self.op_name}: no backend serves {device_type}")  # unreachable: reference

    def describe(self, device_type: str) -> list[tuple[str, Reason]]:
        """(backend, reason-or-None) in preference order, for `covseg info`."""
        return [(b.name, b.available(device_type)) for b in self.backends]


# op name -> its backends; filled by each ops/<op>.py at import.
REGISTRY: dict[str, OpBackends] = {}


def op_backends(op_name: str, reference: Callable) -> OpBackends:
    """Create and register the backend list of one op."""
    entry = OpBackends(op_name, reference)
    REGISTRY[op_name] = entry
    return entry
