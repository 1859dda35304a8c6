"""PyTorch eager baseline for `cargo xtask bench lm-forward`: SmolLM2-135M-Instruct (the Q4_1
GGUF fixture, dequantised to f32 by transformers) on CPU: the forward of batch 8 x 256 tokens,
and greedy generation of 128 tokens at batch 1 on transformers' KV cache. The same synthetic
ids as the Rust side (token (b*131 + s*7) % 40000 + 100). Prints one JSON line."""
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(gguf, batch, seq, new_tokens, iters):
    import torch
    from transformers import AutoModelForCausalLM

    baseline = rss_mib()  # after importing torch + transformers
    folder, name = os.path.split(gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ids = torch.tensor([[(b * 131 + s * 7) % 40000 + 100 for s in range(seq)] for b in range(batch)])
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)  # warm-up
        for _ in range(iters):
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            times.append(time.perf_counter() - t)
        prompt = ids[:1, :16]
        t = time.perf_counter()
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        gen_s = time.perf_counter() - t
    print(json.dumps({
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch, "seq": seq,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "generate_tokens": out.shape[1] - prompt.shape[1],
        "generate_tokens_per_s": (out.shape[1] - prompt.shape[1]) / gen_s,
        "peak_rss_mib": rss_mib(),
        "import_baseline_rss_mib": baseline,
    }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
