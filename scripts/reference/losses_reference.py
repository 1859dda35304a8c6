"""Produces crates/losses/tests/data/losses_reference.json: loss values, gradient norms and the
full gradients themselves, computed by PyTorch (float64, materialising everything) for fixed,
formula-generated inputs. The Rust test (crates/losses/tests/reference.rs) rebuilds the same
inputs from the same formula and compares every gradient element-wise.

    python3 scripts/reference/losses_reference.py crates/losses/tests/data/losses_reference.json

Input formula: tensor number k of shape S has, at flat index i, value
    scale * sin(0.37 * i + 1.3 * k)

Gradients ("grad_*") are flattened in row-major order of the input's shape, as plain lists of
floats (Python's shortest round-trip repr, so nothing is lost). The output is deterministic:
one thread, deterministic algorithms, insertion-ordered keys, fixed formatting; running the
script again with the same torch version rewrites the same bytes.
"""
import json
import math
import re
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

B, L, HS, HT, HEADS, DS, DT, C = 2, 5, 6, 8, 2, 3, 4, 4
MASK = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def formula(shape, k, scale=1.0, grad=False):
    n = math.prod(shape)
    t = torch.tensor([scale * math.sin(0.37 * i + 1.3 * k) for i in range(n)]).reshape(shape)
    return t.requires_grad_(grad)


def flat(t):
    """A gradient as a flat row-major list of floats."""
    return t.detach().reshape(-1).tolist()


def masked_mean_rows(x, mask):  # x [B, L] or [B, H, L]
    if x.dim() == 3:
        m = mask[:, None, :].expand_as(x)
    else:
        m = mask
    return (x * m).sum() / m.sum().clamp(min=1)


def attention_kl(qt, kt, qs, ks, mask):
    st = qt @ kt.transpose(-1, -2) / math.sqrt(qt.shape[-1])
    ss = qs @ ks.transpose(-1, -2) / math.sqrt(qs.shape[-1])
    keymask = mask[:, None, None, :].bool()
    st = st.masked_fill(~keymask, float("-inf"))
    ss = ss.masked_fill(~keymask, float("-inf"))
    lt, ls = F.log_softmax(st, -1), F.log_softmax(ss, -1)
    pt = lt.exp()
    kl = (pt * (lt - ls)).masked_fill(~keymask, 0.0).sum(-1)  # [B, H, L]
    return masked_mean_rows(kl, mask)


def split(x, r):  # [B, L, H] -> [B, R, L, H/R]
    b, l, h = x.shape
    return x.reshape(b, l, r, h // r).transpose(1, 2)


def one_line(match):
    """A JSON list of numbers on one line (the gradients, the mask rows): keeps the file short."""
    items = [x.strip() for x in match.group(0)[1:-1].split(",")]
    return "[" + ", ".join(x for x in items if x) + "]"


def main(out):
    mask = torch.tensor(MASK, dtype=torch.float64)
    results = {}

    hs, ht = formula((B, L, HS), 0, grad=True), formula((B, L, HT), 1)
    w, bias = formula((HT, HS), 2, 0.3, grad=True), formula((HT,), 3, 0.1, grad=True)
    p = hs @ w.T + bias
    mse = (((p - ht) ** 2).sum(-1) * mask).sum() / (mask.sum() * HT)
    mse.backward()
    results["hidden_mse"] = {"value": mse.item(), "grad_norm_student": hs.grad.norm().item(),
                             "grad_norm_projection": w.grad.norm().item(),
                             "grad_student": flat(hs.grad), "grad_projection": flat(w.grad),
                             "grad_projection_bias": flat(bias.grad)}

    hs2, ht2 = formula((B, L, HT), 4, grad=True), formula((B, L, HT), 1)
    cos = F.cosine_similarity(hs2, ht2, dim=-1, eps=1e-8)
    loss = ((1 - cos) * mask).sum() / mask.sum()
    loss.backward()
    results["hidden_cosine"] = {"value": loss.item(), "grad_norm_student": hs2.grad.norm().item(),
                                "grad_student": flat(hs2.grad)}

    qs, ks = formula((B, HEADS, L, DS), 5, grad=True), formula((B, HEADS, L, DS), 6, grad=True)
    qt, kt = formula((B, HEADS, L, DT), 7, 1.5), formula((B, HEADS, L, DT), 8, 1.5)
    kl = attention_kl(qt, kt, qs, ks, mask)
    kl.backward()
    results["attention_kl"] = {"value": kl.item(), "grad_norm_q": qs.grad.norm().item(), "grad_norm_k": ks.grad.norm().item(),
                               "grad_q": flat(qs.grad), "grad_k": flat(ks.grad)}

    qs.grad, ks.grad = None, None
    ss = qs @ ks.transpose(-1, -2) / math.sqrt(DS)
    st = qt @ kt.transpose(-1, -2) / math.sqrt(DT)
    pair = (mask[:, :, None] * mask[:, None, :])[:, None]
    smse = (((ss - st) ** 2) * pair).sum() / (pair.sum() * HEADS)
    smse.backward()
    results["score_mse"] = {"value": smse.item(), "grad_norm_q": qs.grad.norm().item(), "grad_norm_k": ks.grad.norm().item(),
                            "grad_q": flat(qs.grad), "grad_k": flat(ks.grad)}

    xs, xt = formula((B, L, HS), 9, grad=True), formula((B, L, HT), 10, 1.5)
    rel = attention_kl(split(xt, 2), split(xt, 2), split(xs, 2), split(xs, 2), mask)
    rel.backward()
    results["relation_kl"] = {"value": rel.item(), "grad_norm_student": xs.grad.norm().item(),
                              "grad_student": flat(xs.grad)}

    def logit_case(name, fn):
        zs, zt = formula((3, C), 11, 2.0, grad=True), formula((3, C), 12, 2.5)
        v = fn(zs, zt)
        v.backward()
        results[name] = {"value": v.item(), "grad_norm_student": zs.grad.norm().item(),
                         "grad_student": flat(zs.grad)}

    T = 2.0

    def kd(zs, zt):
        return F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), log_target=True, reduction="batchmean") * T * T

    def rkd(zs, zt):
        return F.kl_div(F.log_softmax(zt / T, -1), F.log_softmax(zs / T, -1), log_target=True, reduction="batchmean") * T * T

    def jsd(zs, zt, beta=0.3):
        ps, pt = F.softmax(zs / T, -1), F.softmax(zt / T, -1)
        m = beta * pt + (1 - beta) * ps
        klt = (pt * (pt.log() - m.log())).sum(-1)
        kls = (ps * (ps.log() - m.log())).sum(-1)
        return (beta * klt + (1 - beta) * kls).mean() * T * T

    logit_case("logit_kl_t2", kd)
    logit_case("logit_reverse_kl_t2", rkd)
    logit_case("logit_jsd_beta0.3_t2", jsd)
    logit_case("logit_mse", lambda zs, zt: ((zs - zt) ** 2).mean())
    labels = torch.tensor([1, 3, 0])
    logit_case("hard_ce", lambda zs, zt: F.cross_entropy(zs, labels))

    doc = {"produced_by": f"torch {torch.__version__} (float64)", "temperature": T,
           "labels": labels.tolist(), "mask": MASK, "results": results}
    text = json.dumps(doc, indent=1, allow_nan=False)
    text = re.sub(r"\[[-+0-9.eE,\s]*\]", one_line, text)
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
