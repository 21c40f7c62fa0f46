"""The routed layers under torch.compile: whole graphs, the same numbers as eager, exact gradients, no host syncs."""

import pytest
import torch
from conftest import holder, tiny_llama

from goat.adapters import apply_adapter, auxiliary_loss, expert_load, method_config
from goat.adapters.moe import MoELoRALinear
from goat.adapters.slot_dropout import _SlotDropoutDown, pack_bits, unpack_bits
from goat.compile import compile_blocks, repeated_blocks

ROUTED = ["goat", "molora", "hydralora", "adamole"]


def block_inputs(model, batch=2, length=16):
    hidden = torch.randn(batch, length, model.config.hidden_size)
    positions = torch.arange(length)[None].expand(batch, -1)
    return hidden, model.model.rotary_emb(hidden, positions)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("method", ROUTED)
def test_adapted_llama_block_is_one_graph_without_breaks(method, training):
    model = tiny_llama(method).train(training)
    hidden, rotary = block_inputs(model)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.model.layers[0])(hidden, position_embeddings=rotary, attention_mask=None)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def train_step(model, ids, mask, seed=7):
    """Loss, summed balance loss and every trainable gradient of one step (same dropout draws for each call)."""
    model.train()
    torch.manual_seed(seed)
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    balance = auxiliary_loss(model)
    (out.loss + balance).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.loss.detach(), balance.detach(), grads


# MoLoRA runs GOAT's code path (the top-k gate, per-slot dropout): in the slow run only
EQUAL_CASES = ["goat", "hydralora", "adamole", pytest.param("molora", marks=pytest.mark.slow)]


