"""Produces the SmolLM2-135M-Instruct reference for crates/models/tests/smollm2.rs: Python
transformers loads the Q4_1 GGUF fixture (dequantising every tensor to f32) and its tokenizer,
and records, for six prompts (short, long, non-ASCII, code, chat-templated, over 200 tokens):

- the token ids transformers' GGUF-rebuilt tokenizer gives;
- per position: the log-sum-exp of the logits (a check on the whole 49,152-wide row), the
  top-5 token ids and logits, and the logits of 48 fixed token ids spread over the vocabulary;
- the mean next-token negative log-likelihood (nats) over the predicted tokens;
- the greedy 32-token continuation, by definition: the argmax of a full forward over everything
  so far, token after token (no stopping at EOS), with the gap between the two largest logits
  at each step (how much rounding a step could absorb).

    bash scripts/fetch-fixtures.sh
    python3 scripts/reference/smollm2_reference.py fixtures/smollm2-135m-instruct \
        crates/models/tests/data/smollm2/reference.json

Needs `pip install torch transformers gguf accelerate`. Deterministic (one thread, f32).
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROBES = list(range(17, 49152, 1024))
LONG = (
    "Knowledge distillation trains a small student network to imitate a larger teacher. "
    "Instead of learning only from hard labels, the student matches the teacher's full "
    "distribution over the vocabulary, which carries information about which wrong answers "
    "are nearly right. Intermediate layers can be matched too: hidden states through a learned "
    "projection, attention maps head by head, and the relations between value vectors. "
)


def prompts(tok):
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the boiling point of water at sea level?"}],
        tokenize=False, add_generation_prompt=True)
    return [
        ("short", "The capital of France is"),
        ("long", LONG.strip()),
        ("non_ascii", "Größere Modelle lehren kleinere — 東京は日本の首都です。 Ça marche très bien ✓ 1969"),
        ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +"),
        ("chat", chat),
        ("over_200", (LONG * 3).strip() + " In short,"),
    ]


def main(folder, out):
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=FILE, dtype=torch.float32).eval()
    cases = []
    for name, text in prompts(tok):
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        lse = torch.logsumexp(logits, -1)
        top = torch.topk(logits, 5, -1)
        logp = logits[:-1] - lse[:-1, None]
        nll = float(-logp.gather(-1, torch.tensor(ids[1:])[:, None]).mean())
        seq, gaps = list(ids), []
        with torch.no_grad():
            for _ in range(32):
                z = model(input_ids=torch.tensor([seq])).logits[0, -1]
                v = torch.topk(z, 2).values
                gaps.append(round(float(v[0] - v[1]), 6))
                seq.append(int(z.argmax()))
        cases.append({
            "name": name,
            "text": text,
            "ids": ids,
            "lse": [round(float(x), 6) for x in lse],
            "top_ids": top.indices.tolist(),
            "top_logits": [[round(float(x), 6) for x in r] for r in top.values],
            "probe_logits": [[round(float(x), 6) for x in logits[i, PROBES]] for i in range(len(ids))],
            "nll": round(nll, 9),
            "greedy": seq[len(ids):],
            "greedy_gaps": gaps,
        })
        print(name, len(ids), "tokens, nll", round(nll, 4), "min greedy gap", min(gaps), file=sys.stderr)
    ref = {"file": FILE, "probes": PROBES, "chat_template": tok.chat_template,
           "bos": tok.bos_token, "eos": tok.eos_token, "cases": cases}
    with open(out, "w") as f:
        json.dump(ref, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
