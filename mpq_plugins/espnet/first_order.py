"""What a gradient-based precision search sees at its start, against what quantization does.

A one-stage or supernet search moves layer l's logit of candidate b by (to first order) the loss change
<Q_b(W) - W, dL/dW> that candidate would bring. For each layer asked and each candidate, on held-out
utterances of the float model: that first-order prediction, the part of it along W itself (what a
candidate's change of the weight's norm alone predicts: low-bit quantizers with MSE steps shrink a
weight), and the actual change of the loss with W replaced by Q_b(W) alone. The loss is the model's
own training loss (ESPnet's CTC/attention mix) in eval mode, or the KL of the float model's posteriors
(CTC and teacher-forced decoder) to the model's, the loss a search on the teacher's KL learns from; at
the float point that KL and its gradient are zero, so the KL is asked of the model with the other
layers quantized as a system chose (`rest`: {layer: bits}), the point a search reaches.
"""
import torch

from mpq_plugins.espnet.sensitivity import held_out_batches, posteriors
from mpq_plugins.quant.numerics import fake_quant, mse_step
from mpq_plugins.quant.sensitivity import outputs_kl

LOSSES = ("espnet", "teacher_kl")


def mean_loss(model, batches):
    n = sum(b[0].size(0) for b in batches)
    return sum(model(*b)[0] * b[0].size(0) for b in batches) / n


def mean_teacher_kl(model, batches, teacher):
    """The KL of the teacher's posteriors to the model's (outputs_kl: per output position, CTC and
    decoder summed), averaged over the batches."""
    return sum(outputs_kl(t, posteriors(model, b)) for t, b in zip(teacher, batches)) / len(batches)


def weight_module(model, name, what):
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{what}: {name} is not a module of the model") from None
    if not isinstance(getattr(mod, "weight", None), torch.Tensor):
        raise ValueError(f"{what}: {name} has no weight")
    return mod


def first_order_check(model, conf, data, layers, candidates, n_utts=32, per_channel=True, loss="espnet", rest=None):
    """{"loss": float loss, "loss_kind", "rest", "layers": {layer: {"shape", "cos_w_grad", "candidates": {bits:
    {"norm_ratio", "first_order", "along_w", "actual"}}}}}. loss: "espnet" or "teacher_kl"; rest: {layer: bits}
    of other layers quantized (MSE steps) before anything is measured (the teacher stays the float model)."""
    if loss not in LOSSES:
        raise ValueError(f"--loss: {loss} is not one of {', '.join(LOSSES)}")
    batches = held_out_batches(conf, data, n_utts)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mods = {name: weight_module(model, name, "--layers") for name in layers}
    rest = {n: b for n, b in (rest or {}).items() if n not in mods}
    rest_mods = {n: weight_module(model, n, "--rest") for n in rest}
    with torch.no_grad():
        teacher = [posteriors(model, b) for b in batches] if loss == "teacher_kl" else None
        for n, m in rest_mods.items():
            m.weight.copy_(fake_quant(m.weight, mse_step(m.weight, rest[n], per_channel), rest[n]))
    measure = (lambda: mean_teacher_kl(model, batches, teacher)) if teacher else (lambda: mean_loss(model, batches))
    for m in mods.values():
        m.weight.requires_grad_(True)
    base = measure()
    grads = torch.autograd.grad(base, [m.weight for m in mods.values()], allow_unused=True)
    grads = [torch.zeros_like(m.weight) if g is None else g for m, g in zip(mods.values(), grads)]
    out = {"loss": float(base), "loss_kind": loss, "rest": rest,
           "utterances": sum(b[0].size(0) for b in batches), "layers": {}}
    for (name, mod), g in zip(mods.items(), grads):
        w = mod.weight.detach().clone()
        rows = {}
        for b in candidates:
            q = fake_quant(w, mse_step(w, b, per_channel), b).detach()
            with torch.no_grad():
                mod.weight.copy_(q)
                actual = float(measure()) - float(base)
                mod.weight.copy_(w)
            rows[b] = {"norm_ratio": float(q.norm() / w.norm()), "first_order": float(((q - w) * g).sum()),
                       "along_w": float((w * g).sum() * ((q * w).sum() / (w * w).sum() - 1)), "actual": actual}
        cos = float((w * g).sum() / (w.norm() * g.norm())) if float(g.norm()) > 0 else 0.0   # no gradient: 0
        out["layers"][name] = {"shape": list(w.shape), "cos_w_grad": cos,
                               "candidates": rows}
    return out


def markdown(result, title):
    what = {"espnet": "ESPnet's loss", "teacher_kl": "The KL of the float model's posteriors to the model's"}
    rest = result.get("rest") or {}
    where = (f"with {len(rest)} other layers quantized at a system's bits ({sum(rest.values()) / len(rest):.2f} "
             "bits a layer on average, MSE steps)" if rest else "of the float model")
    lines = [f"# {title}", "",
             f"{what[result.get('loss_kind', 'espnet')]} {where}: {result['loss']:.4f} on {result['utterances']} "
             "held-out utterances. Per layer: the cosine of W with dL/dW; per candidate: |Q(W)|/|W|, the "
             "first-order loss change <Q(W) - W, dL/dW> "
             "(what the search's logit gradient sees), its part along W (the norm change alone) and the "
             "actual loss change with Q(W) in place of W.", "",
             "|layer|cos(W, dL/dW)|bits|Q/W norm|first-order|along W|actual|", "|---|---|---|---|---|---|---|"]
    for name, r in result["layers"].items():
        for i, (b, c) in enumerate(r["candidates"].items()):
            head = f"|{name} {tuple(r['shape'])}|{r['cos_w_grad']:+.3f}" if i == 0 else "||"
            lines.append(f"{head}|{b}|{c['norm_ratio']:.3f}|{c['first_order']:+.4f}|{c['along_w']:+.4f}|"
                         f"{c['actual']:+.4f}|")
    return lines + [""]
