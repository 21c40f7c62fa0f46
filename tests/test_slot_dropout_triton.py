"""The fused per-slot dropout kernels (goat/adapters/slot_dropout_triton.py) against the torch formula with the masks
the kernels draw. On the CPU they run in Triton's interpreter (TRITON_INTERPRET=1, `make test-triton`); without
triton installed the module skips. On a GPU (marker gpu) the same checks run in bf16 and fp32."""

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed (make test-triton installs it for the CPU)")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from goat.adapters import slot_dropout_triton as kernels  # noqa: E402
from goat.adapters.slot_dropout_triton import (  # noqa: E402
    Tiles,
    draw_seed,
    drawn_masks,
    effective_p,
    feature_splits,
    routed_dropout_down,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, A, keep, p):
    """act[s] = (x * keep_s) @ A^T / (1 - p'), the torch path's formula with the kernels' masks."""
    return torch.stack([(x * keep[s]) @ A.t() for s in range(keep.shape[0])]) / (1 - effective_p(p))


@pytest.mark.parametrize(
    "tokens,n,r,e,slots",
    [(70, 72, 12, 8, 2), (64, 128, 32, 8, 2), (9, 20, 4, 3, 3), (130, 64, 16, 20, 1), (33, 40, 8, 4, 4)],
)
def test_fused_forward_and_backward_equal_the_formula_with_the_drawn_masks(tokens, n, r, e, slots):
    check_against_the_formula(tokens, n, r, e, slots)


@pytest.mark.parametrize(
    "tiles", [Tiles(rows=32, cols=128, token_splits=3), Tiles(rows=128, cols=32, warps=8, stages=2, token_splits=1)]
)
def test_other_tiles_give_the_same_masks_and_results(monkeypatch, tiles):
    """Tiles change how the work is cut, not what is computed: the same formula with the same drawn masks."""
    monkeypatch.setattr(kernels, "TILES", {"down": tiles, "grad_x": tiles, "grad_a": tiles})
    check_against_the_formula(tokens=150, n=200, r=12, e=8, slots=3)


def check_against_the_formula(tokens, n, r, e, slots):
    torch.manual_seed(0)
    p = 0.3
    x = torch.randn(tokens, n, device=DEVICE, requires_grad=True)
    A = torch.randn(r, n, device=DEVICE, requires_grad=True)
    W = torch.randn(e, n, device=DEVICE, requires_grad=True)  # the router
    seed = torch.tensor([987654321], device=DEVICE)
    upstream = torch.randn(slots, tokens, r, device=DEVICE)
    upstream_logits = torch.randn(tokens, e, device=DEVICE)
    act, logits = routed_dropout_down(x, A, W, seed, slots, p)
    assert logits.dtype == torch.float32 and logits.shape == (tokens, e)
    ((act * upstream).sum() + (logits * upstream_logits).sum()).backward()
    got = act.detach(), logits.detach(), x.grad.clone(), A.grad.clone(), W.grad.clone()
    x.grad = A.grad = W.grad = None
    keep = drawn_masks(seed, slots, tokens, n, p)
    want, want_logits = reference(x, A, keep, p), x @ W.t()
    ((want * upstream).sum() + (want_logits * upstream_logits).sum()).backward()
    names = ("act", "logits", "grad_x", "grad_A", "grad_W")
    for name, a, b in zip(names, got, (want.detach(), want_logits.detach(), x.grad, A.grad, W.grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=name)


def test_the_forward_splits_the_features_when_token_blocks_alone_leave_multiprocessors_idle():
    # a program computes both slots of a pair: 4x512 tokens and top-2 make 32 token blocks x 1 pair = 32 programs
    assert feature_splits(tokens=4 * 512, n=4096, slots=2, multiprocessors=132) == 9  # 32 programs -> 288
    assert feature_splits(tokens=16 * 512, n=4096, slots=2, multiprocessors=132) == 3  # 128 programs -> 384
    assert feature_splits(tokens=16 * 512, n=4096, slots=4, multiprocessors=132) == 2  # 2 pairs: 256 -> 512
    assert feature_splits(tokens=64 * 512, n=4096, slots=2, multiprocessors=132) == 1  # 512 programs: enough
    assert feature_splits(tokens=8, n=40, slots=1, multiprocessors=132) == 1  # one column tile: nothing to split
    # the parametrized shapes above run both paths: (70, 72, 12, 8, 2) in 2 splits, (130, 64, 16, 20, 1) in one
    assert feature_splits(70, 72, 2, 132) == 2 and feature_splits(130, 64, 1, 132) == 1


def test_effective_p_is_p_to_2_to_the_minus_16_and_never_drops_everything():
    assert abs(effective_p(0.05) - 0.05) <= 2**-17 and effective_p(1e-9) == 0.0
    assert 0 < effective_p(0.999999) < 1  # the scale 1 / (1 - p') stays finite


def test_drawn_masks_are_bernoulli_per_slot_and_depend_on_the_seed():
    p, slots, tokens, n = 0.05, 2, 512, 256
    keep = drawn_masks(torch.tensor([1], device=DEVICE), slots, tokens, n, p).double()
    q = 1 - effective_p(p)
    sigma = (q * (1 - q) / keep.numel()) ** 0.5
    assert abs(keep.mean().item() - q) < 4 * sigma
    joint_sigma = (q * q * (1 - q * q) / keep[0].numel()) ** 0.5
    # slots 0 and 1 take the low and high halves of the same Philox outputs: still independent
    assert abs((keep[0] * keep[1]).mean().item() - q * q) < 4 * joint_sigma
    within = keep[..., 0::4] * keep[..., 1::4]  # two outputs of one Philox call
    assert abs(within.mean().item() - q * q) < 4 * joint_sigma * 2**0.5
    other = drawn_masks(torch.tensor([2], device=DEVICE), slots, tokens, n, p).double()
    assert (other != keep).any()
    again = drawn_masks(torch.tensor([1], device=DEVICE), slots, tokens, n, p).double()
    assert torch.equal(again, keep)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 kernels need CUDA")
def test_fused_bf16_agrees_with_fp32_formula_and_compiles_without_graph_breaks():
    torch.manual_seed(0)
    p, slots, tokens, n, r = 0.05, 2, 1024, 4096, 32
    x = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16)
    A = torch.randn(r, n, device="cuda", dtype=torch.bfloat16) / 64
    seed = torch.tensor([5], device="cuda")
    keep = drawn_masks(seed, slots, tokens, n, p)
    want = reference(x.float(), A.float(), keep, p)
    W = torch.randn(8, n, device="cuda", dtype=torch.bfloat16) / 64
    got, logits = routed_dropout_down(x, A, W, seed, slots, p)
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(logits, x.float() @ W.float().t(), rtol=1e-3, atol=1e-3)  # fp32 sums of bf16 products
    explained = torch._dynamo.explain(lambda x, A, W, s: routed_dropout_down(x, A, W, s, slots, p))(x, A, W, seed)
    assert explained.graph_break_count == 0


