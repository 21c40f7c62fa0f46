"""GOAT initialisation (spec §2-§3): segments, factors, residual, scaling rules, SVD cache."""

import math

import pytest
import torch
from conftest import holder

from goat.adapters import apply_adapter, method_config
from goat.adapters.svd import selected_triplets


def expert_products(layer):
    """s_i B_i A_i for every expert, (E, m, n), from the layer's own parameters."""
    E, d = layer.num_experts, layer.expert_rank
    A = layer.lora_A.detach().view(E, d, -1)
    B = layer.lora_B.detach().view(-1, E, d).permute(1, 0, 2)
    return layer.scaling.double()[:, None, None] * (B @ A)


def svd64(weight):
    U, S, Vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return U, S, Vh.T


def expected_starts(segments, h, E, d):
    t = h // E
    return {
        "ours": [i * t for i in range(E)],
        "principal": [i * d for i in range(E)],
        "minor": [h - (i + 1) * d for i in range(E)],
    }[segments]


@pytest.mark.parametrize("out_features,in_features", [(40, 24), (24, 40)])
@pytest.mark.parametrize("segments", ["ours", "principal", "minor"])
def test_goat_init_takes_the_specified_triplets_and_preserves_expected_weight(out_features, in_features, segments):
    model = holder(in_features, out_features)
    W0 = model.proj.weight.detach().clone()
    cfg = method_config("goat", r=8, num_experts=4, lora_alpha=16, segments=segments, svd_cache_dir=None)
    apply_adapter(model, cfg)
    layer = model.proj
    U, S, V = svd64(W0)
    h, E, d = min(W0.shape), 4, 2
    products = expert_products(layer)
    for i, start in enumerate(expected_starts(segments, h, E, d)):
        idx = torch.arange(start, start + d)
        segment = (U[:, idx] * S[idx]) @ V[:, idx].T
        # s_i B_i A_i = U_I S_I V_I^T / rho   (spec §2.3)
        torch.testing.assert_close(products[i], segment / cfg.rho, rtol=1e-9, atol=1e-12)
    # E[w_i] = 1/E: base + (1/E) sum_i s_i B_i A_i = W0   (spec §2.4, Thm 3.4)
    expected = layer.base_layer.weight.detach() + products.sum(0) / E
    assert (expected - W0).norm() / W0.norm() < 1e-6
    assert torch.equal(layer.scaling, torch.full((E,), 16 / d, dtype=torch.float32))  # alpha / d


def test_random_segments_are_distinct_multiples_of_d_and_seeded():
    def starts(seed):
        model = holder(64, 48)
        U, S, V = svd64(model.proj.weight)
        cfg = method_config("goat", r=8, num_experts=4, segments="random", seed=seed, svd_cache_dir=None)
        apply_adapter(model, cfg)
        found = []
        for product in expert_products(model.proj):
            # the segment whose rank-d reconstruction matches this expert
            scores = [
                ((U[:, s : s + 2] * S[s : s + 2]) @ V[:, s : s + 2].T / cfg.rho - product).norm()
                for s in range(0, 48, 2)
            ]
            found.append(2 * int(torch.stack(scores).argmin()))
        return found

    first = starts(seed=3)
    assert len(set(first)) == 4 and all(s % 2 == 0 for s in first)
    assert starts(seed=3) == first


def test_goat_s_scales_each_expert_by_root_of_segment_singular_values():
    model = holder(32, 32)
    W0 = model.proj.weight.detach().clone()
    cfg = method_config("goat", r=8, num_experts=4, per_expert_scaling=True, svd_cache_dir=None)
    apply_adapter(model, cfg)
    _, S, _ = svd64(W0)
    sums = torch.stack([S[i * 8 : i * 8 + 2].sum() for i in range(4)])
    expected = (16 / 2) * torch.sqrt(sums[0] / sums)
    torch.testing.assert_close(model.proj.scaling.double(), expected, rtol=1e-6, atol=0)
    # each expert still equals its segment / rho, so the expected weight is still W0
    layer = model.proj
    restored = layer.base_layer.weight.detach() + expert_products(layer).sum(0) / 4
    assert (restored - W0).norm() / W0.norm() < 1e-6


