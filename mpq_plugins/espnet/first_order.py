"""What a gradient-based precision search sees at its start, against what quantization does.

A one-stage or supernet search moves layer l's logit of candidate b by (to first order) the loss change
<Q_b(W) - W, dL/dW> that candidate would bring. For each layer asked and each candidate, on held-out
utterances of the float model: that first-order prediction, the part of it along W itself (what a
candidate's change of the weight's norm alone predicts: low-bit quantizers with MSE steps shrink a
weight), and the actual change of the loss with W replaced by Q_b(W) alone. The loss is the model's
own training loss (ESPnet's CTC/attention mix) in eval mode.
"""
import torch

from mpq_plugins.espnet.sensitivity import held_out_batches
from mpq_plugins.quant.numerics import fake_quant, mse_step


def mean_loss(model, batches):
    n = sum(b[0].size(0) for b in batches)
    return sum(model(*b)[0] * b[0].size(0) for b in batches) / n


def first_order_check(model, conf, data, layers, candidates, n_utts=32, per_channel=True):
    """{"loss": float loss, "layers": {layer: {"shape", "cos_w_grad", "candidates": {bits: {"norm_ratio",
    "first_order", "along_w", "actual"}}}}}."""
    batches = held_out_batches(conf, data, n_utts)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mods = {}
    for name in layers:
        try:
            mods[name] = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"--layers: {name} is not a module of the model") from None
        if not isinstance(getattr(mods[name], "weight", None), torch.Tensor):
            raise ValueError(f"--layers: {name} has no weight")
        mods[name].weight.requires_grad_(True)
    base = mean_loss(model, batches)
    grads = torch.autograd.grad(base, [m.weight for m in mods.values()])
    out = {"loss": float(base), "utterances": sum(b[0].size(0) for b in batches), "layers": {}}
    for (name, mod), g in zip(mods.items(), grads):
        w = mod.weight.detach().clone()
        rows = {}
        for b in candidates:
            q = fake_quant(w, mse_step(w, b, per_channel), b).detach()
            with torch.no_grad():
                mod.weight.copy_(q)
                actual = float(mean_loss(model, batches)) - float(base)
                mod.weight.copy_(w)
            rows[b] = {"norm_ratio": float(q.norm() / w.norm()), "first_order": float(((q - w) * g).sum()),
                       "along_w": float((w * g).sum() * ((q * w).sum() / (w * w).sum() - 1)), "actual": actual}
        cos = float((w * g).sum() / (w.norm() * g.norm())) if float(g.norm()) > 0 else 0.0   # no gradient: 0
        out["layers"][name] = {"shape": list(w.shape), "cos_w_grad": cos,
                               "candidates": rows}
    return out


def markdown(result, title):
    lines = [f"# {title}", "",
             f"Float loss {result['loss']:.4f} on {result['utterances']} held-out utterances. Per layer: the cosine "
             "of W with dL/dW; per candidate: |Q(W)|/|W|, the first-order loss change <Q(W) - W, dL/dW> "
             "(what the search's logit gradient sees), its part along W (the norm change alone) and the "
             "actual loss change with Q(W) in place of W.", "",
             "|layer|cos(W, dL/dW)|bits|Q/W norm|first-order|along W|actual|", "|---|---|---|---|---|---|---|"]
    for name, r in result["layers"].items():
        for i, (b, c) in enumerate(r["candidates"].items()):
            head = f"|{name} {tuple(r['shape'])}|{r['cos_w_grad']:+.3f}" if i == 0 else "||"
            lines.append(f"{head}|{b}|{c['norm_ratio']:.3f}|{c['first_order']:+.4f}|{c['along_w']:+.4f}|"
                         f"{c['actual']:+.4f}|")
    return lines + [""]
