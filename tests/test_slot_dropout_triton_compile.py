"""The fused dropout kernels compile for real GPUs, checked on the CPU: Triton's interpreter (the other test file)
runs Python, so it accepts code the GPU compiler refuses (a kernel reading a plain global, as the first H200 run
found). Here triton.compile lowers each kernel to a cubin for Hopper (sm_90) and Ampere (sm_80), no GPU needed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (make test-triton installs it for the CPU)")

COMPILE = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from goat.adapters import slot_dropout_triton as k

common = {"seed_ptr": "*i64", "tokens": "i32", "n": "i32", "r": "i32", "e": "i32", "threshold": "i32",
          "scale": "fp32"}
kernels = {  # kernel -> (its arguments' types, the tiles it launches with)
    k._down_kernel: {"x_ptr": "*D", "a_ptr": "*D", "w_ptr": "*D", "out_ptr": "*D", "logit_ptr": "*fp32", **common,
                     "cols_per_split": "i32", "S": "constexpr"},
    k._grad_x_kernel: {"g_ptr": "*D", "gl_ptr": "*fp32", "a_ptr": "*D", "w_ptr": "*D", "gx_ptr": "*D", **common,
                       "S": "constexpr"},
    k._grad_a_kernel: {"g_ptr": "*D", "gl_ptr": "*fp32", "x_ptr": "*D", "part_ptr": "*fp32", "w_part_ptr": "*fp32",
                       **common, "rows_per_split": "i32", "S": "constexpr"},
}
tiles = {k._down_kernel: k.TILES["down"], k._grad_x_kernel: k.TILES["grad_x"], k._grad_a_kernel: k.TILES["grad_a"]}
for arch in (90, 80):
    for kernel, signature in kernels.items():
        for dtype in ("bf16", "fp16", "fp32"):
            sig = {name: kind.replace("D", dtype) for name, kind in signature.items()}
            t = tiles[kernel]
            values = {"S": 3, "BT": t.rows, "BN": t.cols, "BR": k.rank_tile(32), "BE": k.rank_tile(8),
                      "PRECISION": "ieee" if dtype == "fp32" else "tf32"}
            sig.update({name: "constexpr" for name in values})
            index = kernel.arg_names.index
            constexprs = {(index(name),): value for name, value in values.items() if name in kernel.arg_names}
            sig = {name: sig[name] for name in kernel.arg_names}
            compiled = triton.compile(ASTSource(kernel, sig, constexprs), target=GPUTarget("cuda", arch, 32),
                                      options={"num_warps": t.warps, "num_stages": t.stages})
            assert len(compiled.asm["cubin"]) > 1000
            print(arch, kernel.__name__, dtype, "ok")
"""


def test_the_kernels_compile_to_cubins_for_sm90_and_sm80():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600)
    if done.returncode and "backend" in done.stderr and "cuda" not in done.stderr:
        pytest.skip(f"this triton has no CUDA backend: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" ok") == 2 * 3 * 3
