"""covseg::cpp_kl_loss: every backend against the reference (value and gradient), opcheck, gradcheck, errors.

Tolerances: fp32 value and gradient within atol 1e-6 / rtol 1e-5 (MODELS.md §10: fp32 fused ≤ 1e-5 relative);
fp16/bf16 logits: error vs the float64 reference at most 2× the reference run in that dtype (+1e-6 floor).
"""
import pytest
import torch

from covseg_fast.ops import cpp_kl_loss, use_backend
from covseg_fast.ops.reference.cpp_kl_loss import cpp_kl_loss as reference
from covseg_fast.ops.reference.cpp_kl_loss import cpp_kl_loss_backward as reference_backward
from op_harness import (assert_low_precision_bound, assert_same, backend_cases, cuda_only, generator, grads_of, opcheck,
                        random_shapes, run_backend)

CASES = backend_cases("cpp_kl_loss")
# The reference too (it is the CPU kernel); on CUDA it runs only where a GPU is.
ALL_CASES = CASES + [pytest.param("reference", "cpu", id="reference-cpu"),
                     pytest.param("reference", "cuda", id="reference-cuda", marks=[pytest.mark.cuda, cuda_only])]
# (B, K, h, w, s, extra rows/cols of labels past the last window): odd sizes, every MSA-UNet scale.
FIXED = [
    (1, 2, 8, 8, 2, 0),
    (2, 2, 5, 3, 4, 1),
    (2, 3, 3, 7, 8, 3),
    (1, 2, 2, 2, 16, 0),
    (3, 5, 4, 5, 3, 2),
    (1, 1, 4, 4, 2, 0),
]


def make_inputs(b, k, h, w, s, extra, seed, dtype=torch.float32, label_dtype=torch.int64, ignore=None, scale=3.0):
    gen = generator(seed)
    logits = (scale * torch.randn((b, k, h, w), generator=gen)).to(dtype)
    labels = torch.randint(0, k, (b, h * s + extra, w * s + extra), generator=gen)
    if ignore is not None:
        drop = torch.rand(labels.shape, generator=gen) < 0.2
        labels = torch.where(drop, torch.full_like(labels, ignore), labels)
    return logits, labels.to(label_dtype)


def check_against_reference(backend, device, logits, labels, s, ignore=None, atol=1e-6, rtol=1e-5):
    z = logits.to(device).requires_grad_()
    lab = labels.to(device)
    loss = run_backend(backend, cpp_kl_loss, z, lab, s, ignore)
    (grad,) = torch.autograd.grad(loss, z)
    zr = logits.clone().requires_grad_()
    expected = reference(zr, labels[:, : logits.shape[2] * s, : logits.shape[3] * s], s, ignore)
    (grad_ref,) = torch.autograd.grad(expected, zr)
    assert_same(loss.detach().cpu(), expected.detach(), atol=atol, rtol=rtol, what="loss")
    assert_same(grad.cpu(), grad_ref, atol=atol, rtol=rtol, what="grad")


@pytest.mark.parametrize("backend,device", ALL_CASES)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("b,k,h,w,s,extra", FIXED)
def test_fixed_shapes_fp32(backend, device, label_dtype, b, k, h, w, s, extra):
    logits, labels = make_inputs(b, k, h, w, s, extra, seed=h * w + s, label_dtype=label_dtype)
    check_against_reference(backend, device, logits, labels, s)


@pytest.mark.parametrize("backend,device", ALL_CASES)
@pytest.mark.parametrize("seed", range(4))
def test_random_shapes_with_ignore_index(backend, device, seed):
    (b, k, h, w), = random_shapes(seed, 1, [(1, 3), (2, 4), (1, 9), (1, 9)])
    s = [2, 4, 8, 16][seed % 4]
    ignore = [None, 255, 1, None][seed]
    logits, labels = make_inputs(b, k, h, w, s, seed % 3, seed, ignore=ignore)
    check_against_reference(backend, device, logits, labels, s, ignore)