@pytest.mark.parametrize("method", EQUAL_CASES)
def test_compiled_blocks_equal_eager_loss_balance_loss_and_gradients(method):
    """fullgraph compile of every block (aot_eager: the traced forward and backward graphs, eager kernels and
    eager RNG, so the dropout masks are the same draws); padding in the batch exercises the token mask."""
    ids = torch.randint(0, 128, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :5] = 0
    eager = train_step(tiny_llama(method), ids, mask)
    compiled_model = tiny_llama(method)
    torch._dynamo.reset()
    assert compile_blocks(compiled_model, "default", fullgraph=True, backend="aot_eager") == 2
    for _ in range(2):  # a second step reuses the graphs
        compiled = train_step(compiled_model, ids, mask)
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(compiled[1], eager[1], rtol=1e-6, atol=1e-7)
        assert compiled[2].keys() == eager[2].keys() and len(eager[2]) > 0
        for name, grad in eager[2].items():
            torch.testing.assert_close(compiled[2][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_inductor_compiled_goat_equals_eager():
    """The real compiler (C++ kernels on the CPU; minutes on 2 cores), its RNG replaced by eager's."""
    import torch._inductor.config as inductor_config

    ids = torch.randint(0, 128, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    eager = train_step(tiny_llama("goat"), ids, mask)
    model = tiny_llama("goat")
    torch._dynamo.reset()
    compile_blocks(model, "default", fullgraph=True)
    with inductor_config.patch(fallback_random=True):
        compiled = train_step(model, ids, mask)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)
    for name, grad in eager[2].items():
        torch.testing.assert_close(compiled[2][name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("n", [1, 7, 8, 20, 64])
def test_packed_masks_round_trip(n):
    keep = torch.rand(2, 5, n) >= 0.5
    packed = pack_bits(keep)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 5, (n + 7) // 8)
    assert torch.equal(unpack_bits(packed, n), keep)


def test_slot_dropout_down_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    A = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(2, 6, 10) >= 0.3
    assert torch.autograd.gradcheck(lambda x, A: _SlotDropoutDown.apply(x, A, keep, 0.3), (x, A))


@pytest.mark.parametrize("method", ROUTED)
def test_routed_layer_passes_gradcheck_with_dropout_in_training(method):
    """The whole layer (router, gate, per-slot dropout, experts, balance loss) against finite differences, fp64."""
    model = holder(12, 10)
    top_k = 4 if method == "hydralora" else 2  # HydraLoRA routes densely over its heads
    cfg = method_config(method, r=8, num_experts=4, top_k=top_k, lora_dropout=0.3, svd_cache_dir=None)
    layer = apply_adapter(model, cfg).train().proj
    assert isinstance(layer, MoELoRALinear)
    names = ["lora_A", "lora_B", "routing.lora_router.weight"]
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)

    def forward(x, *params):
        torch.manual_seed(3)  # the same masks at every evaluation
        out = torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (x,))
        return out, layer.routing.last_balance_loss

    params = [layer.get_parameter(name).detach().clone().requires_grad_() for name in names]
    params[1] = torch.randn_like(params[1], requires_grad=True)  # B = 0 at init would hide the router's gradient
    assert torch.autograd.gradcheck(forward, (x, *params))


def test_repeated_blocks_are_the_decoder_layers():
    model = tiny_llama("goat")
    assert repeated_blocks(model) == list(model.model.layers)


def test_unknown_compile_mode_is_refused():
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_blocks(tiny_llama("lora"), "fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ROUTED)
def test_compiled_training_step_has_no_host_sync(method):
    model = tiny_llama(method).cuda()
    compile_blocks(model, "default", fullgraph=True)
    ids = torch.randint(0, 128, (4, 32), device="cuda")
    mask = torch.ones_like(ids)
    for step in range(3):  # the first step compiles
        torch.cuda.set_sync_debug_mode("error" if step else "default")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(input_ids=ids, attention_mask=mask, labels=ids)
                loss = out.loss + auxiliary_loss(model)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_compiled_run_resumes_exactly_and_logs_its_compilation(tiny_model_dir, keyword_data, tmp_path):
    """trainer.compile with gradient accumulation (16 = 2 x 8), checkpoints every 4 steps, SIGTERM at step 6:
    the resumed run ends with the adapter of the uninterrupted one (bit for bit). Compiled = eager is the test
    above; here the two runs agree to rounding."""
    import json

    from test_checkpoint import final_adapter, run, stop_at

    compiled = ["trainer.compile=default", "trainer.compile_backend=aot_eager", "trainer.pad_to_multiple_of=8"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torch._dynamo.reset()
    assert run(tiny_model_dir, keyword_data, straight, *compiled)["status"] == "finished"
    torch._dynamo.reset()
    assert run(tiny_model_dir, keyword_data, resumed, *compiled, callbacks=[stop_at(6)])["status"] == "interrupted"
    torch._dynamo.reset()
    assert run(tiny_model_dir, keyword_data, resumed, *compiled, "resume=auto")["steps"] == 12
    want, got = final_adapter(straight), final_adapter(resumed)
    assert want.keys() == got.keys() and len(want) > 0
    for key in want:
        assert torch.equal(want[key], got[key]), key
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    first = next(line for line in lines if "compile/first_step_s" in line)
    assert first["compile/first_step_s"] > 0 and first["compile/graphs"] >= 1 and first["compile/graph_breaks"] == 0


@pytest.mark.parametrize("method", ROUTED)
def test_no_grad_forward_keeps_no_tensor_on_the_layers(method):
    """Decoding runs under no_grad: a CUDA-graph replay must not find an earlier replay's output kept by a layer."""
    model = tiny_llama(method).eval()
    ids = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        model(input_ids=ids)
    assert auxiliary_loss(model) is None and not expert_load(model)
    model(input_ids=ids)  # with gradients (an evaluation loss, a training step): recorded
    assert auxiliary_loss(model) is not None and len(expert_load(model)) == 14


def test_compiled_layers_read_one_mask_tensor_per_shape():
    """torch.compile marks a module's tensor attributes static, and CUDA graphs re-record every graph whose static
    input moved; so the token mask the routed layers read must stay the same tensor from batch to batch of a shape
    (with each batch's own mask, every step of the H200 recipe re-recorded all 64 graphs: 23 s a step)."""
    from goat.trainer import forward_right_padded

    model = tiny_llama("goat").train()
    torch._dynamo.reset()
    compile_blocks(model, "default", fullgraph=True, backend="eager")
    context = next(layer for layer in model.modules() if isinstance(layer, MoELoRALinear)).routing.context
    read = []  # the mask each forward's first routed layer finds
    model.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda module, args: read.append(context.token_mask))
    for lengths in ([16, 11], [9, 16], [16, 16]):
        ids = torch.randint(0, 128, (2, 16))
        mask = (torch.arange(16)[None] < torch.tensor(lengths)[:, None]).long()
        forward_right_padded(model, {"input_ids": ids, "attention_mask": mask, "labels": ids}, {"use_cache": False})
        torch.testing.assert_close(read[-1], mask)  # what the layer read is this batch's mask
    assert read[0] is read[1] is read[2]
    assert getattr(read[0], "_dynamo_static_input_type", None) is not None  # why it matters: dynamo made it static
    assert context.token_mask is None  # cleared after the forward


def test_nested_masks_restore_the_outer_content():
    from goat.adapters import moe_layers, token_mask

    model = tiny_llama("goat")
    layers = list(moe_layers(model))  # (name, layer) pairs, as the trainer passes them
    context = layers[0][1].routing.context
    outer, inner = torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long)
    with token_mask(layers, outer):
        kept = context.token_mask
        with token_mask(layers, inner):
            assert context.token_mask is kept and int(kept.sum()) == 0
        assert context.token_mask is kept and torch.equal(kept, outer)
        with token_mask(layers, torch.ones(3, 5, dtype=torch.long)):  # another shape: another tensor
            assert context.token_mask is not kept and context.token_mask.shape == (3, 5)
    assert context.token_mask is None and context.given is None
    for length in range(6, 6 + 2 * context.kept_shapes):  # decoding's growing masks: a bounded set of tensors
        context.token_mask = torch.ones(2, length)
    assert len(context._kept) == context.kept_shapes
    context.token_mask = None
