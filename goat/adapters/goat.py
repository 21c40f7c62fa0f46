"""GOAT (spec §1-§3): LoRA-MoE experts initialised from evenly spaced SVD segments, plus a residual.

Expert i takes the singular triplets I_i = [start_i, start_i + d) of W0 (spec §2.2), with
  ours:      start_i = i * t, t = floor(min(m, n) / E)   (paper Eq. 13, the default)
  principal: start_i = i * d                              (top-r triplets split consecutively)
  minor:     start_i = h - (i + 1) * d                    (bottom-r triplets)
  random:    E distinct multiples of d, drawn with the config seed (Table 5 "R")
and B_i = U_I sqrt(S_I / (s_i rho)), A_i = sqrt(S_I / (s_i rho)) V_I^T, so s_i B_i A_i = U_I S_I V_I^T / rho.
With `segment_count` set, the r columns are cut into that many segments of width r / segment_count instead
(E and d above become the segment count and width) and expert i still owns columns [i*d, (i+1)*d) of them:
Table 5's "single LoRA + O" is one expert over the 8 segments that GOAT's 8 experts would take.
The base weight becomes W0 - init_coef * sum_i s_i B_i A_i (spec §2.4, Thm 3.4), so the expected
equivalent weight over routing, E[w_i] = 1/E, equals W0 when init_coef = 1/E.
"""

from __future__ import annotations

import torch

from goat.adapters.config import AdapterConfig
from goat.adapters.moe import MoELoRALinear
from goat.adapters.svd import Triplets


def segment_starts(h: int, num_segments: int, d: int, segments: str, generator: torch.Generator) -> torch.Tensor:
    """First singular index of each segment of width d, (num_segments,) int64 (one segment per expert by default)."""
    if num_segments * d > h:
        raise ValueError(f"total rank {num_segments * d} exceeds min(out, in) = {h} of the layer")
    segment = torch.arange(num_segments)
    if segments == "ours":
        return segment * (h // num_segments)
    if segments == "principal":
        return segment * d
    if segments == "minor":
        return h - (segment + 1) * d
    if segments == "random":
        slots = h // d  # non-overlapping segments of width d
        return torch.randperm(slots, generator=generator)[:num_segments] * d
    raise ValueError(f"segments must be one of ours/principal/minor/random, got {segments!r}")


def segment_indices(h: int, num_segments: int, d: int, segments: str, generator: torch.Generator) -> torch.Tensor:
    """Singular indices of all segments in order, (num_segments * d,) int64: segment j owns [j*d, (j+1)*d)."""
    starts = segment_starts(h, num_segments, d, segments, generator)
    return (starts[:, None] + torch.arange(d)[None, :]).reshape(-1)


def expert_scalings(cfg: AdapterConfig, in_features: int, singular: torch.Tensor | None) -> torch.Tensor:
    """s_i for every expert, (E,). GOAT-s (Table 8): s_i = s_1 sqrt(sigma_1 / sigma_i), sigma_i summed per segment."""
    base = torch.full((cfg.num_experts,), cfg.scaling_value(in_features), dtype=torch.float64)
    if not cfg.per_expert_scaling or singular is None:
        return base
    per_segment = singular.double().view(cfg.num_experts, cfg.expert_rank).sum(dim=1)  # (E,)
    return base * torch.sqrt(per_segment[0] / per_segment.clamp_min(torch.finfo(torch.float64).tiny))


def svd_factors(found: Triplets, column_scaling: torch.Tensor, rho: float):
    """B = U sqrt(S / (s rho)), A = sqrt(S / (s rho)) V^T for per-column s: B (m, r), A (r, n)."""
    root = torch.sqrt(found.S / (column_scaling.to(found.S.dtype) * rho))
    return found.U * root[None, :], (found.V * root[None, :]).t()


def init_goat_layer(layer: MoELoRALinear, found: Triplets, cfg: AdapterConfig) -> None:
    """Writes the SVD-segment experts into `layer` and subtracts the residual from its base weight."""
    scaling = expert_scalings(cfg, layer.in_features, found.S)  # (E,)
    column_scaling = scaling.repeat_interleave(cfg.expert_rank)  # (E*d,)
    B, A = svd_factors(found, column_scaling, cfg.rho)
    with torch.no_grad():
        layer.scaling.copy_(scaling.float())
        layer.lora_A.copy_(A.to(layer.lora_A.dtype))
        layer.lora_B.copy_(B.to(layer.lora_B.dtype))
    # W_res = init_coef * sum_i s_i B_i A_i, kept as low-rank factors (B_res, A_res) computed from the
    # unrounded float32/float64 factors.
    residual_B = cfg.effective_init_coef() * B * column_scaling.to(B.dtype)[None, :]
    layer.subtract_residual(residual_B, A)
