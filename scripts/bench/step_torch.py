"""PyTorch eager baseline for `cargo xtask bench step`: one one-stage distillation step at the
shape of all-MiniLM-L6-v2 as teacher and a 3-layer student copied from its layers 0, 2, 4, batch
32 x seq 128, on CPU: hidden MSE (embeddings + uniform map, a learned 384->384 projection),
attention KL on the mapped layers (materialising softmax / log_softmax, as eager code does),
logit KD (T = 2, two classes, a seeded head on each), AdamW. Same synthetic token ids as the Rust
side. Prints one JSON line."""
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
    import copy

    import torch
    import torch.nn.functional as F
    from transformers import BertModel

    baseline = rss_mib()
    torch.manual_seed(0)
    teacher = BertModel.from_pretrained(model_dir, add_pooling_layer=True, attn_implementation="eager").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    h = teacher.config.hidden_size
    t_head = torch.nn.Linear(h, 2).requires_grad_(False)
    student = copy.deepcopy(teacher)
    student.encoder.layer = torch.nn.ModuleList([copy.deepcopy(teacher.encoder.layer[i]) for i in (0, 2, 4)])
    student.config.num_hidden_layers = 3
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    s_head = torch.nn.Linear(h, 2)
    proj = torch.nn.Linear(h, h)
    params = list(student.parameters()) + list(s_head.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.tensor([[(b * 131 + s * 7) % 30000 + 1000 for s in range(seq)] for b in range(batch)])
    mask = torch.ones_like(ids)
    pairs = [(1, 2), (2, 4), (3, 6)]  # (student layer, teacher layer), 1-based; 0 = embeddings

    def step():
        with torch.no_grad():
            t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
            zt = t_head(t.pooler_output)
        s = student(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        zs = s_head(s.pooler_output)
        hidden = sum(F.mse_loss(proj(s.hidden_states[a]), t.hidden_states[b]) for a, b in [(0, 0)] + pairs) / 4
        att = 0
        for a, b in pairs:
            pt, ps = t.attentions[b - 1], s.attentions[a - 1]
            att = att + (pt * (torch.log(pt.clamp_min(1e-30)) - torch.log(ps.clamp_min(1e-30)))).sum(-1).mean()
        att = att / len(pairs)
        T = 2.0
        logit = F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), log_target=True, reduction="batchmean") * T * T
        loss = hidden + att + logit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    step()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
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