def test_reference_matches_kl_div_and_hand_value():
    logits, labels = make_inputs(2, 3, 4, 4, 4, 0, seed=7)
    t = torch.nn.functional.avg_pool2d(torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float(), 4)
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits, 1), t, reduction="sum") / (2 * 4 * 4)
    assert_same(reference(logits, labels, 4), expected, atol=1e-6, rtol=1e-6)
    # A window of one class with a logit far above the rest: loss ≈ 0; uniform logits: KL = log K − H(t).
    lab = torch.zeros(1, 2, 2, dtype=torch.long)
    assert reference(torch.tensor([[[[30.0]], [[0.0]]]]), lab, 2).item() < 1e-10
    lab[0, 0, 0] = 1
    uniform = reference(torch.zeros(1, 2, 1, 1), lab, 2).item()
    entropy = -(0.25 * torch.log(torch.tensor(0.25)) + 0.75 * torch.log(torch.tensor(0.75))).item()
    assert abs(uniform - (torch.log(torch.tensor(2.0)).item() - entropy)) < 1e-6


def test_reference_backward_formula_matches_autograd():
    logits, labels = make_inputs(2, 3, 3, 5, 2, 1, seed=3, ignore=255)
    z = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(reference(z, labels[:, :6, :10], 2, 255) * 1.7, z)
    assert_same(reference_backward(torch.tensor(1.7), logits, labels[:, :6, :10], 2, 255), g, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_bound(backend, device, dtype):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("bf16 is tested on GPU only (CPU runs Triton through the interpreter)")
    logits, labels = make_inputs(2, 2, 8, 6, 4, 0, seed=11, dtype=torch.float64)
    labels = labels.to(device)

    def fused(z, lab):
        z = z.to(device).requires_grad_()
        loss = run_backend(backend, cpp_kl_loss, z, lab, 4)
        return [loss.double(), torch.autograd.grad(loss, z)[0].double()]

    def ref(z, lab):
        z = z.cpu().requires_grad_()
        loss = reference(z, lab.cpu(), 4)
        return [loss.double(), torch.autograd.grad(loss, z)[0].double()]

    assert_low_precision_bound(fused, ref, [logits, labels], dtype, floor=1e-6)


def _opcheck(op, args, backend, device):
    if backend == "triton" and device == "cpu":
        # aot_dispatch traces inside the triton_op, which under TRITON_INTERPRET=1 would run the interpreter
        # on fake tensors (the same reason torch.compile tests skip there); the rest of opcheck still runs.
        with use_backend(backend):
            result = torch.library.opcheck(
                op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
        assert all(v == "SUCCESS" for v in result.values()), result
    else:
        opcheck(op, args, backend=backend)


@pytest.mark.parametrize("backend,device", ALL_CASES)
def test_opcheck(backend, device):
    logits, labels = make_inputs(2, 3, 3, 4, 2, 1, seed=5, label_dtype=torch.int32)
    z = logits.to(device).requires_grad_()
    _opcheck(torch.ops.covseg.cpp_kl_loss.default, (z, labels.to(device), 2, None), backend, device)
    _opcheck(torch.ops.covseg.cpp_kl_loss.default, (z, labels.to(device), 2, 1), backend, device)
    grad = torch.tensor(0.5, device=device)
    _opcheck(torch.ops.covseg._cpp_kl_loss_backward.default, (grad, z.detach(), labels.to(device), 2, None),
             backend, device)


@pytest.mark.parametrize("backend,device", ALL_CASES)
def test_gradcheck_float64(backend, device):
    logits, labels = make_inputs(1, 3, 2, 3, 2, 0, seed=9, dtype=torch.float64)
    z = logits.to(device).requires_grad_()
    lab = labels.to(device)
    assert torch.autograd.gradcheck(lambda t: run_backend(backend, cpp_kl_loss, t, lab, 2, 255), (z,))


@pytest.mark.parametrize("backend,device", CASES)
def test_grads_of_weighted_sum_match_reference(backend, device):
    logits, labels = make_inputs(2, 2, 4, 4, 2, 0, seed=21)
    z = logits.to(device).requires_grad_()
    got = grads_of(lambda t: run_backend(backend, cpp_kl_loss, t, labels.to(device), 2), [z])
    zr = logits.clone().requires_grad_()
    want = grads_of(lambda t: reference(t, labels, 2), [zr])
    assert_same([g.cpu() for g in got], want, atol=1e-6, rtol=1e-5, what="grad")


@pytest.mark.parametrize("make,error,message", [
    (lambda z, lab: (z[0], lab, 2), ValueError, r"logits must be \(B, K, h, w\)"),
    (lambda z, lab: (z, lab[0], 2), ValueError, r"labels must be \(B, H, W\)"),
    (lambda z, lab: (z.long(), lab, 2), TypeError, "logits dtype must be floating"),
    (lambda z, lab: (z, lab.float(), 2), TypeError, "labels dtype must be uint8, int32 or int64"),
    (lambda z, lab: (z, lab, 0), ValueError, "scale must be a positive integer"),
    (lambda z, lab: (z, lab, 4), ValueError, "does not match logits"),
    (lambda z, lab: (z, lab[:1], 2), ValueError, "does not match logits"),
    (lambda z, lab: (z, torch.where(lab == 0, 7, lab), 2), ValueError, "label value 7 is outside"),
])
def test_bad_inputs_are_clear_errors(make, error, message):
    logits, labels = make_inputs(2, 2, 4, 4, 2, 0, seed=1)
    with pytest.raises(error, match=message):
        cpp_kl_loss(*make(logits, labels))


def test_unchecked_invalid_labels_count_for_no_class():
    logits, labels = make_inputs(1, 2, 2, 2, 2, 0, seed=2)
    bad = labels.clone()
    bad[0, 0, 0] = 9
    unchecked = cpp_kl_loss(logits, bad, 2, check_labels=False)
    assert_same(unchecked, reference(logits, torch.where(bad == 9, 255, bad), 2, 255), atol=1e-6, rtol=1e-6)


def _unchecked_against_reference(backend, device, logits, labels, s, valid):
    """Loss and gradient with check_labels=False vs the reference with every invalid label ignored."""
    z = logits.to(device).requires_grad_()
    loss = run_backend(backend, cpp_kl_loss, z, labels.to(device), s, None, check_labels=False)
    (grad,) = torch.autograd.grad(loss, z)
    zr = logits.clone().requires_grad_()
    expected = reference(zr, torch.where(valid, labels, 255).long(), s, 255)
    (grad_ref,) = torch.autograd.grad(expected, zr)
    assert_same(loss.detach().cpu(), expected.detach(), atol=1e-6, rtol=1e-5, what="loss")
    assert_same(grad.cpu(), grad_ref, atol=1e-6, rtol=1e-5, what="grad")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int64], ids=str)
