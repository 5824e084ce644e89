"""covseg::structure_loss: every backend against the reference (value and gradient), both bce modes."""
import pytest
import torch
import torch.nn.functional as F

from covseg_fast.ops import structure_loss
from covseg_fast.ops.reference.structure_loss import box_weight
from covseg_fast.ops.reference.structure_loss import structure_loss as reference
from op_harness import (HAS_CUDA, assert_low_precision_bound, assert_same, backend_cases, generator, opcheck,
                        random_shapes, run_backend)

CASES = backend_cases("structure_loss")
MODES = ["reference", "weighted"]
# (B, H, W): odd sizes, smaller and larger than the 31×31 box, one pixel, a single row/column.
FIXED = [(1, 1, 1), (2, 13, 21), (3, 31, 17), (1, 40, 7), (2, 1, 50), (1, 33, 33)]
FP32_TOL = dict(atol=2e-6, rtol=1e-5)  # fp32 fused vs fp32 reference (different summation order)


def inputs(b, h, w, seed, soft=False, dtype=torch.float32, device="cpu"):
    gen = generator(seed)
    z = (3 * torch.randn((b, 1, h, w), generator=gen)).to(dtype)
    if soft:
        g = torch.rand((b, 1, h, w), generator=gen)
    else:
        g = (torch.rand((b, 1, h, w), generator=gen) > 0.6).float()
    return z.to(device).requires_grad_(), g.to(dtype).to(device)


def loss_and_grad(fn, z, g, mode):
    loss = fn(z, g, mode)
    (grad,) = torch.autograd.grad((loss * torch.arange(1.0, 1 + loss.numel()).to(loss)).sum(), z)
    return loss.detach(), grad


def fused(backend):
    return lambda z, g, mode: run_backend(backend, structure_loss, z, g, mode, reduction="none")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("b,h,w", FIXED)
def test_fixed_shapes_value_and_gradient(backend, device, mode, b, h, w):
    z, g = inputs(b, h, w, seed=h * w + b, soft=(h % 2 == 1), device=device)
    got = loss_and_grad(fused(backend), z, g, mode)
    zr = z.detach().cpu().requires_grad_()
    expected = loss_and_grad(reference, zr, g.cpu(), mode)
    assert_same([t.cpu() for t in got], expected, **FP32_TOL)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("seed", range(4))
def test_random_shapes(backend, device, seed):
    (b, h, w), = random_shapes(seed, 1, [(1, 3), (2, 48), (2, 48)])
    mode = MODES[seed % 2]
    z, g = inputs(b, h, w, seed, soft=seed >= 2, device=device)
    got = loss_and_grad(fused(backend), z, g, mode)
    expected = loss_and_grad(reference, z.detach().cpu().requires_grad_(), g.cpu(), mode)
    assert_same([t.cpu() for t in got], expected, **FP32_TOL)


def _low_precision(backend, device, dtype, mode):
    z64, g64 = inputs(2, 19, 23, seed=7, soft=True, dtype=torch.float64, device=device)
    z64 = z64.detach()

    def run(fn):
        def call(z, g):
            z = z.detach().requires_grad_()
            return loss_and_grad(fn, z, g, mode)
        return call

    return assert_low_precision_bound(run(fused(backend)), run(reference), [z64, g64], dtype, floor=1e-6)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_fp16_within_twice_the_reference_error(backend, device, mode):
    _low_precision(backend, device, torch.float16, mode)


@pytest.mark.cuda
@pytest.mark.parametrize("backend,device", [c for c in CASES if "cuda" in c.id])
@pytest.mark.parametrize("mode", MODES)
def test_bf16_within_twice_the_reference_error(backend, device, mode):
    if not HAS_CUDA:
        pytest.skip("bf16 Triton is tested on a GPU only (the interpreter's bf16 is unreliable)")
    _low_precision(backend, device, torch.bfloat16, mode)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_opcheck(backend, device, mode):
    z, g = inputs(2, 9, 11, seed=3, soft=True, device=device)
    opcheck(torch.ops.covseg.structure_loss.default, (z, g, mode, 1.0), backend=backend)
    loss, stats, weight = torch.ops.covseg.structure_loss(z.detach(), g, mode, 1.0)
    opcheck(torch.ops.covseg._structure_loss_backward.default,
            (torch.ones_like(loss), z.detach(), g, weight, stats, mode, 1.0), backend=backend)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("smooth", [1.0, 0.0])
