"""The attention kernels compile for sm_90 on this (GPU-less) machine, for the configurations the launcher
picks, and do not spill registers (stack ≤ 16 bytes; oversized tiles show kilobytes). ptxas ships with
triton; `cuobjdump` reads the cubin's resource usage.

Skips with a reason when this Triton has no ahead-of-time compile API or no CUDA backend tools.
"""
import os
import re
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")


def _tools():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 replaces the compiler with the interpreter")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except Exception as exc:  # pragma: no cover - depends on the triton version
        pytest.skip(f"no ahead-of-time compile API in this triton: {exc}")
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        pytest.skip(f"triton ships no cuobjdump at {cuobjdump}")
    return ASTSource, GPUTarget, cuobjdump


def _signature(kernel, dtype: str, constexprs: dict) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("N", "DQK", "DV"):
            sig[name] = "i32"
        elif name in ("LSE", "DELTA"):
            sig[name] = "*fp32"
        elif name.isupper():
            sig[name] = "*" + dtype
        elif name in ("scale", "scale_log2e"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("dqk,dv", [(256, 2048), (32, 256), (121, 121)])
def test_kernels_compile_for_sm90_without_spills(tmp_path, dtype, dqk, dv):
    ASTSource, GPUTarget, cuobjdump = _tools()
    from covseg_fast.ops.triton import attention as kernels
    from covseg_fast.ops.triton.attention_launch import _config

    tname = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]

    class CudaLike:
        device = torch.device("cuda")

    CudaLike.dtype = dtype
    for backward, kernel in [(False, kernels.pa_fwd_kernel), (True, kernels.pa_bwd_dq_kernel),
                             (True, kernels.pa_bwd_dk_kernel), (True, kernels.pa_bwd_dv_kernel)]:
        cfg = _config(CudaLike, dqk, dv, backward)
        const = dict(cfg, NUM_D=triton.cdiv(dqk, cfg["BLOCK_D"]))
        if "NUM_C" in kernel.arg_names:
            const["NUM_C"] = triton.cdiv(dv, cfg["BLOCK_C"])
        compiled = triton.compile(ASTSource(kernel, _signature(kernel, tname, const), const),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 2})
        cubin = tmp_path / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", str(cubin)], capture_output=True, text=True).stdout
        stack = int(re.search(r"STACK:(\d+)", usage).group(1))
        # Oversized tiles show kilobytes of stack (spills); a few bytes is a call frame, not a spill.
        assert stack <= 16, f"{kernel.__name__} ({tname}, dqk={dqk}, dv={dv}, {cfg}) spills: {usage.strip()}"
