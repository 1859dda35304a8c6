#!/usr/bin/env python3
"""PyTorch eager baseline of the attention-KL on the GPU, materialising both attention maps.

Same problems and JSON fields as `crates/kernels/examples/cuda_bench.rs`:
(batch, heads, seq, dim) = (8,12,512,64), (4,12,4096,64), (1,12,8192,64) in bf16 and f32, all
positions valid, forward ("fwd") and forward + backward to Q_s, K_s ("fwd+bwd"):

    a = Q_t K_t^T * scale_t,  b = Q_s K_s^T * scale_s        (matmuls in the input dtype)
    KL_i = sum_j p_j (log p_j - log q_j),  p = softmax(a), q = softmax(b)   (in f32)
    loss = sum_i KL_i

The scores are upcast to f32 before the (log-)softmaxes, the usual way to write this loss and
the precision the fused kernel computes in. `extra_bytes` is torch.cuda.max_memory_allocated
during one run minus the memory allocated before it (the inputs); an out-of-memory error is
reported as {"oom": true} for that problem. Usage: attention_kl_torch.py [--iters N] [--quick]
"""

import argparse
import json
import math
import statistics
import time

import torch

SHAPES = [(8, 12, 512, 64), (4, 12, 4096, 64), (1, 12, 8192, 64)]
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


def loss_rows(q_t, k_t, q_s, k_s, scale_t, scale_s, key_mask):
    a = torch.matmul(q_t, k_t.transpose(-1, -2)).float() * scale_t
    b = torch.matmul(q_s, k_s.transpose(-1, -2)).float() * scale_s
    neg = torch.finfo(torch.float32).min
    a = a.masked_fill(~key_mask, neg)
    b = b.masked_fill(~key_mask, neg)
    log_p = torch.log_softmax(a, dim=-1)
    log_q = torch.log_softmax(b, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 stays f32, as in the fused kernel
    for b, h, l, d in SHAPES:
        if args.quick and l > 512:
            continue
        for name, dtype in DTYPES.items():
            base = {"impl": "torch-eager", "dtype": name, "b": b, "h": h, "l": l, "d": d}
            gen = torch.Generator(device=dev).manual_seed(0)
            shape = (b, h, l, d)
            try:
                q_t, k_t, q_s, k_s = (
                    torch.randn(shape, generator=gen, device=dev, dtype=dtype) for _ in range(4)
                )
                q_s.requires_grad_(True)
                k_s.requires_grad_(True)
                key_mask = torch.ones((b, 1, 1, l), dtype=torch.bool, device=dev)
            except torch.cuda.OutOfMemoryError:
                for p in ("fwd", "fwd+bwd"):
                    print(json.dumps({**base, "pass": p, "oom": True}), flush=True)
                continue
            scale = 1.0 / math.sqrt(d)
            fwd_flops = 2.0 * b * h * l * l * (2 * d)
            bwd_flops = 2.0 * b * h * l * l * (2 * d) + 4.0 * b * h * l * l * d
            for p in ("fwd", "fwd+bwd"):

                def run():
                    if p == "fwd":
                        with torch.no_grad():
                            rows = loss_rows(q_t, k_t, q_s, k_s, scale, scale, key_mask)
                        torch.cuda.synchronize()
                        del rows
                    else:
                        q_s.grad = None
                        k_s.grad = None
                        rows = loss_rows(q_t, k_t, q_s, k_s, scale, scale, key_mask)
                        rows.sum().backward()
                        torch.cuda.synchronize()
                        del rows

                try:
                    for _ in range(3):
                        run()
                    q_s.grad = None
                    k_s.grad = None
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    before = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    run()
                    extra = torch.cuda.max_memory_allocated() - before
                    times = []
                    for _ in range(args.iters):
                        t0 = time.perf_counter()
                        run()
                        times.append(time.perf_counter() - t0)
                    t = statistics.median(times)
                    flops = fwd_flops if p == "fwd" else fwd_flops + bwd_flops
                    out = {
                        **base,
                        "pass": p,
                        "median_s": t,
                        "extra_bytes": extra,
                        "mem_method": "torch_max_memory_allocated",
                        "tflops": flops / t / 1e12,
                        "iters": args.iters,
                    }
                except torch.cuda.OutOfMemoryError:
                    out = {**base, "pass": p, "oom": True}
                q_s.grad = None
                k_s.grad = None
                torch.cuda.empty_cache()
                print(json.dumps(out), flush=True)
            del q_t, k_t, q_s, k_s
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
