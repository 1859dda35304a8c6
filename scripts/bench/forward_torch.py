"""PyTorch eager baseline for `cargo xtask bench forward`: BertModel forward of
all-MiniLM-L6-v2 at batch 32 x seq 128 on CPU, the same synthetic input as the Rust side
(token id (b*131 + s*7) % 30000 + 1000, full attention mask). Prints one JSON line."""
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(model_dir, batch, seq, iters):
    import torch
    from transformers import BertModel

    baseline = rss_mib()  # after importing torch + transformers
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    ids = torch.tensor([[(b * 131 + s * 7) % 30000 + 1000 for s in range(seq)] for b in range(batch)])
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    times = []
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, token_type_ids=types)  # warm-up
        for _ in range(iters):
            t = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            times.append(time.perf_counter() - t)
    print(json.dumps({
        "impl": "pytorch-eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch, "seq": seq,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_rss_mib": rss_mib(),
        "import_baseline_rss_mib": baseline,
    }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
