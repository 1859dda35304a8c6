"""Loads a model folder saved by distillery with Python `transformers` and compares its outputs
with the ones distillery computed (expected.json in the same folder). Run by
`cargo xtask export-check`; needs torch + transformers. Exit status 0 on agreement."""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402


def causal_lm(folder, exp):
    """A decoder student: logits at every token of a padded batch, positions counting tokens."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor(exp["input_ids"])
    mask = torch.tensor(exp["attention_mask"])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    want = torch.tensor(exp["logits"])
    valid = mask.bool()
    worst = (logits[valid] - want[valid]).abs().max().item()
    print(json.dumps({"max_abs_diff_logits": worst, "architecture": model.config.architectures}))
    sys.exit(0 if worst <= 1e-4 else 1)


def main(folder):
    exp = json.load(open(os.path.join(folder, "expected.json")))
    if exp.get("kind") == "causal-lm":
        causal_lm(folder, exp)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}, model.config.id2label
    batch = tok(exp["texts"], padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    worst_logit = (out.logits - torch.tensor(exp["logits"])).abs().max().item()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1)
    worst_pooled = (pooled - torch.tensor(exp["mean_pooled"])).abs().max().item()
    print(json.dumps({"max_abs_diff_logits": worst_logit, "max_abs_diff_mean_pooled": worst_pooled,
                      "architecture": model.config.architectures}))
    sys.exit(0 if max(worst_logit, worst_pooled) <= 1e-4 else 1)


if __name__ == "__main__":
    main(sys.argv[1])
