"""Tables of one GPU check: ratios between providers measured in the same run, the fraction of the
roofline floor (with the ceilings measured in the same call), and the goals of issue 20.

Pure functions over pytest-benchmark JSON (``benchmarks`` entries) and ``roofline_ceilings.py`` JSON;
``ingest_gpu.py`` reads the files and writes the results. Floors are compulsory traffic and work only
(every input read once, every output written once; KERNELS.md §0), so a fraction of 100 % is the ceiling:

- class_prob_pool: ``compulsory_bytes`` (labels read, every scale written) over the copy bandwidth;
- strip_conv, CBAM: 2E bytes forward, 5E forward+backward (E = bytes of x: forward reads x and writes
  the output; backward reads x and the output gradient and writes the input gradient); strip_conv also
  206 FLOP per element forward (25 taps of the 5×5, 2·(7 + 11 + 21) of the strips, a multiply-add
  each), 3× that with backward, over the fp32 FMA rate (the depthwise sums run on the FP32 cores);
- attention: the case's own ``flops`` and ``bytes`` (bench_attention.py) over the bf16 matmul rate.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Optional

FUSED = ("cuda", "cpp", "triton", "triton_split", "fused", "fused_gram", "fused_flash")
EAGER = ("eager", "reference")  # the models' benchmarks call the eager path "reference" (MSA-UNet) or "eager"
MEASURES = {"peak_memory_bytes", "peak_bytes", "images_per_s", "compiled_graphs", "graph_breaks", "date",
            "commit", "device", "torch", "cuda", "triton", "python", "fused_backend", "path", "estimated_flops",
            "estimated_bytes", "estimated_seconds", "estimated_eager_peak_bytes", "max_abs_diff_probability_vs_reference"}
STRIP_FLOP_PER_ELEMENT = 2 * (25 + 2 * (7 + 11 + 21))
ELEMENT_BYTES = {"torch.bfloat16": 2, "torch.float16": 2, "torch.float32": 4, "torch.float64": 8}


def suite_of(entry: dict) -> str:
    """strip_conv, cbam, class_prob_pool, position_attention, channel_attention, msa_unet, refnet, ..."""
    test = entry["name"].split("[")[0]
    if test in ("test_position_attention", "test_channel_attention"):
        return test[len("test_"):]
    match = re.search(r"bench_(\w+)\.py", entry.get("fullname", ""))
    return match.group(1) if match else test[len("test_"):]


def cases(bench: dict) -> list[dict]:
    """One row per benchmark: suite, provider, the group key (every other parameter), median, extra_info."""
    rows = []
    for entry in bench.get("benchmarks", []):
        params = {k: str(v).replace("UNSERIALIZABLE[", "").rstrip("]") for k, v in (entry.get("params") or {}).items()}
        provider = params.pop("provider", entry.get("extra_info", {}).get("provider", "?"))
        if "mode" not in params and entry.get("extra_info", {}).get("mode"):
            params["mode"] = entry["extra_info"]["mode"]  # Ref-Net's train and infer tests share parameters
        test = entry["name"].split("[")[0]
        rows.append({"suite": suite_of(entry), "test": test, "provider": provider,
                     "key": tuple(sorted(params.items())), "median_s": entry["stats"]["median"],
                     "rounds": entry["stats"]["rounds"], "extra": entry.get("extra_info", {})})
    return rows


def floor_seconds(row: dict, ceilings: Optional[dict]) -> Optional[tuple[float, str]]:
    """(floor in seconds, "memory" or "compute") for a fused case, or None where no floor is defined."""
    if not ceilings:
        return None
    extra, suite = row["extra"], row["suite"]
    bandwidth = ceilings.get("copy", {}).get("bytes_per_s")
    matmul = ceilings.get("matmul", {}).get("flops_per_s")
    fma = ceilings.get("fp32_fma", {}).get("flops_per_s")
    backward = extra.get("mode") == "fwd+bwd"
    flops, rate = 0.0, None
    if suite == "class_prob_pool":
        nbytes = extra.get("compulsory_bytes")
    elif suite in ("strip_conv", "cbam"):
        nbytes = (5 if backward else 2) * extra["bytes_x"] if "bytes_x" in extra else None
        if suite == "strip_conv" and nbytes is not None:
            elements = extra["bytes_x"] / ELEMENT_BYTES.get(extra.get("dtype"), 2)
            flops, rate = (3 if backward else 1) * STRIP_FLOP_PER_ELEMENT * elements, fma
    elif suite in ("position_attention", "channel_attention"):
        nbytes, flops, rate = extra.get("bytes"), extra.get("flops") or 0.0, matmul
    else:
        return None
    if nbytes is None or not bandwidth:
        return None
    memory = nbytes / bandwidth
    compute = flops / rate if flops and rate else 0.0
    return (compute, "compute") if compute > memory else (memory, "memory")


def op_rows(rows: list[dict], ceilings: Optional[dict]) -> list[dict]:
    """Per group (suite + parameters) and fused provider: medians of every provider, ratios, floor."""
    groups: dict = defaultdict(dict)
    for row in rows:
        if row["suite"] in ("msa_unet", "refnet"):
            continue
        groups[(row["suite"], row["key"])][row["provider"]] = row
    out = []
    for (suite, key), providers in groups.items():
        medians = {p: r["median_s"] for p, r in providers.items()}
        eager = next((medians[p] for p in EAGER if p in medians), None)
        for name in (p for p in FUSED if p in providers):
            row = providers[name]
            fused = row["median_s"]
            floor = floor_seconds(row, ceilings)
            extra = row["extra"]
            out.append({
                "suite": suite, "params": dict(key), "fused": name, "medians_s": medians,
                "vs_eager": eager / fused if eager else None,
                "vs_compile": medians["compile"] / fused if "compile" in medians else None,
                "vs_sdpa": medians["sdpa"] / fused if "sdpa" in medians else None,
                "floor_s": floor[0] if floor else None, "bound": floor[1] if floor else None,
                "floor_fraction": floor[0] / fused if floor else None,
                "tflops": extra["flops"] / fused / 1e12 if extra.get("flops") else None,
                "peak_memory_bytes": extra.get("peak_memory_bytes")})
    return out


def train_rows(rows: list[dict]) -> list[dict]:
    """Per model, shape, layout and mode: images/s of every provider and the fused ratios."""
    groups: dict = defaultdict(dict)
    for row in rows:
        if row["suite"] in ("msa_unet", "refnet"):
            groups[(row["suite"], row["key"])][row["provider"]] = row
    out = []
    for (suite, key), providers in groups.items():
        medians = {p: r["median_s"] for p, r in providers.items()}
        extra = next(iter(providers.values()))["extra"]
        batch = extra.get("batch")
        fused = medians.get("fused")
        eager = next((medians[p] for p in EAGER if p in medians), None)
        out.append({"suite": suite, "params": dict(key), "medians_s": medians,
                    "images_per_s": {p: batch / m for p, m in medians.items()} if batch else {},
                    "vs_eager": eager / fused if eager and fused else None,
                    "vs_compile": medians["compile"] / fused if fused and "compile" in medians else None})
    return out


# (what, suite, parameters to match, measure, threshold): issue 20's goals for the H200, bf16, one run
GOALS = [
    ("class_prob_pool vs eager", "class_prob_pool", {}, "vs_eager", 20.0),
    ("class_prob_pool vs compile", "class_prob_pool", {}, "vs_compile", 5.0),
    ("strip_conv fwd+bwd at msa_l0 vs eager", "strip_conv", {"shape_name": "msa_l0", "mode": "fwd+bwd"}, "vs_eager", 3.0),
    ("strip_conv fwd+bwd at msa_l0 vs compile", "strip_conv", {"shape_name": "msa_l0", "mode": "fwd+bwd"}, "vs_compile", 2.0),
    ("CBAM fwd+bwd vs eager", "cbam", {"mode": "fwd+bwd"}, "vs_eager", 2.5),
    ("CBAM fwd+bwd vs compile", "cbam", {"mode": "fwd+bwd"}, "vs_compile", 1.5),
    ("position attention forward, TFLOP/s", "position_attention", {"mode": "fwd"}, "tflops", 300.0),
    ("position attention N = 16384 fwd+bwd, extra GB (< 1)", "position_attention",
     {"shape_name": "f2_128", "mode": "fwd+bwd"}, "peak_gb", 1.0),
    ("channel attention at refnet_f5 vs eager", "channel_attention", {"shape_name": "refnet_f5"}, "vs_eager", 5.0),
    ("MSA-UNet training step vs eager", "msa_unet", {"mode": "train"}, "vs_eager", 2.0),
    ("MSA-UNet training step vs compile", "msa_unet", {"mode": "train"}, "vs_compile", 1.3),
    ("Ref-Net training step vs eager", "refnet", {}, "vs_eager", 1.5),
]


def goals(ops: list[dict], train: list[dict]) -> list[dict]:
    """Each goal against every matching measured case: the worst case decides (a goal must hold everywhere)."""
    out = []
    for what, suite, match, measure, threshold in GOALS:
        rows = [r for r in (train if suite in ("msa_unet", "refnet") else ops) if r["suite"] == suite
                and all(r["params"].get(k) == v for k, v in match.items())
                and (suite in ("msa_unet", "refnet") or r["fused"] in ("cuda", "triton", "fused"))]
        if measure == "peak_gb":
            values = [r["peak_memory_bytes"] / 1e9 for r in rows if r.get("peak_memory_bytes") is not None]
            worst, met = (max(values), max(values) < threshold) if values else (None, None)
        else:
            values = [r[measure] for r in rows if r.get(measure) is not None]
            worst, met = (min(values), min(values) >= threshold) if values else (None, None)
        out.append({"goal": what, "threshold": threshold, "worst": worst, "cases": len(values), "met": met})
    return out


def _ms(seconds: Optional[float]) -> str:
    return "—" if seconds is None else (f"{seconds * 1e3:.3f}" if seconds < 1e-2 else f"{seconds * 1e3:.2f}")


def _x(ratio: Optional[float]) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def _case_label(params: dict) -> str:
    order = ("shape_name", "shape", "mode", "layout", "dtype", "variant")
    return " ".join(str(params[k]) for k in order if k in params)


def ops_table(ops: list[dict]) -> list[str]:
    providers = [p for p in ("eager", "compile", "sdpa") if any(p in r["medians_s"] for r in ops)]
    lines = ["| op | case | " + " | ".join(f"{p} ms" for p in providers) + " | fused ms | fused vs eager | "
             "vs compile | TFLOP/s | floor µs (bound) | of floor |",
             "|---|---|" + "---|" * (len(providers) + 6)]
    for r in ops:
        fused = r["medians_s"][r["fused"]]
        floor = f"{r['floor_s'] * 1e6:.1f} ({r['bound']})" if r["floor_s"] is not None else "—"
        share = f"{r['floor_fraction'] * 100:.0f} %" if r["floor_fraction"] is not None else "—"
        lines.append(f"| {r['suite']} ({r['fused']}) | {_case_label(r['params'])} | "
                     + " | ".join(_ms(r["medians_s"].get(p)) for p in providers)
                     + f" | {_ms(fused)} | {_x(r['vs_eager'])} | {_x(r['vs_compile'])} | "
                     + ("—" if r["tflops"] is None else f"{r['tflops']:.1f}") + f" | {floor} | {share} |")
    return lines


def train_table(train: list[dict]) -> list[str]:
    lines = ["| model | case | fused img/s | eager img/s | compile img/s | fused vs eager | vs compile |",
             "|---|---|---|---|---|---|---|"]
    for r in train:
        ips = r["images_per_s"]
        eager = next((ips[p] for p in EAGER if p in ips), None)

        def fmt(v):
            return "—" if v is None else f"{v:.1f}"

        lines.append(f"| {r['suite']} | {_case_label(r['params'])} | {fmt(ips.get('fused'))} | {fmt(eager)} | "
                     f"{fmt(ips.get('compile'))} | {_x(r['vs_eager'])} | {_x(r['vs_compile'])} |")
    return lines


def goals_table(rows: list[dict]) -> list[str]:
    lines = ["| goal (issue 20) | threshold | worst measured | cases | met |", "|---|---|---|---|---|"]
    for g in rows:
        worst = "—" if g["worst"] is None else f"{g['worst']:.2f}"
        met = "not measured" if g["met"] is None else ("yes" if g["met"] else "**no**")
        lines.append(f"| {g['goal']} | {g['threshold']:g} | {worst} | {g['cases']} | {met} |")
    return lines
