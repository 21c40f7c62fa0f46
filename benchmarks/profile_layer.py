"""Where the time of one goat layer step goes (GPU): torch.profiler over variants, top ops by CPU and CUDA time.

PYTHONPATH=. python3 benchmarks/profile_layer.py
"""

import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from goat.adapters import apply_adapter, method_config


class Holder(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.proj = lin

    def forward(self, x):
        return self.proj(x)


def step(model, x, grad):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    out.backward(grad)


def timed(model, x, grad, n=30):
    for _ in range(5):
        step(model, x, grad)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step(model, x, grad)
    cpu_issue = (time.perf_counter() - start) / n * 1e3
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e3, cpu_issue


def main():
    n, m, T, r = 4096, 4096, 8192, 32
    lin = nn.Linear(n, m, bias=False).cuda().to(torch.bfloat16)
    model = apply_adapter(Holder(lin), method_config("goat", r=r, lora_alpha=2 * r, svd_cache_dir=None)).cuda()
    model.train()
    x = torch.randn(T, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(T, m, device="cuda", dtype=torch.bfloat16)
    layer = model.proj
    variants = [("per_expert", 0.05, "per_expert"), ("shared", 0.05, "shared"), ("no dropout", 0.0, "shared")]
    for name, dropout, mode in variants:
        layer.dropout, layer.dropout_mode = dropout, mode
        total, issue = timed(model, x, grad)
        print(f"{name:12s} step {total:.3f} ms (CPU issue loop {issue:.3f} ms)")
    layer.dropout, layer.dropout_mode = 0.05, "per_expert"
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step(model, x, grad)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
