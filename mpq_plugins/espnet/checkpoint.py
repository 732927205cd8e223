"""Loading checkpoints safely and strictly (torch.load with weights_only=True; every tensor must fit)."""
import torch


def load_checkpoint(model_file, device="cpu"):
    """The state dict of a .pth checkpoint, loaded with weights_only=True; one error for a bad file."""
    try:
        return torch.load(model_file, map_location=device, weights_only=True)
    except Exception as e:   # torch raises several kinds for a truncated or foreign file
        raise ValueError(f"cannot load checkpoint {model_file}: {str(e).splitlines()[0]}") from None


def load_state_strict(model, state, where):
    """Load state into model, or one error naming `where` and what does not fit (unlike ESPnet's
    strict=False loading, which would leave a quantizer unset or a float layer in its place)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        msg = []
        if missing:
            msg.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            msg.append(f"{len(unexpected)} tensors the config does not build (e.g. {', '.join(unexpected[:3])})")
        raise ValueError(f"{where} does not fit its config: {'; '.join(msg)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{where} does not fit its config: {k} has shape {tuple(v.shape)}, "
                             f"the model wants {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)
