"""covseg::class_prob_pool: every backend bit-exact against the reference."""
import os
import re

import pytest
import torch

from covseg_fast.ops import class_prob_pool
from covseg_fast.ops._dispatch import BackendError
from covseg_fast.ops.reference.class_prob_pool import class_prob_pool as reference
from op_harness import assert_same, backend_cases, generator, opcheck, random_shapes, reference_call, run_backend

CASES = backend_cases("class_prob_pool")
DTYPES = [torch.uint8, torch.int32, torch.int64]
# (B, H, W, K, scales): odd sizes, scales that do not divide H/W, non-nested scales.
FIXED = [
    (1, 16, 16, 2, [2, 4, 8, 16]),
    (2, 37, 53, 4, [2, 4, 8, 16]),
    (3, 31, 17, 3, [1, 3, 5]),
    (2, 64, 96, 5, [2, 4, 8, 16, 32]),
    (1, 7, 9, 2, [7]),
    (0, 8, 8, 2, [2, 4]),
    (1, 200, 131, 3, [96, 128]),  # scales above the CUDA tile of 64: one launch per scale there
]


def labels_for(b, h, w, k, dtype, seed, ignore=None):
    lab = torch.randint(0, k, (b, h, w), generator=generator(seed))
    if ignore is not None:
        mask = torch.rand((b, h, w), generator=generator(seed + 1)) < 0.2
        lab = torch.where(mask, torch.full_like(lab, ignore), lab)
    return lab.to(dtype)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,h,w,k,scales", FIXED)
def test_fixed_shapes_bit_exact(backend, device, dtype, b, h, w, k, scales):
    lab = labels_for(b, h, w, k, dtype, seed=h * w).to(device)
    out = run_backend(backend, class_prob_pool, lab, k, scales)
    assert_same(out, reference(lab.cpu(), k, scales))


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_with_ignore_index(backend, device, seed):
    (b, h, w, k), = random_shapes(seed, 1, [(1, 3), (16, 90), (16, 90), (1, 6)])
    scales = [2, 4, 8, 16] if seed % 2 == 0 else [3, 6]
    dtype = DTYPES[seed % 3]
    lab = labels_for(b, h, w, k, dtype, seed, ignore=255).to(device)
    out = run_backend(backend, class_prob_pool, lab, k, scales, ignore_index=255)
    expected = reference(lab.cpu(), k, scales, ignore_index=255)
    assert_same(out, expected)
    assert all((o.sum(1) <= 1 + 1e-6).all() for o in out)  # ignored pixels count for no class


def test_reference_equals_avg_pool_of_one_hot():
    lab = labels_for(2, 32, 32, 3, torch.int64, 0)
    one_hot = torch.nn.functional.one_hot(lab, 3).permute(0, 3, 1, 2).float()
    for out, s in zip(reference(lab, 3, [2, 4]), [2, 4]):
        assert_same(out, torch.nn.functional.avg_pool2d(one_hot, s))
        assert torch.allclose(out.sum(1), torch.ones(()))


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_ignore_index_inside_the_classes_counts_for_no_class(backend, device, seed):
    # The reference is the spec: a pixel equal to ignore_index is ignored even when
    # ignore_index is a valid class id; that class's output is then all zeros.
    (b, h, w, k), = random_shapes(100 + seed, 1, [(1, 3), (16, 70), (16, 70), (2, 5)])
    ignore = seed % k
    scales = [[2, 4, 8, 16], [3, 5], [1, 2]][seed]
    lab = labels_for(b, h, w, k, DTYPES[seed], seed).to(device)
    out = run_backend(backend, class_prob_pool, lab, k, scales, ignore_index=ignore)
    expected = reference(lab.cpu(), k, scales, ignore_index=ignore)
    assert_same(out, expected)
    assert all(not o[:, ignore].any() for o in out)


