"""Where the time of one `covseg screen` run went: busy time per stage, the inference loop's waits, the bottleneck."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class StageTimes:
    """Where the time of one run went, in seconds (host ``time.perf_counter``; no device sync added).

    Busy time per stage, summed over cases: ``decode_s`` (reading + lung mask, in the worker
    processes, so it can exceed the wall time with several workers), ``device_s`` (to the device,
    windowing, resizing, normalising: in the preparation thread, one case ahead of the inference loop, so
    not part of the loop's time), ``inference_s`` (batching and the model), ``postprocess_s``
    (resizing back, to the host, thresholding) and ``write_s`` (all outputs of a case, summed over the
    writer threads). The inference loop (the main thread) additionally waited ``starved_s`` for a
    decoded and prepared case, ``backpressure_s`` for room in the write queue and, after its last batch,
    ``drain_s`` for the writers to finish. On CUDA the device stages run asynchronously: their host
    times hold kernel launches, and the GPU's own time surfaces wherever the loop first waits for it
    (mostly the copy of a finished case to the host, counted in ``postprocess_s``).
    """

    decode_s: float = 0.0
    device_s: float = 0.0
    inference_s: float = 0.0
    postprocess_s: float = 0.0
    write_s: float = 0.0
    starved_s: float = 0.0
    backpressure_s: float = 0.0
    drain_s: float = 0.0
    workers: int = 0
    writers: int = 1
    device: str = "cpu"

    def loop_shares(self) -> dict[str, float]:
        """The inference loop's waits and device stages, seconds each: what its wall time consisted of.

        ``decode`` is the time it was starved for input (decoding, or preparation when that is slower),
        ``write`` its back-pressure and final drain; on CUDA the asynchronous device stages are one share,
        ``gpu``. The preparation (``device_s``) runs in its own thread: it shows here only as starvation.
        """
        shares = {"decode": self.starved_s, "write": self.backpressure_s + self.drain_s}
        if self.device.startswith("cuda"):
            shares["gpu"] = self.inference_s + self.postprocess_s
        else:
            shares.update(inference=self.inference_s, postprocess=self.postprocess_s)
        return shares

    @property
    def bottleneck(self) -> str:
        """The stage the inference loop spent most of its time on or waiting for ('' for an empty run)."""
        shares = self.loop_shares()
        name, value = max(shares.items(), key=lambda kv: kv[1])
        return name if value > 0 else ""

    def as_dict(self) -> dict:
        d = {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}
        d["bottleneck"] = self.bottleneck
        return d

    def line(self, wall_s: float) -> str:
        """One line for the end of `covseg screen`: stage busy times (with how busy the decoding workers
        and the writers were, in % of their capacity), the loop's waits, the bottleneck."""
        def pool(n: int, what: str, busy: float) -> str:
            use = f", {100 * busy / (n * wall_s):.0f}% busy" if wall_s > 0 else ""
            return f"{n} {what}{'s' if n > 1 else ''}{use}"

        dec = "in the loop" if self.workers == 0 else pool(self.workers, "worker", self.decode_s)
        text = (f"stages (busy s): decode {self.decode_s:.1f} ({dec}), device {self.device_s:.1f}, "
                f"inference {self.inference_s:.1f}, postprocess {self.postprocess_s:.1f}, "
                f"write {self.write_s:.1f} ({pool(self.writers, 'writer', self.write_s)}); inference loop waited "
                f"{self.starved_s:.1f} for input, {self.backpressure_s + self.drain_s:.1f} for writers")
        b = self.bottleneck
        if b:
            share = self.loop_shares()[b] / wall_s if wall_s > 0 else 0.0
            text += f" → bottleneck: {b} ({100 * share:.0f}% of {wall_s:.1f} s)"
        return text
