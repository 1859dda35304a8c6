"""Produces the decoder-only (LLaMA family) reference for crates/models/tests/llama.rs: two tiny
random models created and saved by `transformers`, and their logits and last hidden states on
a padded batch, every layer's attention probabilities, each row's mean next-token negative log-likelihood,
and the greedy
8-token continuation of one prompt.

    python3 scripts/reference/llama_reference.py crates/models/tests/data/llama

- `llama/`: LlamaForCausalLM with grouped-query attention (4 query heads, 2 key/value heads),
  untied input and output embeddings, and Llama-3 `rope_scaling` chosen so that the rotary
  frequencies fall in all three of its bands (kept, interpolated, divided by the factor). Its
  config.json is rewritten in the Hugging Face hub's classic form (`rope_theta` +
  `rope_scaling`), which transformers still reads, so that form is tested too.
- `qwen2/`: Qwen2ForCausalLM with q/k/v biases, GQA and tied embeddings; config.json as
  transformers 5 writes it (`rope_parameters`).

Weights are redrawn at a scale where every part matters (the default init of 0.02 gives
logits near zero that a wrong RoPE or mask would barely move). The batch has a right-padded,
a left-padded and an unpadded row; position ids are `cumsum(mask) - 1` (clamped at 0), as
generation computes them, so left padding gives the same values per token as no padding.
Only positions whose token is not padding are compared.

Deterministic: fixed seed, one thread; the outputs are small (~100 KB per model).
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

torch.set_num_threads(1)

IDS = [
    [5, 17, 33, 2, 71, 9, 44, 0, 0],
    [0, 0, 0, 12, 13, 90, 4, 61, 8],
    [3, 88, 27, 27, 56, 1, 19, 40, 77],
]
PROMPT = [5, 17, 33, 2, 71]
MASK = [
    [1, 1, 1, 1, 1, 1, 1, 0, 0],
    [0, 0, 0, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1, 1],
]


def redraw(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def reference(dir):
    model = AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = torch.tensor(IDS)
    mask = torch.tensor(MASK)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                    output_attentions=True)
    logits = out.logits
    last = out.hidden_states[-1]
    rows = []
    for b in range(len(IDS)):
        for i in range(len(IDS[b])):
            if MASK[b][i]:
                rows.append({
                    "batch": b,
                    "position": i,
                    "logits": [round(float(x), 7) for x in logits[b, i]],
                    "last_hidden": [round(float(x), 7) for x in last[b, i]],
                    "hidden_sum": round(float(sum(float(h[b, i].sum()) for h in out.hidden_states)), 6),
                })
    # Per row: the mean next-token negative log-likelihood (nats) over the tokens whose
    # predecessor is a token too, i.e. what `distillery perplexity` reports per line.
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    pairs = (mask[:, 1:] * mask[:, :-1]).double()
    nll = (-(picked * pairs).sum(-1) / pairs.sum(-1)).tolist()
    # Greedy continuation of PROMPT by 8 tokens, by definition: the argmax of a full forward
    # over everything so far, token after token (no stopping).
    seq = list(PROMPT)
    with torch.no_grad():
        for _ in range(8):
            z = model(input_ids=torch.tensor([seq])).logits[0, -1]
            seq.append(int(z.argmax()))
    # Attention probabilities of every layer and head, for the query rows that are tokens
    # ([layer][batch][head][query] -> keys; padding queries are left out as null).
    attentions = [[[[[round(float(x), 7) for x in a[b, h, i]] if MASK[b][i] else None
                     for i in range(len(IDS[b]))]
                    for h in range(a.shape[1])]
                   for b in range(len(IDS))]
                  for a in out.attentions]
    return {"input_ids": IDS, "attention_mask": MASK, "rows": rows, "attentions": attentions,
            "nll": [round(x, 9) for x in nll],
            "prompt": PROMPT, "greedy": seq[len(PROMPT):]}


def main(out):
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        tie_word_embeddings=False))
    redraw(llama, 1)
    d = os.path.join(out, "llama")
    llama.save_pretrained(d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2, sort_keys=True)

    qwen = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True))
    redraw(qwen, 2)
    qwen.save_pretrained(os.path.join(out, "qwen2"))

    for name in ["llama", "qwen2"]:
        d = os.path.join(out, name)
        for extra in ["generation_config.json"]:
            p = os.path.join(d, extra)
            if os.path.exists(p):
                os.remove(p)
        ref = reference(d)
        with open(os.path.join(d, "reference.json"), "w") as f:
            json.dump(ref, f, separators=(",", ":"))
            f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
