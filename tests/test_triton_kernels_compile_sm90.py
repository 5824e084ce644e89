"""Every Triton kernel launch of the package compiles for Hopper (sm_90) without spilling, on a CPU machine.

The launches are the ones the wrappers make at the benchmark shapes with their GPU tile configurations
(recorded on meta tensors, see triton_aot.py). Checked per launch: ``triton.compile`` succeeds for
``GPUTarget("cuda", 90, 32)``; the cubin has no stack frame (a register spill costs local-memory
traffic in the innermost loops); shared memory fits one H100 block. Nothing runs: this is what a GPU
session would otherwise find first. Tile sizes chosen with it are noted where they are set. CI runs it
under this environment's Triton and again under Triton 3.6, the GPU machine's (.ci/run stage
triton-3.6-sm90): the two allocate registers differently (docs/gpu_kernel_checks.md).
"""
import importlib
import os
import pkgutil
import re

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
    want = {"_strip_conv_single_kernel", "_strip_conv_single_backward_kernel", "_strip_conv_dwconv_kernel",
            "_strip_conv_spread_kernel", "_strip_conv_gather_kernel", "_strip_conv_dwconv_wgrad_kernel",
            "_cbam_stats_kernel", "_cbam_stats_backward_kernel", "_cbam_pool_kernel", "_cbam_pool_backward_kernel",
            "_cbam_apply_kernel", "_cbam_apply_backward_kernel", "_cbam_block_backward_x_kernel",
            "_attention_forward_kernel", "_attention_backward_dq_kernel", "_attention_backward_dk_kernel",
            "_attention_backward_dv_kernel", "_channel_gram_partial_kernel", "_channel_gram_softmax_kernel",
            "_channel_gram_apply_kernel", "_channel_gram_backward_scores_kernel", "_channel_gram_backward_x_kernel",
            "_cpp_kl_forward_kernel", "_cpp_kl_backward_kernel", "_structure_loss_box_rows_kernel",
            "_structure_loss_forward_kernel", "_structure_loss_backward_kernel"}
    assert want <= names, f"launches never recorded: {sorted(want - names)}"


def test_kernel_names_are_unique_and_follow_one_pattern():
    """@triton.jit functions: launched kernels are ``_<op>_<what>_kernel``, helpers ``_<what>`` (no suffix),
    and no name is defined twice in the package (a name must say which kernel a compile report means)."""
    import triton

    import covseg_fast.ops.triton as pkg

    homes: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, triton.runtime.JITFunction) and obj.fn.__module__ == module.__name__:
                homes.setdefault(obj.fn.__name__, []).append(module.__name__)
    assert not {n: m for n, m in homes.items() if len(m) > 1}, "kernel names defined twice"
    launched = {launch.name for launch in LAUNCHES}
    ops = "strip_conv|cbam|attention|channel_gram|cpp_kl|structure_loss"
    bad = [n for n in launched if not re.fullmatch(rf"_({ops})_[a-z0-9_]+_kernel", n)]
    bad += [n for n in set(homes) - launched if not re.fullmatch(r"_[a-z0-9_]+", n) or n.endswith("_kernel")]
    assert not bad, f"names outside the pattern: {sorted(bad)}"
    assert launched <= set(homes)


@pytest.mark.slow
@pytest.mark.skipif(triton_aot.cuobjdump() is None, reason="no cuobjdump (Triton's bundled one or on the PATH)")
@pytest.mark.parametrize("launch", LAUNCHES, ids=[f"{l.name}[{l.case}]#{i}" for i, l in enumerate(LAUNCHES)])
def test_compiles_for_sm90_without_spills(launch):
    usage = triton_aot.compile_sm90(launch)
    assert usage["stack"] == 0 and usage["local"] == 0, (
        f"{launch.name} ({launch.case}, {launch.constexprs}, {launch.options}) spills on sm_90: {usage}")
    assert usage["shared"] <= triton_aot.SM90_SHARED_LIMIT, f"{launch.name}: {usage['shared']} bytes of shared memory"
    assert 0 < usage["registers"] <= 255
