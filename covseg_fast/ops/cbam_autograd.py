"""The autograd of the fused CBAM block (``ops.cbam.cbam``): two ``torch.autograd.Function`` s.

How autograd is made to write grad_x once: the two Functions cover the x-dependent parts, and the conv, BN and
σ between them stay ordinary autograd ops on the caller's BN (so torch.compile and torch.export see plain ops
plus the covseg custom ops, registered in ops/cbam.py). ``_ApplyGates`` (pass 3; backward pass A) hands g and
sa back to ``_GateAndPool`` (passes 1–2; backward passes B and C) as the gradients of two zero-stride
placeholders, because pass C needs g and sa but can only run after the MLP backward, i.e. last (and the
channel gate's gradient through a third, so that it stays fp32 between passes A and B). Double
backward is not supported (the backward ops have no autograd formula; it raises, as for the per-op path).
Passes and their traffic: the docstring of ops/cbam.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import cbam as ref


class _GateAndPool(torch.autograd.Function):
    """Forward passes 1–2 (stats → MLP → ca → spatial pool); its backward ends the fused block backward.

    forward(x, w1, b1, w2, b2) → (ca, pooled, g_port, sa_port, gca_port). The three ports are zero-stride
    placeholders (no memory) whose only consumer is :class:`_ApplyGates`: its backward hands them the block's
    incoming gradient g, the spatial gate sa and pass A's fp32 grad_ca *as their gradients*, so this backward,
    which autograd runs last (after the conv / BatchNorm backward that yields grad_pooled), has everything to
    write grad_x once. The MLP's backward is written out (``reference.mlp_backward``): autograd never sees the
    MLP.
    """

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        b = x.shape[0]
        mean, mx, stats_count = torch.ops.covseg.cbam_channel_stats(x)      # pass 1: reads x
        v = torch.cat([mean, mx]).to(x.dtype)
        h = F.relu(F.linear(v, w1, b1))
        logits = F.linear(h, w2, b2)  # one MLP call for both pools
        ca = torch.sigmoid(logits[:b] + logits[b:])
        pooled, pool_count = torch.ops.covseg.cbam_spatial_pool(x, ca)      # pass 2: reads x
        # placeholders: one uninitialised element broadcast (no kernel, no memory); their values are never read.
        # sa_port has x's dtype (sa's outside autocast: no cast); gca_port is fp32, pass A's grad_ca dtype.
        g_port = x.new_empty(()).expand(x.shape)
        sa_port = x.new_empty(()).expand(b, 1, x.shape[2], x.shape[3])
        gca_port = pooled.new_empty(()).expand(b, x.shape[1])
        ctx.save_for_backward(x, w1, w2, v, h, ca, mx, stats_count, pooled, pool_count)
        # ca's gradient comes through gca_port in fp32, not through ca in x.dtype (two casts and a rounding fewer)
        ctx.mark_non_differentiable(ca)
        ctx.set_materialize_grads(False)  # no zeros for ca's (absent) gradient
        return ca, pooled.to(x.dtype), g_port, sa_port, gca_port

    @staticmethod
    def backward(ctx, _grad_ca_unused, grad_pooled, g, sa, grad_ca):
        x, w1, w2, v, h, ca, mx, stats_count, pooled, pool_count = ctx.saved_tensors
        b = x.shape[0]
        if grad_pooled is None:  # the spatial gate's conv did not need its input's gradient
            grad_pooled = torch.zeros_like(pooled)
        # pass B (reads x): the spatial pool's part of grad_ca, added to the apply part from pass A (both fp32)
        grad_ca = grad_ca + torch.ops.covseg._cbam_spatial_pool_backward_reduce(grad_pooled, x, ca, pooled,
                                                                                pool_count)
        grad_logits = torch.ops.aten.sigmoid_backward(grad_ca, ca)  # σ′ = ca·(1 − ca), fp32 (ca is promoted)
        # The MLP backward in the dtype its forward ran in (h's), as autograd would run it: v, h, w1, w2 need
        # no casts and the weight gradients come out in their dtype (one cast of grad_logits instead of eight).
        grad_logits = grad_logits.to(h.dtype)
        grad_v, gw1, gb1, gw2, gb2 = ref.mlp_backward(torch.cat([grad_logits, grad_logits]), v, h, w1, w2)
        grad_x = None
        if ctx.needs_input_grad[0]:  # pass C (reads g and x, writes grad_x once)
            grad_x = torch.ops.covseg._cbam_block_backward_x(g, x, ca, sa, grad_pooled, pooled, pool_count,
                                                             grad_v[:b], grad_v[b:], mx, stats_count)
        return grad_x, gw1.to(w1.dtype), gb1.to(w1.dtype), gw2.to(w2.dtype), gb2.to(w2.dtype)


class _ApplyGates(torch.autograd.Function):
    """Forward pass 3 (out = x·ca·sa); its backward is pass A and routes g and sa to :class:`_GateAndPool`.

    forward(x, ca, sa, g_port, sa_port, gca_port) → out. backward: grad_ca and grad_sa from pass A (reads g
    and x, no grad_x); no gradient for x (pass C writes all of it) nor for ca (non-differentiable); the ports
    receive g, sa and grad_ca (fp32) (see ``_GateAndPool``).
    """

    @staticmethod
    def forward(ctx, x, ca, sa, g_port, sa_port, gca_port):
        ctx.save_for_backward(x, ca, sa)
        return torch.ops.covseg.cbam_apply(x, ca, sa)                       # pass 3: reads x, writes out

    @staticmethod
    def backward(ctx, g):
        x, ca, sa = ctx.saved_tensors
        grad_ca, grad_sa = torch.ops.covseg._cbam_apply_backward_reduce(g, x, ca, sa)  # pass A: reads g, x
        # grad_sa in sa's dtype for the σ backward; sa goes to a port of x's dtype (autograd casts it only if
        # autocast made the two differ)
        return None, None, grad_sa.to(sa.dtype), g, sa, grad_ca
