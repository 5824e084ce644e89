"""Inputs for the CBAM low-precision tests (ops, block, nn.CBAM under autocast) with no near-tied max or ReLU.

"At most twice the reference's error" measures rounding only while both runs take the same branch of every max
and ReLU; these inputs keep each branch clear of a tie in fp16 and bf16 (checked in float64 when built).
"""
import torch
import torch.nn.functional as F

from covseg_fast.ops.reference import cbam as ref
from op_harness import generator

ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7, torch.float32: 2.0 ** -23}


def tie_free_x(shape, seed, signed=True):
    """float64 x whose maxima stay where they are in every precision (for the low-precision bounds).

    A max's gradient jumps where the argmax changes. If rounding moves a near-tie, the fused op and the reference
    both err by about |g_max| (another branch, not rounding), and "at most twice the reference's error" then says
    nothing. So: x is a multiple of 1/64 in (-4, 4), exact in fp16 and bf16 (the cast moves no max); at each
    pixel one channel holds 3.5 ≤ x < 3.92 and every other |x| ≤ 1.52 (0 ≤ x if not ``signed``), so that channel
    leads max_C(x·ca) for any gate with max(ca)/min(ca) < 2.3; each channel's max over HW is unique (raised by
    1/64 where tied). ``assert_tie_free`` checks the margins.
    """
    b, c, h, w = shape
    gen = generator(seed)
    k = torch.randint(-96 if signed else 0, 97, shape, generator=gen)
    lead = torch.randint(0, c, (b, 1, h, w), generator=gen)
    k = k.scatter(1, lead, torch.randint(224, 251, (b, 1, h, w), generator=gen)).flatten(2)
    if h * w > 1:
        top2 = k.topk(2, dim=2).values
        k.scatter_add_(2, k.argmax(dim=2, keepdim=True), (top2[..., :1] == top2[..., 1:]).long())
    return k.view(shape).double() / 64


def assert_tie_free(x, ca, margin=0.05):
    """In float64: each channel's max over HW is unique, and each pixel's max over C of x·ca leads by ≥ margin."""
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(x.to(dtype).double(), x), f"x is not exact in {dtype}"
    assert int(ref.channel_stats(x)[2].max()) == 1, "tied maxima over HW"
    if x.shape[1] > 1:
        top2 = (x * ca[:, :, None, None]).topk(2, dim=1).values
        assert bool((top2[:, 0] - top2[:, 1] >= margin * top2[:, 0].abs()).all()), "near-tied maxima over C"


def tie_free_op_inputs(shape, seed):
    """(x, ca, sa) float64 for the ops: x from ``tie_free_x``, ca multiples of 1/256 in [0.5, 1) (exact in
    fp16/bf16, so x·ca is exact in fp32 and its maxima are those of float64)."""
    x = tie_free_x(shape, seed)
    gen = generator(seed + 1)
    b, c, h, w = shape
    ca = torch.randint(128, 256, (b, c), generator=gen).double() / 256
    sa = torch.rand((b, 1, h, w), generator=gen, dtype=torch.float64)
    assert_tie_free(x, ca)
    return x, ca, sa


def tie_free_block(shape, seed, hidden=4):
    """float64 [x, w1, b1, w2, b2, conv, γ, β] with no max and no ReLU near a tie, in any precision.

    Near a tie a low-precision run may take the other branch of a max or a ReLU; then the fused block and the
    reference both err by a whole gradient term (≈ 1 in grad_x at these scales), not by rounding, and a bound
    of twice the reference's error says nothing.
    x: ``tie_free_x`` (exact in fp16/bf16, unique maxima over HW, one channel leading each pixel by ×2.3),
    unsigned: x ≥ 0 (see ``BLOCK_FLOOR_ULPS``). MLP: |w1| ≤ 0.75/(4C) and b1 = ±1 keep every pre-activation
    ≥ 0.26 from the ReLU's kink (|v| ≤ 3.92); |w2| ≤ 1/(7h), |b2| ≤ 0.05 keep the logits within ±0.6, so
    ca ∈ [0.35, 0.65] and the leading channel keeps max_C(x·ca) by > 20%. Checked below in float64.
    """
    c = shape[1]
    x = tie_free_x(shape, seed, signed=False)
    gen = generator(seed + 2)
    u = lambda *s: 2 * torch.rand(s, generator=gen, dtype=torch.float64) - 1  # noqa: E731
    w1, w2, b2 = u(hidden, c) * 0.75 / (4 * c), u(c, hidden) / (7 * hidden), u(c) * 0.05
    b1 = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(hidden)[:hidden]
    conv = torch.randn((1, 2, 7, 7), generator=gen, dtype=torch.float64) * 0.2
    gamma, beta = torch.rand(1, generator=gen, dtype=torch.float64) + 0.5, u(1) * 0.1
    v = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))])
    pre = F.linear(v, w1, b1)
    assert float(pre.abs().min()) >= 0.25, "a ReLU pre-activation near 0"
    h = F.relu(pre)
    logits = F.linear(h, w2, b2)
    ca = torch.sigmoid(logits[: shape[0]] + logits[shape[0]:])
    assert_tie_free(x, ca, margin=0.2)
    return [x, w1, b1, w2, b2, conv, gamma, beta]


BLOCK_NAMES = ["out", "grad x", "grad w1", "grad b1", "grad w2", "grad b2", "grad conv", "grad γ", "grad β"]
# Floors in ulps of the dtype at each output's scale. The gradients of the MLP, γ and β are sums over H·W or
# B·H·W; where their terms cancel, both paths err by many ulps and which one is luckier is chance. x ≥ 0 and an
# upstream gradient g > 0 make those sums like-signed, except γ's, Σ grad·ẑ with ẑ of zero mean, where both
# paths can err by hundreds of ulps: hence 32 for γ (an earlier sweep saw the fused error exceed twice the
# reference's by 15.5 ulps there), 2 elsewhere. Interpreter sweep of this code, 12 seeds × fp16/bf16 × NCHW/
# channels_last at (2, 24, 9, 11): the largest excess over twice the reference's error was 0.51 ulp (γ: 0.08).
# grad_s, which feeds γ, is held tightly through the conv's and β's gradients.
BLOCK_FLOOR_ULPS = [2, 2, 2, 2, 2, 2, 2, 32, 2]
