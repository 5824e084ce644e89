"""MSA-UNet loss: BCE/CE + Σ_k KL(CPP ‖ softmax(aux_k)) (MODELS.md §3.4): fused == unfused, soft targets, weights."""
import pytest
import torch
import torch.nn.functional as F

from covseg_fast.losses import MSAUNetLoss, cpp_kl_aux_loss, soft_binary_targets


def outputs(b=2, k=2, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn((b, 1 if k == 2 else k, size, size), generator=gen)
    aux = [torch.randn((b, k, size // s, size // s), generator=gen) for s in (2, 4, 8, 16)]
    return {"out": out, "aux": aux}


def test_total_is_bce_plus_weighted_sum_of_kl_terms():
    outs = outputs()
    mask = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    loss1, parts1 = MSAUNetLoss()(outs, {"mask": mask})
    loss2, parts2 = MSAUNetLoss(aux_weight=0.25)(outs, {"mask": mask})
    bce = F.binary_cross_entropy_with_logits(outs["out"], mask)
    labels = mask[:, 0].long()
    kls = []
    for z, s in zip(outs["aux"], (2, 4, 8, 16)):
        t = F.avg_pool2d(F.one_hot(labels, 2).permute(0, 3, 1, 2).float(), s)
        kls.append(F.kl_div(F.log_softmax(z, 1), t, reduction="sum") / (z.shape[0] * z.shape[2] * z.shape[3]))
    torch.testing.assert_close(loss1, bce + sum(kls), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(loss2, bce + 0.25 * sum(kls), atol=1e-6, rtol=1e-6)
    assert parts1["aux1"] == pytest.approx(kls[0].item(), abs=1e-6) and parts1["main"] == pytest.approx(bce.item())


def test_fused_equals_unfused_with_gradients():
    outs = outputs(k=3, seed=2)
    labels = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(3))
    grads = []
    for fused in (True, False):
        aux = [a.clone().requires_grad_() for a in outs["aux"]]
        terms = cpp_kl_aux_loss(aux, labels=labels, fused=fused)
        torch.stack(terms).sum().backward()
        grads.append([a.grad for a in aux])
        if fused:
            values = torch.stack(terms).detach()
        else:
            torch.testing.assert_close(torch.stack(terms).detach(), values, atol=1e-6, rtol=1e-6)
    for gf, gu in zip(*grads):
        torch.testing.assert_close(gf, gu, atol=1e-7, rtol=1e-5)


def test_soft_mask_targets_and_hard_mask_agree():
    outs = outputs(seed=4)
    hard = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    via_labels = cpp_kl_aux_loss(outs["aux"], labels=hard[:, 0].long())
    via_mask = cpp_kl_aux_loss(outs["aux"], mask=hard)
    torch.testing.assert_close(torch.stack(via_labels), torch.stack(via_mask), atol=1e-6, rtol=1e-6)
    soft = hard * 0.8
    t = soft_binary_targets(soft, 4)
    assert t.shape == (2, 2, 8, 8) and torch.allclose(t.sum(1), torch.ones(()))
    loss, parts = MSAUNetLoss()(outs, {"mask": soft})
    assert torch.isfinite(loss) and parts["aux"] > 0


def test_errors():
    outs = outputs()
    with pytest.raises(ValueError, match="give labels"):
        cpp_kl_aux_loss(outs["aux"])
    with pytest.raises(ValueError, match="4 aux maps but 2 scales"):
        cpp_kl_aux_loss(outs["aux"], labels=torch.zeros(2, 32, 32, dtype=torch.long), scales=[2, 4])
    with pytest.raises(ValueError, match="binary mask needs 2-class aux maps"):
        cpp_kl_aux_loss(outputs(k=3)["aux"], mask=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="num_classes must be"):
        MSAUNetLoss(num_classes=0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("reduction,torch_reduction", [("batchmean", "batchmean"), ("sum", "sum")])
def test_kl_reduction_matches_torch_kl_div(reduction, torch_reduction, fused):
    """§11 A5 alternatives: "batchmean" is kl_div(·, 'batchmean') (÷ B), "sum" kl_div(·, 'sum'); values, grads."""
    outs = outputs(k=3, seed=6)
    labels = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(7))
    aux = [a.clone().requires_grad_() for a in outs["aux"]]
    terms = cpp_kl_aux_loss(aux, labels=labels, fused=fused, kl_reduction=reduction)
    torch.stack(terms).sum().backward()
    ref_aux = [a.clone().requires_grad_() for a in outs["aux"]]
    expected = []
    for z, s in zip(ref_aux, (2, 4, 8, 16)):
        t = F.avg_pool2d(F.one_hot(labels, 3).permute(0, 3, 1, 2).float(), s)
        expected.append(F.kl_div(F.log_softmax(z, 1), t, reduction=torch_reduction))
    torch.stack(expected).sum().backward()
    torch.testing.assert_close(torch.stack(terms).detach(), torch.stack(expected).detach(), atol=1e-5, rtol=1e-5)
    for a, r in zip(aux, ref_aux):
        torch.testing.assert_close(a.grad, r.grad, atol=1e-6, rtol=1e-5)


def test_kl_reduction_scales_each_term_by_its_map_size():
    """pixel_mean (default) ÷ B·h·w; batchmean = pixel_mean·h·w; sum = pixel_mean·B·h·w (soft-mask path)."""
    outs = outputs(seed=8)
    soft = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(9))
    mean = cpp_kl_aux_loss(outs["aux"], mask=soft)
    explicit = cpp_kl_aux_loss(outs["aux"], mask=soft, kl_reduction="pixel_mean")
    assert torch.equal(torch.stack(mean), torch.stack(explicit))
    for reduction in ("batchmean", "sum"):
        terms = cpp_kl_aux_loss(outs["aux"], mask=soft, kl_reduction=reduction)
        for t, m, z in zip(terms, mean, outs["aux"]):
            factor = z.shape[2] * z.shape[3] * (z.shape[0] if reduction == "sum" else 1)
            torch.testing.assert_close(t, m * factor, atol=1e-4, rtol=1e-6)


def test_criterion_kl_reduction_option():
    outs = outputs(seed=10)
    mask = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(11)) > 0.6).float()
    _, default = MSAUNetLoss()(outs, {"mask": mask})
    _, batchmean = MSAUNetLoss(kl_reduction="batchmean")(outs, {"mask": mask})
    assert batchmean["main"] == default["main"]
    assert batchmean["aux1"] == pytest.approx(default["aux1"] * 16 * 16, rel=1e-5)  # aux1 is 16×16 at a 32-px input
    assert batchmean["aux4"] == pytest.approx(default["aux4"] * 2 * 2, rel=1e-5)
    expected = r"kl_reduction must be one of \('pixel_mean', 'batchmean', 'sum'\), got 'mean'"
    with pytest.raises(ValueError, match=expected):
        MSAUNetLoss(kl_reduction="mean")
    with pytest.raises(ValueError, match="kl_reduction must be one of"):
        cpp_kl_aux_loss(outs["aux"], mask=mask, kl_reduction="none")


@pytest.mark.parametrize("k,ignore,size", [(2, None, 32), (4, 255, 37), (3, 1, 35)])
def test_pooled_targets_equal_per_scale_targets(k, ignore, size):
    """One class_prob_pool call for all scales (padded once to the largest h·s) gives every scale's loss and
    gradient as the per-scale op does, also for maps whose labels need padding (37, 35 are not multiples)."""
    gen = torch.Generator().manual_seed(k)
    labels = torch.randint(0, k, (2, size, size), generator=gen)
    if ignore is not None:
        labels = torch.where(torch.rand(labels.shape, generator=gen) < 0.2, torch.full_like(labels, ignore), labels)
    aux = [torch.randn((2, k, -(-size // s), -(-size // s)), generator=gen) for s in (2, 4, 8, 16)]
    results = {}
    for targets in ("pooled", "per_scale"):
        leaves = [a.clone().requires_grad_() for a in aux]
        terms = cpp_kl_aux_loss(leaves, labels=labels, ignore_index=ignore, targets=targets)
        torch.stack(terms).sum().backward()
        results[targets] = [torch.stack(terms).detach(), *(a.grad for a in leaves)]
    for a, b in zip(results["pooled"], results["per_scale"]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_targets_mode_by_device_and_its_errors():
    from covseg_fast.losses.cpp_kl import resolve_targets

    assert resolve_targets("auto", torch.device("cpu")) == "pooled"
    assert resolve_targets("auto", torch.device("cuda", 0)) == "per_scale"
    assert resolve_targets("per_scale", torch.device("cpu")) == "per_scale"
    with pytest.raises(ValueError, match="targets must be one of"):
        MSAUNetLoss(targets="once")


def test_parts_stay_tensors_until_logged():
    """float() of each part would stop a GPU once per part and step: the parts are detached 0-dim tensors."""
    outs = outputs()
    mask = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(6)) > 0.7).float()
    loss, parts = MSAUNetLoss()(outs, {"mask": mask, "mask_is_binary": True})
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in parts.values())
    assert float(parts["total"]) == pytest.approx(loss.item())


def test_host_side_label_range_skips_the_device_check_only_when_valid(monkeypatch):
    from covseg_fast.losses import cpp_kl as module

    checks = []
    original = module.cpp_kl_aux_loss
    monkeypatch.setattr(module, "cpp_kl_aux_loss", lambda *a, **kw: checks.append(kw["check_labels"]) or original(*a, **kw))
    outs = outputs(k=3, seed=7)
    labels = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(8))
    MSAUNetLoss(num_classes=3)(outs, {"mask": (labels > 0).float()[:, None], "labels": labels, "labels_range": (0, 2)})
    with_ignore = torch.where(labels == 2, 255, labels)  # 255 may be ignore_index: the range alone cannot tell
    MSAUNetLoss(num_classes=3, ignore_index=255)(outs, {"mask": (labels > 0).float()[:, None], "labels": with_ignore,
                                                        "labels_range": (0, 255)})
    MSAUNetLoss(num_classes=3)(outs, {"mask": (labels > 0).float()[:, None], "labels": labels})  # no range: check
    assert checks == [False, True, True]
