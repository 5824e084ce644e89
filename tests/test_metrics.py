"""Metrics against independent implementations: py_sod_metrics (S/E/MAE), hand-computed
confusion matrices, and a slow per-threshold loop for the 256-threshold sweep."""
import os

import numpy as np
import pytest
import torch

py_sod = pytest.importorskip("py_sod_metrics")

from covseg_fast import metrics as M  # noqa: E402

EPS = 2.220446049250313e-16


def _random_pair(seed, h=37, w=53, fg=0.3, blob=True):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(h, w, generator=g, dtype=torch.float64)
    if blob:  # a smooth blob plus noise, so maps correlate with the GT
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64),
                                indexing="ij")
        cy, cx = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5)
        d = (yy - cy) ** 2 + (xx - cx) ** 2
        gt = d < fg
        p = (0.6 * torch.exp(-3 * d) + 0.4 * p).clamp(0, 1)
    else:
        gt = torch.rand(h, w, generator=g) < fg
    return p, gt


def _off_grid(p):
    """(k + 0.5)/256: 255·v is never an integer, so SOD's uint8 cast (floor) and our bins agree exactly."""
    return (torch.floor(p * 255) + 0.5) / 256


def _centroid_is_half(gt):
    ys, xs = torch.nonzero(gt, as_tuple=True)
    return any(abs((v.double().mean().item() % 1) - 0.5) < 1e-12 for v in (ys, xs))


# ---------------------------------------------------------------- S-measure, E-measure, MAE vs py_sod_metrics
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("blob", [True, False])
def test_s_measure_matches_pysodmetrics(seed, blob):
    p, gt = _random_pair(seed, blob=blob)
    ref = py_sod.Smeasure().cal_sm(p.numpy(), gt.numpy())
    assert M.s_measure(p, gt, matlab_rounding=False).item() == pytest.approx(ref, abs=1e-10)
    if not _centroid_is_half(gt):  # rounding conventions agree away from .5
        assert M.s_measure(p, gt).item() == pytest.approx(ref, abs=1e-10)


def test_s_measure_special_cases():
    p = torch.rand(10, 12, dtype=torch.float64)
    empty = torch.zeros(10, 12, dtype=torch.bool)
    assert M.s_measure(p, empty).item() == pytest.approx(1 - p.mean().item())
    assert M.s_measure(p, ~empty).item() == pytest.approx(p.mean().item())
    # a perfect prediction scores 1 (within eps)
    _, gt = _random_pair(3)
    assert M.s_measure(gt.double(), gt).item() == pytest.approx(1.0, abs=1e-9)


