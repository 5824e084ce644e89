"""The strip-conv kernels address images of C·H·W ≥ 2³¹ elements without int32 wrap-around.

Products such as channel · channel-stride are int32 in a Triton kernel unless a factor is int64, and wrap
once they reach 2³¹ (C = 64 at 5,800² pixels): the kernel then reads and writes outside the tensor. The
test runs the kernels under the interpreter on a tiny view whose strides put its last channel (or row) at
element 2³¹ of a 4 GiB buffer that is never touched elsewhere (so only a few pages are ever resident).
Each case runs in a subprocess: an out-of-bounds access is a segmentation fault, not a Python error.
"""
import os
import subprocess
import sys

import pytest
import torch

from covseg_fast.ops.triton import available

REASON = available("cpu")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import sys
import torch
from covseg_fast.ops.reference.strip_conv import strip_conv as reference
from covseg_fast.ops.strip_conv import _reference_backward
from covseg_fast.ops.triton import strip_conv as kernels

layout = sys.argv[1]
c, h, w = 3, 3, 7
try:
    big = torch.empty(2**31 + 2**16, dtype=torch.float16)  # 4 GiB of address space, almost none resident
except RuntimeError as exc:
    print("SKIP", exc)
    sys.exit(0)
# the last channel (NCHW-like) or the last row (channels_last-like) starts at element 2³¹
strides = (0, 2**30, w, 1) if layout == "channel" else (0, 1, 2**30, c)
x = big.as_strided((1, c, h, w), strides)
gen = torch.Generator().manual_seed(0)
rnd = lambda *shape, s=1.0: (torch.randn(shape, generator=gen) * s).half()  # noqa: E731
x.copy_(rnd(1, c, h, w))
ks = (3, 5, 7)
weights = [rnd(c, 1, 5, 5, s=0.3), rnd(c, s=0.1), [rnd(c, 1, 1, k, s=0.5) for k in ks],
           [rnd(c, s=0.1) for _ in ks], [rnd(c, 1, k, 1, s=0.5) for k in ks], [rnd(c, s=0.1) for _ in ks]]
dense = x.contiguous()
as_float = lambda t: [as_float(u) for u in t] if isinstance(t, list) else t.float()  # noqa: E731
got = kernels.strip_conv_forward(x, *weights, torch.empty((1, c, h, w), dtype=torch.float16))
want = reference(dense.float(), *as_float(weights))
torch.testing.assert_close(got.float(), want, atol=2e-2 * want.abs().max().item(), rtol=2e-2)
g = rnd(1, c, h, w)
got = kernels.strip_conv_backward(g, x, *weights)
want = _reference_backward(g.float(), dense.float(), *as_float(weights))
for i, (a, e) in enumerate(zip(got, want)):
    torch.testing.assert_close(a.float(), e, atol=3e-2 * e.abs().max().item() + 1e-3, rtol=3e-2,
                               msg=lambda m: f"gradient {i}: {m}")
print("OK")
"""


@pytest.mark.triton
@pytest.mark.skipif(REASON is not None, reason=f"Triton on CPU: {REASON}")
@pytest.mark.parametrize("schedule", ["single", "split"])
@pytest.mark.parametrize("layout", ["channel", "row"])
def test_offsets_beyond_two_to_the_31(layout, schedule):
    env = dict(os.environ, TRITON_INTERPRET="1", COVSEG_STRIP_CONV_SCHEDULE=schedule,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", SCRIPT, layout], capture_output=True, text=True, env=env,
                            timeout=900)
    if result.stdout.startswith("SKIP"):
        pytest.skip(f"cannot reserve 4 GiB of address space here: {result.stdout[5:].strip()}")
    assert result.returncode == 0 and "OK" in result.stdout, (
        f"{layout} layout, {schedule} schedule: exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")