# A bad label inside a window, and in the rows/columns that the floor drops (which
# feed no output but must still be rejected, as the reference rejects them).
BAD_PIXELS = [
    ((1, 20, 20), [2, 4], (5, 7)),
    ((1, 17, 17), [2], (16, 3)),  # last row: 17 // 2 windows drop it
    ((1, 16, 17), [2], (3, 16)),  # last column
    ((2, 31, 17), [3, 5], (30, 16)),  # non-nested scales, bottom-right corner of image 1
    ((1, 23, 22), [4, 8], (22, 0)),  # nested: the rows past the last 8-window but inside a 4-window band
]


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("shape,scales,pixel", BAD_PIXELS, ids=[str(p[2]) for p in BAD_PIXELS])
@pytest.mark.parametrize("dtype,bad", [(torch.int64, -1), (torch.int64, 4), (torch.int64, 2**40),
                                       (torch.uint8, 200), (torch.int32, -1), (torch.int32, 2**31 - 1)], ids=str)
def test_out_of_range_label_is_a_clear_error(backend, device, shape, scales, pixel, dtype, bad):
    lab = labels_for(*shape, 4, dtype, 3)
    lab[-1, pixel[0], pixel[1]] = bad
    lab = lab.to(device)
    with pytest.raises(ValueError, match=f"label value {bad} is outside"):
        run_backend(backend, class_prob_pool, lab, 4, scales)
    # ignore_index equal to the bad value makes the same map valid
    out = run_backend(backend, class_prob_pool, lab, 4, scales, ignore_index=bad)
    assert_same(out, reference(lab.cpu(), 4, scales, ignore_index=bad))


@pytest.mark.parametrize("backend,device", CASES)
def test_opcheck(backend, device):
    lab = labels_for(2, 24, 20, 3, torch.int32, 5).to(device)
    # opcheck checks the registration (schema, fake, dispatch), not the values: compare those too.
    for args in [(lab, 3, [2, 4], None), (lab, 3, [3], 2), (lab, 3, [3, 4], 255)]:
        opcheck(torch.ops.covseg.class_prob_pool.default, args, backend=backend)
        assert_same(run_backend(backend, torch.ops.covseg.class_prob_pool.default, *args), reference(lab.cpu(), *args[1:]))


def test_opcheck_reference():
    opcheck(torch.ops.covseg.class_prob_pool.default, (labels_for(2, 16, 16, 2, torch.uint8, 1), 2, [2, 8], None),
            backend="reference")


@pytest.mark.compile
def test_torch_compile_fullgraph_and_export():
    lab = labels_for(2, 32, 32, 4, torch.int64, 9)

    def f(x):
        return [o * 2 for o in class_prob_pool(x, 4, [2, 4, 8])]

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    assert_same(compiled(lab), [o * 2 for o in reference(lab, 4, [2, 4, 8])])

    class M(torch.nn.Module):
        def forward(self, x):
            return class_prob_pool(x, 4, [2, 4])

    exported = torch.export.export(M(), (lab,))
    assert "covseg.class_prob_pool" in str(exported.graph)
    assert_same(list(exported.module()(lab)), reference(lab, 4, [2, 4]))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: class_prob_pool(torch.zeros(4, 4, dtype=torch.long), 2, [2]), ValueError, r"\(B, H, W\)"),
        (lambda: class_prob_pool(torch.zeros(1, 4, 4), 2, [2]), TypeError, "dtype must be uint8"),
        (lambda: class_prob_pool(torch.zeros(1, 4, 4, dtype=torch.long), 2, [8]), ValueError, "larger than"),
        (lambda: class_prob_pool(torch.zeros(1, 4, 4, dtype=torch.long), 2, [0]), ValueError, "positive"),
        (lambda: class_prob_pool(torch.zeros(1, 4, 4, dtype=torch.long), 2, []), ValueError, "empty"),
        (lambda: class_prob_pool(torch.zeros(1, 4, 4, dtype=torch.long), 0, [2]), ValueError, "num_classes"),
    ],
)
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_forcing_an_unavailable_backend_names_every_reason(monkeypatch):
    from covseg_fast.ops.class_prob_pool import BACKENDS

    with pytest.raises(BackendError, match="cuda: .*cpp: .*reference: ok"):
        run_backend("cuda", class_prob_pool, torch.zeros(1, 4, 4, dtype=torch.long), 2, [2])
    assert BACKENDS.select("cpu").name in {"cpp", "reference"}


