"""PyTorch eager baseline for `cargo xtask bench attention-kl`: the attention KL between teacher
and student attention distributions, computed by materialising softmax / log_softmax, forward +
backward (grads to Q_s, K_s), f32 on CPU. Same loss as the Rust bench: sum of per-row KLs
weighted by random row weights; the mask pads the last eighth of every other batch item.

    python3 attention_kl_torch_cpu.py BATCH HEADS SEQ DIM ITERS

Prints one JSON line; `extra_mib` is the peak RSS growth over the inputs, warm-up included (Linux clear_refs)."""
import json
import math
import os
import statistics
import sys
import time


def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(b, h, l, d, iters):
    import torch

    torch.manual_seed(0)
    qt, kt = torch.randn(b, h, l, d), torch.randn(b, h, l, d)
    qs = torch.randn(b, h, l, d, requires_grad=True)
    ks = torch.randn(b, h, l, d, requires_grad=True)
    mask = torch.ones(b, l)
    mask[1::2, l - l // 8:] = 0
    w = torch.rand(b, h, l)
    keymask = mask[:, None, None, :].bool()
    scale = 1.0 / math.sqrt(d)

    def step():
        qs.grad, ks.grad = None, None
        st = (qt @ kt.transpose(-1, -2) * scale).masked_fill(~keymask, float("-inf"))
        ss = (qs @ ks.transpose(-1, -2) * scale).masked_fill(~keymask, float("-inf"))
        lt, ls = torch.log_softmax(st, -1), torch.log_softmax(ss, -1)
        kl = (lt.exp() * (lt - ls)).masked_fill(~keymask, 0.0).sum(-1) * mask[:, None, :]
        loss = (kl * w).sum()
        loss.backward()
        return loss.item()

    # Baseline before the first step: memory a warm-up leaves cached counts as extra.
    base = rss("VmRSS")
    can_reset = reset_peak()
    step()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = rss("VmHWM")
    print(json.dumps({
        "batch": b, "heads": h, "seq": l, "dim": d, "impl": "pytorch-eager",
        "threads": torch.get_num_threads(),
        "median_s": statistics.median(times),
        "peak_rss_mib": peak,
        "extra_mib": peak - base if can_reset else None,
    }))


if __name__ == "__main__":
    main(*(int(x) for x in sys.argv[1:6]))
