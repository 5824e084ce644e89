"""Ref-Net: side-output shapes, ablation switches, registry/checkpoints, fused vs reference, export, overfitting."""
import os

import pytest
import torch

from covseg_fast.losses import RefNetLoss, edge_from_mask, structure_loss
from covseg_fast.models import get_criterion, get_model, get_spec, load_model, prepare_input, save_checkpoint
from covseg_fast.models.backbones import res2net50_v1b_26w_4s
from covseg_fast.models.refnet import ABLATIONS, REDUCED, RefNet
from covseg_fast.nn.attention import APM
from covseg_fast.nn.refnet_blocks import ContextExploration, Focus, PlainFuse
from covseg_fast.ops import use_backend
from op_harness import HAS_CUDA, backend_cases

SIDE = ("m5", "m4", "m3", "m2")


def make_batch(b, size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((b, 3, size, size), generator=gen)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((yy - size / 2) ** 2 + (xx - size / 3) ** 2) < (size / 4) ** 2).float().expand(b, 1, size, size)
    return x, {"mask": mask.contiguous()}


@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(0)
    return get_model("refnet")


@pytest.mark.parametrize("size", [352, 256])
def test_side_outputs_at_paper_sizes(default_model, size):
    x = torch.randn(1, 3, size, size)
    default_model.train()
    with torch.no_grad():
        out = default_model(x)
        assert set(out) == {"out", *SIDE, "edge"}
        assert all(tuple(v.shape) == (1, 1, size, size) for v in out.values())
        assert out["out"] is out["m2"]
        default_model.eval()
        logits = default_model(x)
    assert isinstance(logits, torch.Tensor) and tuple(logits.shape) == (1, 1, size, size)


def test_internal_map_sizes_follow_the_spec(default_model):
    """M5 at H/32, M4 H/16, M3 H/8, M2 H/4 (checked through the decoder steps' outputs)."""
    sizes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: sizes.__setitem__(i, tuple(out[1].shape)))
             for i, m in enumerate(default_model.decoder)]
    hooks.append(default_model.apm.register_forward_hook(lambda mod, inp, out: sizes.__setitem__(5, tuple(out[1].shape))))
    default_model.eval()
    with torch.no_grad():
        default_model(torch.randn(1, 3, 96, 96))
    for h in hooks:
        h.remove()
    assert sizes == {5: (1, 1, 3, 3), 2: (1, 1, 6, 6), 1: (1, 1, 12, 12), 0: (1, 1, 24, 24)}


def test_cem_structure_matches_pfnet_with_reference_defaults():
    focus = Focus(64, 128)
    assert focus.alpha.item() == 1.0 and focus.beta.item() == 1.0
    ce = focus.fp
    assert [m[0].kernel_size for m in ce.reduce] == [(3, 3)] * 4  # Ref-Net text (PFNet code: 1×1)
    assert [m[0].dilation for m in ce.dilated] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert [m[0].kernel_size for m in ce.local] == [(1, 1), (3, 3), (5, 5), (7, 7)]
    assert ContextExploration(64, reduce_kernel=1).reduce[0][0].kernel_size == (1, 1)
    x = torch.randn(2, 64, 8, 8)
    assert ce(x).shape == x.shape


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_ablation_switches(ablation):
    torch.manual_seed(0)
    eam, apm, cem = ABLATIONS[ablation]
    model = get_model("refnet", ablation=ablation)
    assert (model.edge is not None) == eam
    assert isinstance(getattr(model, "apm", None), APM) == apm
    assert all(isinstance(d, Focus if cem else PlainFuse) for d in model.decoder)
    x, batch = make_batch(1, 64)
    out = model.train()(x)
    assert ("edge" in out) == eam
    loss, parts = get_criterion("refnet")(out, batch)
    assert torch.isfinite(loss) and set(parts) == {*SIDE, "loss"} | ({"edge"} if eam else set())
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"


@pytest.mark.parametrize("level", [2, 3, 4])
def test_apm_position_for_table3(level):
    torch.manual_seed(0)
    model = get_model("refnet", apm_level=level)
    assert model.apm.map.in_channels == REDUCED[level - 2] and hasattr(model, "head5")
    x, batch = make_batch(1, 64)
    out = model.train()(x)
    loss, _ = get_criterion("refnet")(out, batch)
    loss.backward()
    assert model.apm.sab.gamma.grad is not None


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_other_backbones_for_table2(backbone):
    model = get_model("refnet", backbone=backbone).eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(1, 3, 64, 64)).shape) == (1, 1, 64, 64)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown ablation"):
        RefNet(ablation="everything")
    with pytest.raises(ValueError, match="apm_level"):
        RefNet(apm_level=1)
    with pytest.raises(ValueError, match="unknown backbone"):
        RefNet(backbone="vit")


def test_registry_spec_and_checkpoint_round_trip(tmp_path):
    spec = get_spec("refnet")
    assert (spec.in_channels, spec.input_size, spec.normalization, spec.size_multiple) == (3, (352, 352),
                                                                                          "imagenet", 32)
    torch.manual_seed(0)
    model = get_model("refnet", ablation="eam+cem", reduce_kernel=1)
    path = str(tmp_path / "refnet.pt")
    save_checkpoint(path, model)
    loaded = load_model(path, expect="refnet").eval()
    x = prepare_input(torch.rand(1, 1, 64, 64), spec)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_pretrained_backbone_is_loaded(tmp_path):
    torch.manual_seed(3)
    source = res2net50_v1b_26w_4s(True)
    path = str(tmp_path / "res2net50_v1b_26w_4s-3cf99910.pth")
    torch.save(source.state_dict(), path)
    model = get_model("refnet", pretrained_backbone=path)
    assert torch.equal(model.backbone.layer4[0].convs[1].weight, source.layer4[0].convs[1].weight)
    ckpt = str(tmp_path / "trained.pt")
    save_checkpoint(ckpt, model)
    os.remove(path)  # rebuilding from a checkpoint must not need the ImageNet file
    assert torch.equal(load_model(ckpt).backbone.layer4[0].convs[1].weight, source.layer4[0].convs[1].weight)
    with pytest.raises(FileNotFoundError, match="pretrained_backbone"):
        get_model("refnet", pretrained_backbone=str(tmp_path / "missing.pth"))