def test_reference_backend_forced_by_environment(monkeypatch):
    from covseg_fast.ops.class_prob_pool import BACKENDS

    monkeypatch.setenv("COVSEG_BACKEND", "reference")
    assert BACKENDS.select("cpu").name == "reference"
    lab = labels_for(1, 8, 8, 2, torch.int64, 0)
    assert_same(class_prob_pool(lab, 2, [2]), reference_call(reference, lab, 2, [2]))


CUDA_SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "ops", "cuda", "class_prob_pool.cu")


@pytest.mark.parametrize(
    "shape,k,scales,reason",
    [
        ((2, 64, 64), 4, [2, 4, 8, 16], None),
        ((1, 256, 256), 4, [2, 4, 8, 16, 32, 64, 128], None),
        ((1, 200, 200), 3, [128, 3], None),
        ((1, 64, 64), 32767, [2], None),
        ((1, 64, 64), 2, [1, 2, 3, 4, 5, 6, 7, 8, 9], "9 scales > 8"),
        ((1, 300, 300), 2, [2, 129], "scale 129 > 128"),
        ((1, 64, 64), 32768, [2], "num_classes 32768 > 32767"),
        ((65536, 2, 2), 2, [2], "batch 65536 > 65535"),
    ],
)
def test_cuda_limits_fall_back_to_the_reference(monkeypatch, shape, k, scales, reason):
    # The dispatch decision only, on CPU: pretend the CUDA kernel is available.
    from covseg_fast.ops.class_prob_pool import BACKENDS, cuda_accepts

    lab = torch.empty(shape, dtype=torch.uint8, device="meta")
    got = cuda_accepts(lab, k, scales, None)
    assert got == reason if reason is None else reason in got
    monkeypatch.setattr(BACKENDS.get("cuda"), "available", lambda device_type: None)
    assert BACKENDS.select("cuda", lab, k, scales, None).name == ("cuda" if reason is None else "reference")
    if reason is not None:  # a forced CUDA backend names the limit instead of crashing in the kernel
        with pytest.raises(BackendError, match=reason):
            run_backend("cuda", BACKENDS.select, "cuda", lab, k, scales, None)


def test_cuda_limits_match_the_kernel_source():
    import importlib

    module = importlib.import_module("covseg_fast.ops.class_prob_pool")  # the attribute is the function
    source = open(CUDA_SOURCE).read()

    def constant(name):
        match = re.search(rf"constexpr int(?:64_t)? {name} = ([^;]+);", source)
        assert match, f"{name} not found in {CUDA_SOURCE}"
        return match.group(1)

    tile = int(constant("kMaxTile"))
    assert constant("kMaxScale") == "2 * kMaxTile" and module.CUDA_MAX_SCALE == 2 * tile
    assert module.CUDA_MAX_SCALES == int(constant("kMaxScales"))
    assert module.CUDA_MAX_CLASSES == int(constant("kMaxClasses"))
    assert module.CUDA_MAX_BATCH == int(constant("kMaxBatch"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_cuda_call_beyond_the_limits_is_served_by_the_reference():
    lab = labels_for(1, 300, 300, 3, torch.int64, 4).cuda()
    scales = [1, 2, 3, 4, 5, 6, 7, 8, 160]  # 9 scales, one of them > 128
    assert_same(class_prob_pool(lab, 3, scales), reference(lab.cpu(), 3, scales))


def test_cpp_kernel_bit_exact_with_two_threads():
    # Every (image, band) task writes its own output rows, so the thread count cannot change a bit.
    from covseg_fast.ops.class_prob_pool import BACKENDS

    reason = BACKENDS.get("cpp").available("cpu")
    if reason:
        pytest.skip(f"cpp: {reason}")
    lab = labels_for(3, 67, 45, 3, torch.int64, 11, ignore=255)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = run_backend("cpp", class_prob_pool, lab, 3, [2, 4, 8], ignore_index=255)
    finally:
        torch.set_num_threads(threads)
    assert_same(out, reference(lab, 3, [2, 4, 8], ignore_index=255))