def test_single_lora_with_eight_segments_takes_goat_triplets_and_preserves_output():
    # Table 5 "single LoRA + O" (spec §7): one rank-r expert over the 8 segments GOAT's 8 experts take.
    model = holder(64, 48)
    W0, b0 = model.proj.weight.detach().clone(), model.proj.bias.detach().clone()
    cfg = method_config(
        "goat", r=8, num_experts=1, top_k=1, segment_count=8, scaling="lora", lora_alpha=16, svd_cache_dir=None
    )
    apply_adapter(model, cfg)
    layer = model.proj
    U, S, V = svd64(W0)
    t = 48 // 8  # floor(h / segment_count), h = min(48, 64)
    assert torch.equal(layer.scaling, torch.tensor([16 / 8]))  # alpha / r
    B, A = layer.lora_B.detach(), layer.lora_A.detach()
    for i in range(8):
        # column i of the rank-8 expert: s b_i a_i = u_k sigma_k v_k^T / rho with k = i * t   (spec §2.2-2.3)
        k = i * t
        product = layer.scaling.double() * B[:, i : i + 1] @ A[i : i + 1, :]
        torch.testing.assert_close(product, S[k] * U[:, k : k + 1] @ V[:, k : k + 1].T / cfg.rho, rtol=1e-9, atol=1e-12)
    # one expert: w = 1 for every token and init_coef = 1 / E = 1, so the residual cancels exactly
    model.eval()
    x = torch.randn(5, 7, 64, dtype=torch.float64)
    torch.testing.assert_close(model(x), x @ W0.T + b0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"segments": "ours"},
        {"segments": "principal"},
        {"segments": "minor"},
        {"segments": "random", "seed": 5},
        {"per_expert_scaling": True},  # GOAT-s keeps working: segment_count = E is the default layout
    ],
)
def test_segment_count_none_is_one_segment_per_expert(overrides):
    def adapted(segment_count):
        model = holder(64, 48)
        cfg = method_config("goat", r=8, num_experts=4, segment_count=segment_count, svd_cache_dir=None, **overrides)
        return apply_adapter(model, cfg).proj

    default, explicit = adapted(None), adapted(4)
    for name in ("lora_A", "lora_B", "scaling"):
        assert torch.equal(getattr(default, name), getattr(explicit, name)), name
    assert torch.equal(default.base_layer.weight, explicit.base_layer.weight)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"segment_count": 0}, "segment_count=0 must be an integer >= 1"),
        ({"segment_count": 3}, r"not divisible by segment_count=3.*segment_count in \[1, 2, 4, 8\]"),
        ({"segment_count": 8, "per_expert_scaling": True}, "per_expert_scaling .*ambiguous"),
    ],
)
def test_invalid_segment_count_is_rejected_with_a_fix(overrides, message):
    cfg = method_config("goat", r=8, num_experts=1, top_k=1, svd_cache_dir=None, **overrides)
    with pytest.raises(ValueError, match=message):
        apply_adapter(holder(64, 48), cfg)


@pytest.mark.parametrize(
    "rule,expected",
    [
        ("reference", 16 / 1),  # alpha / d: the official scripts (16 everywhere)
        ("theory", math.sqrt(3 * 1.0 * 768 / 1)),  # sqrt(3 eta n / d): 48 for ViT-B/32 (spec §3)
        ("lora", 16 / 8),
        ("rs", 16 / math.sqrt(1)),
    ],
)
def test_scaling_rules_match_spec(rule, expected):
    cfg = method_config("goat", r=8, lora_alpha=16, scaling=rule)
    assert cfg.scaling_value(768) == pytest.approx(expected)
    if rule == "theory":
        assert cfg.scaling_value(768) == pytest.approx(48.0)


def test_residual_uses_init_coef_and_rho():
    model = holder(24, 24)
    W0 = model.proj.weight.detach().clone()
    apply_adapter(model, method_config("goat", r=8, num_experts=4, init_coef=1.0, rho=2.0, svd_cache_dir=None))
    products = expert_products(model.proj)
    # base = W0 - init_coef * sum_i s_i B_i A_i
    torch.testing.assert_close(model.proj.base_layer.weight.detach(), W0 - products.sum(0), rtol=0, atol=1e-12)
    _, S, _ = svd64(W0)
    assert products[0].norm().item() == pytest.approx((S[0:2] / 2.0).norm().item(), rel=1e-9)


def test_svd_cache_skips_decomposition_and_gives_identical_triplets(tmp_path):
    torch.manual_seed(0)
    weights = {f"layer{i}": torch.randn(32, 16) for i in range(3)}
    indices = {name: torch.tensor([0, 5, 9]) for name in weights}
    cold = selected_triplets(weights, indices, "tiny", tmp_path)
    warm = selected_triplets(weights, indices, "tiny", tmp_path)
    assert (cold.decomposed, cold.from_cache) == (3, 0)
    assert (warm.decomposed, warm.from_cache) == (0, 3)
    for name in weights:
        assert torch.equal(cold.triplets[name].U, warm.triplets[name].U)
        torch.testing.assert_close(cold.triplets[name].S, torch.linalg.svdvals(weights[name])[[0, 5, 9]])
    changed = {**weights, "layer0": weights["layer0"] + 1.0}  # new weights: the fingerprint misses
    assert selected_triplets(changed, indices, "tiny", tmp_path).decomposed == 1


def test_svd_cache_survives_a_second_writer_of_the_same_entry(tmp_path, monkeypatch):
    """Runs training at once share the cache: another writer of the same entry finishes while this one writes
    (it happened on the GPU with goat-grid --workers, when both used one temporary name)."""
    from goat.adapters import svd

    torch.manual_seed(0)
    found = svd.Triplets(torch.randn(8, 2), torch.rand(2), torch.randn(4, 2))
    real_save, interleaved = svd.save_file, []

    def save_then_another_writer(tensors, path):
        real_save(tensors, path)
        if not interleaved:
            interleaved.append(path)
            svd._write_cache(tmp_path, "entry", found)

    monkeypatch.setattr(svd, "save_file", save_then_another_writer)
    svd._write_cache(tmp_path, "entry", found)
    assert interleaved and sorted(p.name for p in tmp_path.iterdir()) == ["entry.safetensors"]
    assert torch.equal(svd._read_cache(tmp_path, "entry").U, found.U)


def test_rank_above_layer_dimension_is_rejected():
    with pytest.raises(ValueError, match="exceeds min"):
        apply_adapter(holder(4, 16), method_config("goat", r=8, svd_cache_dir=None))
