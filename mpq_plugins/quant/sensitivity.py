"""Layer sensitivities for two-stage mixed precision, one value per layer and candidate bit-width
(lower is safer), for any torch model; what the model's outputs and loss are is given by the caller
(the ESPnet adapter: mpq_plugins.espnet.sensitivity).

- `kl_sensitivity`: KL divergence from the float model's output distributions to those of the
  model with only that layer quantized (at its MSE-optimal per-channel step).
- `hessian_sensitivity`: the layer's average Hessian trace, estimated matrix-free (Hutchinson:
  E[v^T H v] over Rademacher v, by Hessian-vector products), times ||Q_b(W) - W||^2: the
  second-order estimate of the loss increase, (tr H / n) ||dW||^2 for an isotropic dW.
"""
import torch

from mpq_plugins.quant.numerics import fake_quant, mse_step


def kl_div(p_log, q_log, mask, reduction="mean"):
    """KL(p || q) per position (both log-probabilities over the last dim), over the positions where
    mask is true: their mean, or their sum ("sum"). The one KL of the project: the sensitivities and
    the one-stage teacher term both use it."""
    kl = (p_log.exp() * (p_log - q_log)).sum(-1) * mask.to(p_log.dtype)
    if reduction == "sum":
        return kl.sum()
    return kl.sum() / mask.sum().clamp_min(1)


def outputs_kl(teacher, student):
    """Summed KL over matching output distributions: lists of (log-probabilities, mask); None skipped."""
    total = 0.0
    for (tp, tm), (sp, _) in zip(teacher, student):
        if tp is not None:
            total = total + kl_div(tp, sp, tm)
    return total


def _layers(model, names):
    return {n: model.get_submodule(n) for n in names}


@torch.no_grad()
def kl_sensitivity(model, batches, names, candidates, outputs, progress=None):
    """{layer: {bits: KL}}: outputs(model, batch) -> [(log-probabilities, mask), ...] of the float model
    against the same with only that layer's weight quantized at bits (MSE-optimal per-channel step)."""
    model.eval()
    teacher = [outputs(model, b) for b in batches]
    out = {}
    for i, (name, mod) in enumerate(_layers(model, names).items()):
        w = mod.weight.data.clone()
        out[name] = {}
        for bits in candidates:
            mod.weight.data.copy_(fake_quant(w, mse_step(w, bits), bits))
            out[name][bits] = float(sum(outputs_kl(t, outputs(model, b)) for t, b in zip(teacher, batches))
                                    / len(batches))
        mod.weight.data.copy_(w)
        if progress:
            progress(i + 1, len(names), name)
    return out


def hutchinson_traces(loss_fn, params, n_samples=16, gen=None):
    """{name: estimate of the trace of d2 loss / d param2} for each named parameter (its diagonal
    block of the Hessian), from n_samples Rademacher probes made on the parameters' device from `gen`
    (a torch.Generator of that device; each call draws new probes): E[v^T H v] = tr H."""
    names = list(params)
    tensors = [params[n] for n in names]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, tensors, create_graph=True)
    traces = {n: 0.0 for n in names}
    for s in range(n_samples):
        vs = [(torch.randint(0, 2, t.shape, generator=gen, device=t.device) * 2 - 1).to(t.dtype) for t in tensors]
        hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=s < n_samples - 1)
        for n, v, hv in zip(names, vs, hvs):
            traces[n] += float((v * hv).sum()) / n_samples
    return traces


def hessian_sensitivity(model, loss_fns, names, candidates, n_samples=16, seed=0):
    """{layer: {bits: (tr H / n) * ||Q_b(W) - W||^2}}, tr H by Hutchinson with fresh probes for every
    batch, averaged over loss_fns (one closure per batch, each computing the loss from the model's
    current weights). A layer whose estimate is not positive (noise around a flat direction) takes the
    smallest positive average trace of the model: a cheap layer, never a free one."""
    mods = _layers(model, names)
    device = next(iter(mods.values())).weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    traces = {n: 0.0 for n in names}
    for loss_fn in loss_fns:
        tr = hutchinson_traces(loss_fn, {n: m.weight for n, m in mods.items()}, n_samples, gen)
        for n in names:
            traces[n] += tr[n] / len(loss_fns)
    avg = {n: traces[n] / m.weight.numel() for n, m in mods.items()}
    positive = [a for a in avg.values() if a > 0]
    floor = min(positive) if positive else 1.0
    out = {}
    for n, m in mods.items():
        w = m.weight.detach()
        a = avg[n] if avg[n] > 0 else floor
        out[n] = {b: a * float(((fake_quant(w, mse_step(w, b), b) - w) ** 2).sum()) for b in candidates}
    return out