def test_opcheck_and_gradcheck_reference(mode, smooth):
    z, g = inputs(2, 6, 7, seed=11, soft=True, dtype=torch.float64)
    opcheck(torch.ops.covseg.structure_loss.default, (z, g, mode, smooth), backend="reference")
    assert torch.autograd.gradcheck(lambda t: structure_loss(t, g, mode, smooth, reduction="none"), (z,))


def test_reference_mode_is_the_reference_repos_formula():
    """F3Net/PraNet/Inf-Net as run: BCE via the legacy reduce='none' (→ 'mean'), weighted IoU with +1."""
    z, g = inputs(3, 40, 36, seed=5)
    weit = 1 + 5 * torch.abs(F.avg_pool2d(g, kernel_size=31, stride=1, padding=15) - g)
    with pytest.warns(UserWarning):
        wbce = F.binary_cross_entropy_with_logits(z, g, reduce="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    pred = torch.sigmoid(z)
    inter = ((pred * g) * weit).sum(dim=(2, 3))
    union = ((pred + g) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    expected = (wbce + wiou).mean()
    assert wbce.numel() == 3 and torch.allclose(wbce, F.binary_cross_entropy_with_logits(z, g))  # not weighted
    assert_same(structure_loss(z, g, "reference"), expected.detach(), atol=1e-6, rtol=1e-6)


def test_weighted_mode_is_truly_weighted():
    z, g = inputs(2, 35, 35, seed=6)
    w = 1 + 5 * torch.abs(F.avg_pool2d(g, 31, 1, 15, count_include_pad=True) - g)
    bce = F.binary_cross_entropy_with_logits(z, g, reduction="none")
    p = torch.sigmoid(z)
    inter, union = (w * p * g).sum((1, 2, 3)), (w * (p + g)).sum((1, 2, 3))
    expected = (w * bce).sum((1, 2, 3)) / w.sum((1, 2, 3)) + 1 - (inter + 1) / (union - inter + 1)
    assert_same(structure_loss(z, g, "weighted", reduction="none"), expected.detach(), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(structure_loss(z, g, "weighted"), structure_loss(z, g, "reference"))


def test_box_weight_divisor_is_always_961():
    g = torch.ones(1, 1, 31, 31)
    w = box_weight(g)
    # at a corner the box covers 16×16 ones: A = 256/961, w = 1 + 5·(1 − 256/961)
    assert abs(w[0, 0, 0, 0].item() - (1 + 5 * (1 - 256 / 961))) < 1e-6
    assert abs(w[0, 0, 15, 15].item() - 1.0) < 1e-6


def test_target_gets_no_gradient_and_loss_is_fp32():
    z, g = inputs(1, 8, 8, seed=1, dtype=torch.float16)
    g = g.detach().requires_grad_()
    loss = structure_loss(z, g)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward()
    assert z.grad is not None and z.grad.dtype == torch.float16 and g.grad is None


@pytest.mark.compile
def test_torch_compile_fullgraph():
    z, g = inputs(2, 16, 20, seed=2)
    compiled = torch.compile(lambda a, b: structure_loss(a, b, "weighted") * 2, fullgraph=True)
    got = loss_and_grad(lambda a, b, m: compiled(a, b).reshape(1), z, g, "weighted")
    expected = loss_and_grad(lambda a, b, m: (reference(a, b, m).mean() * 2).reshape(1),
                             z.detach().requires_grad_(), g, "weighted")
    assert_same(got, expected, **FP32_TOL)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: structure_loss(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8)), ValueError, r"\(B, 1, H, W\)"),
        (lambda: structure_loss(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8)), ValueError, r"\(B, 1, H, W\)"),
        (lambda: structure_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9)), ValueError, "differs from"),
        (lambda: structure_loss(torch.zeros(2, 1, 8, 8, dtype=torch.long), torch.zeros(2, 1, 8, 8)), TypeError,
         "floating"),
        (lambda: structure_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), "wbce"), ValueError, "bce_mode"),
        (lambda: structure_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), reduction="sum"), ValueError,
         "reduction"),
        (lambda: structure_loss(torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8)), ValueError, "empty"),
        (lambda: structure_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), iou_smooth=-1), ValueError,
         "iou_smooth"),
        (lambda: structure_loss([0.0], torch.zeros(1, 1, 8, 8)), TypeError, "must be a tensor"),
    ],
)
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_triton_backend_declines_float64():
    from covseg_fast.ops.structure_loss import BACKENDS

    z = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    assert "float64" in BACKENDS.get("triton").accepts(z, z)
