"""Per-expert dropout (spec §1 step 4) for the down-projection of routed LoRA experts, masks kept as bits.

Each token goes to k experts and each of them sees its own dropout draw of the token. Drawing one mask per
top-k slot gives exactly that: slot j's mask is used by the expert chosen in slot j, and the k slots of a
token draw independently. So the down-projection runs on S = k dropped copies of x:

    act[j] = (x * keep[j]) @ A^T / (1 - p)         x (T, n), keep (S, T, n) bool, A (r, n) -> act (S, T, r)

and the layer takes from act[j] only the d columns of the expert routed in slot j.

The masks are drawn with `torch.rand(S, T, n) >= p` from the default generator (under torch.compile, the
compiler's Philox stream seeded from it): no RNG state is saved or restored, so the compiler sees an ordinary
random op. They are kept for backward packed 8 to a byte, (S, T, ceil(n / 8)) uint8, so per-expert dropout
keeps k / 8 bytes per input element where a dropout layer keeps a mask and a dropped copy (3 bytes in bf16);
the dropped copies exist only inside forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_keep_masks(slots: int, x: torch.Tensor, p: float) -> torch.Tensor:
    """(S, T, n) bool, True where x is kept: one independent Bernoulli(1 - p) mask per slot."""
    return torch.rand((slots, *x.shape), device=x.device) >= p


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """(..., n) bool -> (..., ceil(n / 8)) uint8, bit b of byte i holding element 8 i + b."""
    n = keep.shape[-1]
    bits = F.pad(keep.to(torch.uint8), (0, -n % 8))
    bits = bits.view(*keep.shape[:-1], -1, 8)
    shifts = torch.arange(8, device=keep.device, dtype=torch.uint8)
    return (bits << shifts).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack_bits: (..., ceil(n / 8)) uint8 -> (..., n) bool."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed[..., None] >> shifts) & 1
    return bits.view(*packed.shape[:-1], -1)[..., :n].bool()


class _SlotDropoutDown(torch.autograd.Function):
    """act (S, T, r) = dropout_j(x) @ A^T for each slot j, with the masks saved as bits."""

    @staticmethod
    def forward(ctx, x, A, keep, p: float):
        # The 1 / (1 - p) goes on the (S, T, r) product, not on x: nothing of x's size but the masks' bits is kept
        # for backward (compiled, a scaled copy of x would otherwise be saved beside x).
        scale = 1.0 / (1.0 - p)
        act = torch.where(keep, x, 0.0) @ A.t() * scale  # (S, T, r); the dropped copies live only here
        ctx.save_for_backward(x, A, pack_bits(keep))
        ctx.scale, ctx.n = scale, x.shape[-1]
        return act

    @staticmethod
    def backward(ctx, grad_act):
        x, A, packed = ctx.saved_tensors
        keep = unpack_bits(packed, ctx.n)  # (S, T, n)
        grad_act = grad_act.to(x.dtype) * ctx.scale
        grad_x = grad_A = None
        if ctx.needs_input_grad[1]:
            grad_A = torch.einsum("str,stn->rn", grad_act, torch.where(keep, x, 0.0)).to(A.dtype)  # (r, n)
        if ctx.needs_input_grad[0]:
            grad_x = torch.where(keep, grad_act @ A, 0.0).sum(0)  # (T, n)
        return grad_x, grad_A, None, None


def slot_dropout_down(x: torch.Tensor, A: torch.Tensor, slots: int, p: float) -> torch.Tensor:
    """x (T, n), A (r, n) in one dtype -> (S, T, r): each slot's own dropout of x, down-projected by A."""
    keep = draw_keep_masks(slots, x, p)
    return _SlotDropoutDown.apply(x, A, keep, p)