def test_criterion_composition_and_edge_targets():
    torch.manual_seed(0)
    x, batch = make_batch(2, 32)
    outs = {k: torch.randn(2, 1, 32, 32) for k in (*SIDE, "edge")}
    outs["out"] = outs["m2"]
    loss, parts = RefNetLoss()(outs, batch)
    expected = sum(structure_loss(outs[k], batch["mask"], fused=False) for k in SIDE)
    expected = expected + torch.nn.functional.binary_cross_entropy_with_logits(outs["edge"],
                                                                               edge_from_mask(batch["mask"]))
    assert torch.allclose(loss, expected, atol=1e-5) and abs(parts["loss"] - loss.item()) < 1e-6
    given = dict(batch, edge=torch.zeros(2, 1, 32, 32))
    assert RefNetLoss()(outs, given)[1]["edge"] != parts["edge"]
    weighted = RefNetLoss(bce_mode="weighted", side_weights=(1, 1, 2, 4))(outs, batch)[0]
    assert not torch.allclose(weighted, loss)
    with pytest.raises(KeyError, match="train mode"):
        RefNetLoss()({"out": outs["m2"]}, batch)


def test_edge_from_mask_is_the_morphological_gradient():
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 3:6, 3:6] = 1
    edge = edge_from_mask(mask)
    assert edge[0, 0, 4, 4] == 0 and edge[0, 0, 0, 0] == 0  # inside and far outside
    assert edge[0, 0, 3, 3] == 1 and edge[0, 0, 2, 2] == 1  # inner and outer boundary rings
    assert edge.sum() == 5 * 5 - 1  # the 5×5 dilation minus the 1×1 erosion


def _train_step(model, crit, x, batch):
    model.zero_grad()
    out = model(x)
    loss, _ = crit(out, batch)
    loss.backward()
    return out, loss, [p.grad.clone() for p in model.parameters()]


FUSED_CASES = [c if not (c.values[1] == "cuda" and not HAS_CUDA) else
               pytest.param(*c.values, marks=[*c.marks, pytest.mark.skip(reason="needs a CUDA GPU")], id=c.id)
               for c in backend_cases("structure_loss", include_reference=True)]


@pytest.mark.parametrize("backend,device", FUSED_CASES)
def test_fused_model_matches_reference_for_the_same_weights(backend, device):
    torch.manual_seed(0)
    fused = get_model("refnet", fused=True).to(device)
    plain = get_model("refnet", fused=False).to(device)
    plain.load_state_dict(fused.state_dict())
    x, batch = make_batch(2, 64, seed=1)
    x, batch = x.to(device), {k: v.to(device) for k, v in batch.items()}
    with use_backend(backend):
        out_f, loss_f, grads_f = _train_step(fused.train(), RefNetLoss(fused=True), x, batch)
    out_r, loss_r, grads_r = _train_step(plain.train(), RefNetLoss(fused=False), x, batch)
    for key in out_r:
        torch.testing.assert_close(out_f[key], out_r[key], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss_f, loss_r, atol=1e-5, rtol=1e-5)
    for (name, _), gf, gr in zip(fused.named_parameters(), grads_f, grads_r):
        # closed-form loss gradient vs autograd, propagated through ~50 layers: compare in norm
        err, scale = (gf - gr).norm().item(), gr.norm().item()
        assert err <= 1e-4 * scale + 1e-7, f"{name}: |Δgrad| {err:.2e} vs |grad| {scale:.2e}"
    with torch.no_grad(), use_backend(backend):
        torch.testing.assert_close(fused.eval()(x), plain.eval()(x), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_torch_export_of_the_eval_model():
    torch.manual_seed(0)
    model = get_model("refnet").eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=1e-4)


def _load_slices(root, ids, size):
    import numpy as np
    from PIL import Image

    imgs, masks = [], []
    for i in ids:
        img = Image.open(os.path.join(root, "Imgs", f"{i}.jpg")).convert("L").resize((size, size), Image.BILINEAR)
        gt = Image.open(os.path.join(root, "GT", f"{i}.png")).convert("L").resize((size, size), Image.NEAREST)
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
        masks.append(torch.from_numpy((np.asarray(gt) > 127).astype(np.float32)))
    return torch.stack(imgs)[:, None], torch.stack(masks)[:, None]


@pytest.mark.data
@pytest.mark.slow
def test_structure_loss_decreases_when_overfitting_real_slices(shared_data):
    root = os.path.join(shared_data, "covid-semiseg", "train")
    grey, mask = _load_slices(root, [0, 3, 10], 64)
    assert 0 < mask.mean() < 1
    torch.manual_seed(0)
    model = get_model("refnet").train()
    crit = get_criterion("refnet")
    x = prepare_input(grey, get_spec("refnet"))
    batch = {"mask": mask}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss, parts = crit(model(x), batch)
        loss.backward()
        opt.step()
        losses.append(parts["m2"])
    assert losses[-1] < 0.7 * losses[0], losses
