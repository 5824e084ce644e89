"""covseg::class_prob_pool: every backend bit-exact against the reference."""
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
@pytest.mark.parametrize("bad", [-1, 4, 200])
def test_out_of_range_label_is_a_clear_error(backend, device, bad):
    lab = labels_for(1, 20, 20, 4, torch.int64, 3)
    lab[0, 5, 7] = bad
    with pytest.raises(ValueError, match=f"label value {bad} is outside"):
        run_backend(backend, class_prob_pool, lab.to(device), 4, [2, 4])


@pytest.mark.parametrize("backend,device", CASES)
def test_opcheck(backend, device):
    lab = labels_for(2, 24, 20, 3, torch.int32, 5).to(device)
    opcheck(torch.ops.covseg.class_prob_pool.default, (lab, 3, [2, 4], None), backend=backend)
    opcheck(torch.ops.covseg.class_prob_pool.default, (lab, 3, [3], 2), backend=backend)


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