def test_s_measure_matlab_rounding_differs_at_half():
    # fg columns 0..3 → centroid x = 1.5: MATLAB rounds to 2, numpy to 2 (even) — use 2.5 instead
    gt = torch.zeros(8, 9, dtype=torch.bool)
    gt[2:6, 1:5] = True  # cols 1..4 → mean 2.5; rows 2..5 → mean 3.5
    p = torch.linspace(0, 1, 72, dtype=torch.float64).reshape(8, 9)
    ref_even = py_sod.Smeasure().cal_sm(p.numpy(), gt.numpy())
    assert M.s_measure(p, gt, matlab_rounding=False).item() == pytest.approx(ref_even, abs=1e-12)
    # half away from zero moves the split by one column/row: a different (documented) value
    assert M.s_measure(p, gt, matlab_rounding=True).item() != pytest.approx(ref_even, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_emeasure_curve_and_adaptive_match_pysodmetrics(seed):
    p, gt = _random_pair(seed, blob=seed % 2 == 0)
    p = _off_grid(p)
    em = py_sod.Emeasure()
    em.step(p.numpy(), gt.numpy(), normalize=False)
    ref_curve = em.changeable_ems[0]  # SOD: 256 thresholds, descending (cumsum of flipped histogram)
    tp, nr, nf, npx = M.sweep_counts(p, gt)
    ours = M.sweep_scores(tp, nr, nf, npx)["emeasure"][0].numpy()
    np.testing.assert_allclose(ours, ref_curve, atol=1e-10)
    assert M.adaptive_emeasure(p, gt).item() == pytest.approx(em.adaptive_ems[0], abs=1e-10)


def test_emeasure_special_cases_match_pysodmetrics():
    p = _off_grid(torch.rand(9, 11, dtype=torch.float64))
    for gt in (torch.zeros(9, 11, dtype=torch.bool), torch.ones(9, 11, dtype=torch.bool)):
        em = py_sod.Emeasure()
        em.step(p.numpy(), gt.numpy(), normalize=False)
        ours = M.sweep_scores(*M.sweep_counts(p, gt))["emeasure"][0].numpy()
        np.testing.assert_allclose(ours, em.changeable_ems[0], atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_mae_matches_pysodmetrics(seed):
    p, gt = _random_pair(seed)
    ref = py_sod.MAE().cal_mae(p.numpy(), gt.numpy())
    assert M.mae(p, gt).item() == pytest.approx(ref, abs=1e-12)


@pytest.mark.data
def test_real_maps_against_pysodmetrics(shared_data):
    """Real GT masks with a blurred, noisy 'prediction' derived from the image."""
    from PIL import Image, ImageFilter
    root = os.path.join(shared_data, "covid-semiseg", "train")
    for stem in ("0", "23", "67"):
        gt_u8 = np.asarray(Image.open(os.path.join(root, "GT", f"{stem}.png")))
        img = Image.open(os.path.join(root, "Imgs", f"{stem}.jpg")).convert("L")
        blurred = Image.fromarray(((gt_u8.astype(np.float64) * 0.6 + np.asarray(img) * 0.4)).astype(np.uint8))
        pred_u8 = np.asarray(blurred.filter(ImageFilter.GaussianBlur(5)))
        p = torch.from_numpy((pred_u8.astype(np.float64) + 0.5) / 256)
        g = torch.from_numpy(gt_u8 > 128)
        sm, em, mae = py_sod.Smeasure(), py_sod.Emeasure(), py_sod.MAE()
        for m in (sm, em, mae):
            m.step(p.numpy(), g.numpy(), normalize=False)
        assert M.s_measure(p, g, matlab_rounding=False).item() == pytest.approx(sm.sms[0], abs=1e-10)
        ours = M.sweep_scores(*M.sweep_counts(p, g))["emeasure"][0].numpy()
        np.testing.assert_allclose(ours, em.changeable_ems[0], atol=1e-10)
        assert M.mae(p, g).item() == pytest.approx(mae.maes[0], abs=1e-12)


# ---------------------------------------------------------------- confusion-matrix metrics, by hand
def test_confusion_counts_and_scores_by_hand():
    gt = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    pred = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    c = M.confusion_counts(pred, gt)
    assert c.tolist() == [2, 1, 1, 4]  # TP FP FN TN
    s = M.scores_from_counts(c)
    assert s["dice"].item() == pytest.approx(4 / 6)
    assert s["precision"].item() == pytest.approx(2 / 3)
    assert s["recall"].item() == pytest.approx(2 / 3)
    assert s["specificity"].item() == pytest.approx(4 / 5)
    assert s["iou"].item() == pytest.approx(2 / 4)
    assert s["iou_bg"].item() == pytest.approx(4 / 6)
    assert s["miou"].item() == pytest.approx((2 / 4 + 4 / 6) / 2)


def test_empty_denominator_rules():
    empty = torch.zeros(3, 3, dtype=torch.bool)
    s = M.scores_from_counts(M.confusion_counts(empty, empty))  # both empty → 1 for fg metrics
    for k in ("dice", "precision", "recall", "iou"):
        assert s[k].item() == 1.0
    assert s["specificity"].item() == 1.0 and s["iou_bg"].item() == 1.0
    one = empty.clone()
    one[1, 1] = True
    s = M.scores_from_counts(M.confusion_counts(one, empty))  # FP only: GT empty, prediction not
    assert s["recall"].item() == 0.0 and s["dice"].item() == 0.0 and s["precision"].item() == 0.0
    full = torch.ones(3, 3, dtype=torch.bool)
    s = M.scores_from_counts(M.confusion_counts(full, full))  # both all-foreground → bg metrics 1
    assert s["specificity"].item() == 1.0 and s["iou_bg"].item() == 1.0 and s["miou"].item() == 1.0


def test_batched_counts_and_global_variant():
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(3, 8, 9, generator=g) > 0.5
    gt = torch.rand(3, 8, 9, generator=g) > 0.6
    c = M.confusion_counts(pred, gt)
    for i in range(3):
        assert c[i].tolist() == M.confusion_counts(pred[i], gt[i]).tolist()
    glob = M.scores_from_counts(c.sum(0))
    tp, fp, fn = c.sum(0)[:3].tolist()
    assert glob["iou"].item() == pytest.approx(tp / (tp + fp + fn))
    assert c.sum().item() == 3 * 8 * 9


def test_confusion_shape_error():
    with pytest.raises(ValueError, match="differ"):
        M.confusion_counts(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool))


# ---------------------------------------------------------------- 256-threshold sweep vs a slow loop (MATLAB main.m)
def _slow_sweep(p, gt):
    """Per-threshold loop as in the toolbox: P ≥ T, TP = 0 → Pre = Rec = Spec = Dice = 0; E-measure by pixels."""
    p, gt = p.numpy(), gt.numpy()
    hw = p.size
    out = {k: [] for k in ("dice", "sensitivity", "specificity", "precision", "emeasure")}
    for t in np.arange(255, -1, -1) / 255:
        fm = p >= t
        tp = np.sum(fm & gt)
        num_rec, n_fg = fm.sum(), gt.sum()
        fn, fp = n_fg - tp, num_rec - tp
        tn = (hw - num_rec) - fn
        if tp == 0:
            pre = rec = spe = dice = 0.0
        else:
            pre, rec, spe, dice = tp / num_rec, tp / n_fg, tn / (tn + fp), 2 * tp / (n_fg + num_rec)
        out["dice"].append(dice)
        out["sensitivity"].append(rec)
        out["specificity"].append(spe)
        out["precision"].append(pre)
        if n_fg == 0:
            phi = 1.0 - fm
        elif n_fg == hw:
            phi = fm.astype(float)
        else:
            a_f = fm - fm.mean()
            a_g = gt - gt.mean()
            xi = 2 * a_g * a_f / (a_g * a_g + a_f * a_f + EPS)
            phi = (xi + 1) ** 2 / 4
        out["emeasure"].append(phi.sum() / (hw - 1 + EPS))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("case", ["blob", "random", "quantised", "empty_gt", "constant_map"])
def test_sweep_matches_slow_loop(case):
    p, gt = _random_pair(7, h=23, w=31, blob=case != "random")
    if case == "quantised":
        p = torch.round(p * 255) / 255  # values exactly on thresholds: the ≥ boundary matters
    if case == "empty_gt":
        gt = torch.zeros_like(gt)
    if case == "constant_map":
        p = torch.zeros_like(p)
    ours = M.sweep_scores(*M.sweep_counts(p, gt))
    ref = _slow_sweep(p, gt)
    for k, v in ref.items():
        np.testing.assert_allclose(ours[k][0].numpy(), v, atol=1e-12, err_msg=k)


def test_sweep_batched_equals_single():
    ps, gs = zip(*[_random_pair(s, h=16, w=20) for s in range(3)])
    p, g = torch.stack(ps), torch.stack(gs)
    tp, nr, nf, npx = M.sweep_counts(p, g)
    for i in range(3):
        tpi, nri, _, _ = M.sweep_counts(p[i], g[i])
        assert torch.equal(tp[i], tpi[0]) and torch.equal(nr[i], nri[0])


def test_sweep_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.sweep_counts(torch.full((3, 3), 1.5), torch.zeros(3, 3, dtype=torch.bool))


# ---------------------------------------------------------------- protocol maps
def test_infnet_map_steps():
    logits = torch.randn(1, 1, 11, 13, generator=torch.Generator().manual_seed(0))
    m = M.infnet_map(logits, (20, 17))
    assert m.shape == (20, 17)
    assert m.min().item() == 0.0 and m.max().item() == 1.0
    q = m * 255
    assert torch.allclose(q, q.round(), atol=1e-9)  # the uint8 round trip leaves 256 levels
    # same as doing it by hand
    import torch.nn.functional as F
    p = torch.sigmoid(F.interpolate(logits, size=(20, 17), mode="bilinear", align_corners=False))[0, 0].double()
    p = (p - p.min()) / (p.max() - p.min() + 1e-8)
    p = torch.round(p * 255) / 255
    p = (p - p.min()) / (p.max() - p.min())
    assert torch.allclose(m, p)
    assert torch.equal(M.infnet_map(torch.zeros(1, 1, 4, 4), (4, 4)), torch.zeros(4, 4, dtype=torch.float64))


def test_probability_multiclass_and_threshold_map():
    logits = torch.randn(2, 3, 5, 5)
    p = M.probability(logits)
    assert torch.allclose(p, 1 - torch.softmax(logits, 1)[:, 0])
    assert torch.allclose(M.threshold_map(logits[:1, :1], (5, 5)), torch.sigmoid(logits[0, 0]))
    with pytest.raises(ValueError, match="protocol"):
        M.score_map(logits[:1], (5, 5), "max")


def test_accumulator_aggregates_like_the_toolbox():
    acc = M.MetricAccumulator("threshold")
    maps, gts = [], []
    for s in range(3):
        p, gt = _random_pair(s, h=20 + s, w=25)
        logits = torch.logit(p.clamp(1e-6, 1 - 1e-6)).float()[None, None]
        acc.update(logits, gt, f"im{s}")
        maps.append(M.threshold_map(logits, gt.shape).double())
        gts.append(gt)
    summ = acc.summary()
    curves = [_slow_sweep(p, g) for p, g in zip(maps, gts)]
    mean_dice_curve = np.mean([c["dice"] for c in curves], axis=0)
    assert summ["table"]["Dice"] == pytest.approx(mean_dice_curve.mean(), abs=1e-9)
    assert summ["sweep"]["maxDic"] == pytest.approx(mean_dice_curve.max(), abs=1e-9)
    assert summ["table"]["E_phi_mean"] == pytest.approx(np.mean([c["emeasure"] for c in curves]), abs=1e-9)
    assert summ["table"]["MAE"] == pytest.approx(np.mean([M.mae(p, g).item() for p, g in zip(maps, gts)]))
    counts = sum(M.confusion_counts(p > 0.5, g) for p, g in zip(maps, gts))
    assert summ["threshold_0.5"]["dataset_global"]["iou"] == pytest.approx(M.scores_from_counts(counts)["iou"].item())
    assert len(acc.curves()["dice"]) == 256 and acc.curves()["threshold"][0] == 1.0


def test_per_volume_scores_sum_the_slices_counts():
    # two volumes of 3 and 2 slices: each volume's 3-D matrix is the sum of its slices' matrices
    acc = M.MetricAccumulator("threshold")
    pairs = {}
    for case, n in (("a", 3), ("b", 2)):
        for k in range(n):
            p, gt = _random_pair(10 * k + len(case), h=12, w=9)
            acc.update(torch.logit(p.clamp(1e-6, 1 - 1e-6)).float()[None, None], gt, f"{case}:{k:04d}")
            pairs.setdefault(case, []).append((p > 0.5, gt))
    rows = M.volume_rows(acc.rows, {"a": 0.002, "b": 0.5})
    assert [(r["case"], r["slices"]) for r in rows] == [("a", 3), ("b", 2)]
    for r in rows:
        counts = sum(M.confusion_counts(p, g) for p, g in pairs[r["case"]])
        tp, fp, fn, _ = counts.tolist()
        assert r["dice_3d"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert r["iou_3d"] == pytest.approx(M.scores_from_counts(counts)["iou"].item())
        ml = {"a": 0.002, "b": 0.5}[r["case"]]
        assert (r["pred_ml"], r["ref_ml"]) == pytest.approx(((tp + fp) * ml, (tp + fn) * ml))
    s = M.volume_summary(rows)
    assert s["mean_dice_3d"] == pytest.approx((rows[0]["dice_3d"] + rows[1]["dice_3d"]) / 2)
    assert s["mean_abs_error_ml"] == pytest.approx((abs(rows[0]["error_ml"]) + abs(rows[1]["error_ml"])) / 2)
    assert s["volume_pearson_r"] is None                                  # two volumes: no correlation


def test_per_volume_pearson_and_errors():
    rows = [{"id": f"c{i}:0000", "tp@0.5": 10 * i, "fp@0.5": i, "fn@0.5": 0, "tn@0.5": 100} for i in range(1, 5)]
    vr = M.volume_rows(rows, {f"c{i}": 1.0 for i in range(1, 5)})
    assert M.volume_summary(vr)["volume_pearson_r"] == pytest.approx(1.0)   # predicted = 1.1 × reference
    with pytest.raises(ValueError, match="is not <case>:<slice>"):
        M.volume_rows([{"id": "slice7", "tp@0.5": 1, "fp@0.5": 0, "fn@0.5": 0, "tn@0.5": 0}])
    with pytest.raises(ValueError, match="lacks"):
        M.volume_rows([{"id": "c:1", "dice@0.5": 1.0}])


@pytest.mark.cuda
def test_metrics_on_cuda_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    p, gt = _random_pair(0)
    cpu = M.sweep_scores(*M.sweep_counts(p, gt))
    gpu = M.sweep_scores(*M.sweep_counts(p.cuda(), gt.cuda()))
    for k in cpu:
        torch.testing.assert_close(gpu[k].cpu(), cpu[k])
    assert M.s_measure(p.cuda(), gt.cuda()).item() == pytest.approx(M.s_measure(p, gt).item(), abs=1e-12)
