"""Produces crates/stages/tests/data/adamw_reference.json: the parameter trajectory, final
moments and gradient norms of PyTorch's own `torch.optim.AdamW` (float64) over six steps of a
VARYING gradient sequence, against which the unit test `adamw_matches_torch_on_a_varying_gradient`
in crates/stages/src/optim.rs checks both of our update paths (fused f32 CPU, tensor ops f64).

    python3 scripts/reference/adamw_reference.py crates/stages/tests/data/adamw_reference.json

Why varying: with a constant gradient the bias-corrected moments are g and g² whatever β1 and
β2 are, so a wrong β2 or a misplaced ε goes unnoticed. Here every element changes value and
sign from step to step, the hyper-parameters are all non-default (β1 = 0.8, β2 = 0.95,
ε = 1e-3, weight decay 0.1) and the learning rate changes every step like a schedule, and
some gradient elements are of the order of ε so that where ε sits matters.

Conventions of ours that torch does not have, modelled here:
- Hugging Face's no-decay rule: parameters whose name ends in `.bias` (or names a layer norm)
  get no weight decay. Modelled as a second parameter group with weight_decay = 0.
- Global-norm clipping before the update (HF's `clip_grad_norm_`, coefficient
  max_norm / (norm + 1e-6)): the "clip" case applies `torch.nn.utils.clip_grad_norm_` to all
  parameters before each `step()`. The threshold is chosen so that some steps clip and some
  do not, and no step's norm is near it (where torch clamps the coefficient to 1 and we skip
  clipping, the two only differ for norms within 1e-6 below the threshold).

Inputs (initial values and gradients) are rounded to float32 first, so that the f32 path of
the Rust test starts from exactly the values torch starts from. Parameter p (0: weight [2, 3],
1: bias [3]) at flat index i:
    init        = round_f32(0.5 * cos(0.6 * i + 1.1 * p))
    grad step k = round_f32(SCALE[(i + p) % 6] * sin(1.1 * i + 2.3 * k + 0.7 * p))

Deterministic: one thread, the plain for-loop AdamW (foreach=False, fused=False), fixed key
order and formatting; running it again with the same torch version rewrites the same bytes.
"""
import json
import math
import re
import sys

import torch

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

BETAS = (0.8, 0.95)
EPS = 1e-3
WEIGHT_DECAY = 0.1
LRS = [0.1, 0.05, 0.08, 0.02, 0.06, 0.04]
# Per-element gradient scales: some near ε (0.002, 0.004), some far above it.
SCALE = [1.0, 0.004, 0.3, 0.02, 0.002, 1.5]
PARAMS = [("encoder.dense.weight", [2, 3]), ("encoder.dense.bias", [3])]
STEPS = len(LRS)


def f32(values):
    return torch.tensor(values, dtype=torch.float32).to(torch.float64)


def init(p, shape):
    n = math.prod(shape)
    return f32([0.5 * math.cos(0.6 * i + 1.1 * p) for i in range(n)]).reshape(shape)


def grad(p, shape, k):
    n = math.prod(shape)
    return f32([SCALE[(i + p) % len(SCALE)] * math.sin(1.1 * i + 2.3 * k + 0.7 * p)
                for i in range(n)]).reshape(shape)


def flat(t):
    return t.detach().reshape(-1).tolist()


def grad_norm(k):
    return torch.cat([grad(p, s, k).reshape(-1) for p, (_, s) in enumerate(PARAMS)]).norm().item()


def run(max_grad_norm):
    params = [init(p, s).clone().requires_grad_(True) for p, (_, s) in enumerate(PARAMS)]
    groups = [{"params": [t], "weight_decay": 0.0 if name.endswith(".bias") else WEIGHT_DECAY}
              for (name, _), t in zip(PARAMS, params)]
    opt = torch.optim.AdamW(groups, lr=LRS[0], betas=BETAS, eps=EPS, amsgrad=False,
                            maximize=False, foreach=False, fused=False)
    after = [[] for _ in PARAMS]
    clipped = []
    for k, lr in enumerate(LRS):
        for p, ((_, s), t) in enumerate(zip(PARAMS, params)):
            t.grad = grad(p, s, k)
        if max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
            clipped.append(norm > max_grad_norm)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        for p, t in enumerate(params):
            after[p].append(flat(t))
    out = {"max_grad_norm": max_grad_norm, "params": {}}
    if clipped:
        out["clipped"] = clipped
    for p, ((name, _), t) in enumerate(zip(PARAMS, params)):
        state = opt.state[t]
        assert int(state["step"]) == STEPS
        out["params"][name] = {"after_step": after[p], "exp_avg": flat(state["exp_avg"]),
                               "exp_avg_sq": flat(state["exp_avg_sq"])}
    return out


def one_line(match):
    """A JSON list of numbers or booleans on one line: keeps the file short."""
    items = [x.strip() for x in match.group(0)[1:-1].split(",")]
    return "[" + ", ".join(x for x in items if x) + "]"


def main(out):
    norms = [grad_norm(k) for k in range(STEPS)]
    # Clip at the median norm: half the steps clip. No norm may sit near the threshold.
    threshold = 1.25
    assert any(n > threshold for n in norms) and any(n < threshold for n in norms), norms
    assert all(abs(n - threshold) > 1e-2 for n in norms), norms
    doc = {
        "produced_by": f"torch {torch.__version__} torch.optim.AdamW (float64)",
        "beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS, "weight_decay": WEIGHT_DECAY,
        "lr": LRS,
        "params": [{"name": name, "shape": shape, "init": flat(init(p, shape)),
                    "grads": [flat(grad(p, shape, k)) for k in range(STEPS)]}
                   for p, (name, shape) in enumerate(PARAMS)],
        "grad_norm": norms,
        "cases": {"no_clip": run(0.0), "clip": run(threshold)},
    }
    text = json.dumps(doc, indent=1, allow_nan=False)
    text = re.sub(r"\[(?:[-+0-9.eE,\s]|true|false)*\]", one_line, text)
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