def test_unchecked_labels_at_or_above_k_count_for_no_class(backend, device, label_dtype):
    """K = 3 pads to 4 classes in the kernel: label 3 must not land in the padded class (it did, and the
    backward's Σ_k t then counted it), nor may label 4 or 200 count anywhere."""
    logits, labels = make_inputs(2, 3, 4, 4, 4, 0, seed=17, label_dtype=label_dtype)
    gen = generator(18)
    wild = torch.tensor([3, 4, 200], dtype=label_dtype)[torch.randint(0, 3, labels.shape, generator=gen)]
    labels = torch.where(torch.rand(labels.shape, generator=gen) < 0.3, wild, labels)
    _unchecked_against_reference(backend, device, logits, labels, 4, labels < 3)


@pytest.mark.parametrize("backend,device", CASES)
def test_unchecked_int64_labels_are_not_truncated_to_int32(backend, device):
    """2³² + 1 is not class 1 (an int32 cast made it so), −2³² + 1 not class 1, 2³¹ not −2³¹."""
    logits, labels = make_inputs(1, 2, 3, 3, 2, 0, seed=19)
    labels[0, 0, :3] = torch.tensor([2**32 + 1, -(2**32) + 1, 2**31])
    _unchecked_against_reference(backend, device, logits, labels, 2, (labels >= 0) & (labels < 2))


@pytest.mark.compile
def test_torch_compile_fullgraph_matches_eager():
    logits, labels = make_inputs(2, 2, 4, 4, 4, 0, seed=13)
    fn = torch.compile(lambda z: cpp_kl_loss(z, labels, 4, check_labels=False), fullgraph=True)
    z = logits.clone().requires_grad_()
    loss = fn(z)
    (grad,) = torch.autograd.grad(loss, z)
    zr = logits.clone().requires_grad_()
    expected = reference(zr, labels, 4)
    (grad_ref,) = torch.autograd.grad(expected, zr)
    assert_same(loss.detach(), expected.detach(), atol=1e-6, rtol=1e-5, what="loss")
    assert_same(grad, grad_ref, atol=1e-6, rtol=1e-5, what="grad")