def test_goat_layer_with_the_fused_kernel_equals_the_loop_with_its_masks():
    """The routed layer with method.dropout_kernel=triton: output and gradients equal the per-expert loop of
    test_moe_forward given the masks the kernels draw (seed drawn from the default generator at forward)."""
    from test_moe_forward import goat_layer, loop_reference

    p, tokens, n = 0.3, 14, 20
    layer = goat_layer(4, 2, 8, n=n, dropout=p).float().to(DEVICE)
    layer.dropout_kernel = "triton"
    layer.train()
    x = torch.randn(2, 7, n, device=DEVICE, requires_grad=True)
    upstream = torch.randn(2, 7, layer.out_features, device=DEVICE)
    torch.manual_seed(4)
    seed = draw_seed(x.device)
    keep = drawn_masks(seed, 2, tokens, n, p)
    torch.manual_seed(4)
    out = layer(x)
    (out * upstream).sum().backward()
    params = (layer.lora_A, layer.lora_B, layer.routing.lora_router.weight, x)
    got = [out.detach()] + [t.grad.clone() for t in params]
    for t in params:
        t.grad = None
    masks = [keep[slot].float() / (1 - effective_p(p)) for slot in range(2)]
    want = loop_reference(layer, x, masks)
    (want * upstream).sum().backward()
    want = [want.detach()] + [t.grad for t in params]
    for name, a, b in zip(("out", "A", "B", "router", "x"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_goat_layer_with_the_fused_kernel_traces_without_graph_breaks():
    from test_moe_forward import goat_layer

    layer = goat_layer(4, 2, 8, n=20, dropout=0.1).float().to(DEVICE)
    layer.dropout_kernel = "triton"
    layer.train()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(layer)(torch.randn(3, 5, 20, device=DEVICE))
    assert explained.graph_break_count == 0, explained.break_reasons


def test_a_batch_too_large_for_the_mask_counters_takes_the_torch_ops(monkeypatch):
    """dropout_kernel=triton never fails a run on a batch whose masks would overflow the 31-bit Philox counters:
    that forward draws its masks with the torch ops (the same distribution)."""
    from test_moe_forward import goat_layer

    import goat.adapters.moe as moe

    layer = goat_layer(4, 2, 8, n=20, dropout=0.1).float().to(DEVICE)
    layer.dropout_kernel = "triton"
    layer.train()
    calls, torch_ops = [], moe.slot_dropout_down

    def counted_torch_ops(x, A, slots, p):
        calls.append(slots)
        return torch_ops(x, A, slots, p)

    monkeypatch.setattr(moe, "slot_dropout_down", counted_torch_ops)
    layer(torch.randn(3, 5, 20, device=DEVICE))
    assert calls == []  # the counters fit: the fused kernels ran
    monkeypatch.setattr(moe.fused, "counters_fit", lambda x, slots: False)
    out = layer(torch.randn(3, 5, 20, device=DEVICE))
    assert calls == [2] and out.shape == (3, 5, layer.out_features)


def test_logits_that_reach_no_loss_give_the_router_a_zero_gradient():
    x = torch.randn(20, 24, device=DEVICE, requires_grad=True)
    A = torch.randn(8, 24, device=DEVICE, requires_grad=True)
    W = torch.randn(4, 24, device=DEVICE, requires_grad=True)
    act, _ = routed_dropout_down(x, A, W, torch.tensor([3], device=DEVICE), 2, 0.1)
    act.sum().backward()
    assert torch.count_nonzero(W.grad) == 0 and torch.count_nonzero(A.grad) > 0


def test_the_tile_benchmark_times_every_candidate_and_writes_its_table(tmp_path):
    """benchmarks/slot_dropout_tiles.py --tiny: one shape, two candidates per kernel, the LoRA reference row."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "slot_dropout_tiles.py"
    spec = importlib.util.spec_from_file_location("slot_dropout_tiles", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--tiny", "--out", str(tmp_path)])
    (row,) = results["rows"]
    assert (row["tokens"], row["n"]) == module.TINY_SHAPES[0] and set(row["kernels"]) == {"down", "grad_x", "grad_a"}
    for name, timed in row["kernels"].items():
        assert [c["tiles"] for c in timed["timed"]] == [t.__dict__ for t in module.TINY_CANDIDATES[name]]
        assert all(c["ms"] > 0 for c in timed["timed"]) and timed["current_ms"] > 0, name
    assert row["lora_ms"] is None or row["lora_ms"] > 0
    table = (tmp_path / "slot_dropout_tiles.md").read_text()
    assert table.count("| 70x200 |") == 3 + 1  # a row per kernel and the total
    assert "Candidates that failed to launch (resources): 0." in table


@pytest.mark.parametrize("method", ["adamole", "hydralora"])
def test_one_mask_methods_with_the_fused_kernel_equal_their_torch_path_with_its_mask(monkeypatch, method):
    """AdaMoLE (threshold gate: its w^T x comes out of the kernels with the router's logits, one extra row) and
    HydraLoRA (one shared A) draw one mask for all experts: with dropout_kernel=triton their output and every
    gradient (A, B, router, AdaMoLE's threshold, x) equal the torch path given the mask the kernel draws."""
    from conftest import holder

    from goat.adapters import apply_adapter, method_config, moe

    p, n, m = 0.3, 20, 18
    model = holder(n, m, dtype=torch.float32).to(DEVICE)
    apply_adapter(model, method_config(method, r=8, num_experts=4, top_k=4, lora_dropout=p, svd_cache_dir=None))
    layer = model.proj
    torch.manual_seed(1)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.train()
    x = torch.randn(2, 7, n, device=DEVICE, requires_grad=True)
    upstream = torch.randn(2, 7, m, device=DEVICE)
    params = [t for t in layer.parameters() if t.requires_grad] + [x]

    def run(kernel):
        layer.dropout_kernel = kernel
        for t in params:
            t.grad = None
        torch.manual_seed(4)
        out = layer(x)
        (out * upstream).sum().backward()
        return [out.detach()] + [t.grad.clone() for t in params]

    if method == "adamole":  # the fused path reads the threshold's w^T x from the kernels, never runs its Linear
        with monkeypatch.context() as patch:
            patch.setattr(layer.routing.gate.lora_threshold, "forward", lambda x: pytest.fail("threshold ran apart"))
            got = run("triton")
    else:
        got = run("triton")
    torch.manual_seed(4)
    keep = drawn_masks(draw_seed(x.device), 1, 14, n, p)
    scale = 1 / (1 - effective_p(p))
    monkeypatch.setattr(moe, "slot_dropout_down", lambda x2d, A, slots, q: ((x2d * keep[0] * scale) @ A.t())[None])
    want = run("torch")
    names = ["out"] + [name for name, t in layer.named_parameters() if t.requires_grad] + ["x"]
    if method == "adamole":
        assert "routing.gate.lora_threshold.weight" in names
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
