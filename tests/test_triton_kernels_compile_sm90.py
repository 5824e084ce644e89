"""Every Triton kernel launch of the package compiles for Hopper (sm_90) without spilling, on a CPU machine.

The launches are the ones the wrappers make at the benchmark shapes with their GPU tile configurations
(recorded on meta tensors, see triton_aot.py). Checked per launch: ``triton.compile`` succeeds for
``GPUTarget("cuda", 90, 32)``; the cubin has no stack frame (a register spill costs local-memory
traffic in the innermost loops); shared memory fits one H100 block. Nothing runs: this is what a GPU
session would otherwise find first. Tile sizes chosen with it are noted where they are set.
"""
import os

import pytest

from covseg_fast.ops.triton import import_error

if import_error is not None:
    pytest.skip(f"Triton unavailable: {import_error}", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles for the GPU; the interpreter stage has nothing to add", allow_module_level=True)

import triton_aot  # noqa: E402

LAUNCHES = triton_aot.record_launches()


def test_every_kernel_module_is_covered():
    names = {launch.name for launch in LAUNCHES}
    want = {"_msca_single_pass_kernel", "_msca_single_pass_backward_kernel", "_dwconv_kernel", "_strips_spread_kernel", "_strips_gather_kernel",
            "_dwconv_wgrad_kernel", "stats_partial_kernel", "stats_backward_kernel", "pool_kernel",
            "pool_backward_kernel", "apply_kernel", "apply_backward_kernel", "block_backward_x_kernel",
            "pa_fwd_kernel", "pa_bwd_dq_kernel", "pa_bwd_dk_kernel", "pa_bwd_dv_kernel",
            "cpp_kl_fwd_kernel", "cpp_kl_bwd_kernel", "_box_rows", "_structure_fwd", "_structure_bwd"}
    assert want <= names, f"launches never recorded: {sorted(want - names)}"


@pytest.mark.slow
@pytest.mark.skipif(triton_aot.cuobjdump() is None, reason="no cuobjdump (Triton's bundled one or on the PATH)")
@pytest.mark.parametrize("launch", LAUNCHES, ids=[f"{l.name}[{l.case}]#{i}" for i, l in enumerate(LAUNCHES)])
def test_compiles_for_sm90_without_spills(launch):
    usage = triton_aot.compile_sm90(launch)
    assert usage["stack"] == 0 and usage["local"] == 0, (
        f"{launch.name} ({launch.case}, {launch.constexprs}, {launch.options}) spills on sm_90: {usage}")
    assert usage["shared"] <= triton_aot.SM90_SHARED_LIMIT, f"{launch.name}: {usage['shared']} bytes of shared memory"
    assert 0 < usage["registers"] <= 255
