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
    # 1e-4 absolute for logits of order one; relative to the largest logit beyond that (a real
    # model's logits reach ~100, where one f32 ulp is already 7.6e-6).
    scale = max(1.0, want[valid].abs().max().item())
    ok = worst <= 1e-4 * scale
    report = {"max_abs_diff_logits": worst, "largest_logit": scale,
              "architecture": model.config.architectures}
    if "texts" in exp:
        # The saved tokenizer.json: transformers' ids for the texts are the ones distillery
        # used (right-padded rows; padding left out), and its chat template gives our prompt.
        tok = AutoTokenizer.from_pretrained(folder)
        same_ids = True
        for text, row, m in zip(exp["texts"], exp["input_ids"], exp["attention_mask"]):
            ours = [t for t, k in zip(row, m) if k]
            theirs = tok(text)["input_ids"]
            same_ids &= ours == theirs
            if ours != theirs:
                print("token ids differ for", repr(text), ours, theirs)
        prompt = tok.apply_chat_template([{"role": "user", "content": exp["chat"]["user"]}],
                                         tokenize=False, add_generation_prompt=True)
        ok &= same_ids and prompt == exp["chat"]["prompt"]
        report["tokenizer_ids_equal"] = same_ids
        report["chat_prompt_equal"] = prompt == exp["chat"]["prompt"]
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


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
