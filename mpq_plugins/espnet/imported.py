"""An ESPnet ASR model trained elsewhere, brought into a recipe's exp dir so that stages 6-9 compress,
decode and score it like a model of our own stage 5.

The model directory is an ESPnet experiment dir (config.yaml beside the checkpoints) or an unpacked
model-zoo directory (exp/<name>/config.yaml, its checkpoint, and the token list, sentencepiece model
and feature statistics under data/ and exp/, named in config.yaml relative to the zoo's root). A
path in config.yaml is taken as given, or else relative to the config's directory or the nearest
directory above it that has it. `import_model` checks everything before anything is written:

- a config and a checkpoint (the one named, or the first of valid.acc.best.pth, valid.acc.ave.pth,
  valid.acc.ave_*best.pth, valid.loss.best.pth beside the config);
- the token list (a file or the config's own list) with as many tokens as the checkpoint's CTC output;
- the sentencepiece model of a BPE model; the statistics file of global_mvn normalization;
- an encoder whose module groups we know (ENCODERS), and no quantization yet;
- the model built from the config loads the checkpoint strictly;
then writes out_dir/config.yaml (paths into out_dir), tokens.txt, bpe.model, feats_stats.npz and the
checkpoint (as valid.acc.best.pth, or the name given: the recipe's --inference_model). Each problem is one
error naming the file and what is expected.

A transformers wav2vec2/HuBERT model fine-tuned with CTC (config.json of a Wav2Vec2ForCTC or HubertForCTC,
its weights and vocab.json) is converted instead (mpq_plugins.espnet.hf_ctc): the same three files.
"""
import glob
import os
import shutil

from mpq_plugins.confio import read_config, read_token_list
from mpq_plugins.espnet.checkpoint import load_checkpoint, load_state_strict

ENCODERS = {"conformer": "Conformer", "e_branchformer": "E-Branchformer", "transformer": "Transformer"}
CHECKPOINTS = ("valid.acc.best.pth", "valid.acc.ave.pth", "valid.acc.ave_*best.pth", "valid.loss.best.pth")


class ImportModelError(ValueError):
    pass


def find_config(model_dir):
    """config.yaml of an experiment dir, or the one under exp/ of a model-zoo dir."""
    if not os.path.isdir(model_dir):
        raise ImportModelError(f"{model_dir}: no such directory")
    own = os.path.join(model_dir, "config.yaml")
    if os.path.isfile(own):
        return own
    found = sorted(glob.glob(os.path.join(model_dir, "exp", "*", "config.yaml")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ImportModelError(f"{model_dir}: no config.yaml (expected {own} or exp/<name>/config.yaml of a "
                               "model-zoo directory)")
    raise ImportModelError(f"{model_dir}: several models ({', '.join(found)}): give the directory of one")


def resolve(value, key, config):
    """The file a config path names: as given, or relative to the config's dir or the nearest dir above it
    that has it (ESPnet writes paths relative to the recipe dir it ran in: the zoo's root, or the dir
    above exp/ of an experiment dir)."""
    tried = [value]
    if os.path.isfile(value):
        return os.path.abspath(value)
    d = os.path.dirname(os.path.abspath(config))
    while True:
        candidate = os.path.join(d, value)
        tried.append(candidate)
        if os.path.isfile(candidate):
            return candidate
        if os.path.dirname(d) == d:
            break
        d = os.path.dirname(d)
    raise ImportModelError(f"{config}: {key} {value}: no such file (looked at {', '.join(tried)})")


RUN_KEYS = ("config", "output_dir", "train_data_path_and_name_and_type", "valid_data_path_and_name_and_type",
            "train_shape_file", "valid_shape_file", "init_param", "resume", "collect_stats", "dry_run", "print_config",
            "ngpu", "local_rank", "multiprocessing_distributed", "dist_backend", "dist_init_method", "dist_world_size",
            "dist_rank", "dist_master_addr", "dist_master_port", "dist_launcher", "distributed", "unused_parameters",
            "required")


def model_options(conf):
    """The config without what belongs to the run that trained it elsewhere (its data, output dir, initial
    weights, processes) and without keys ESPnet's parser does not take as options (`required`, `version`):
    what the recipe's stages pass to ESPnet as --config."""
    from mpq_plugins.espnet.task import QuantASRTask
    known = set(vars(QuantASRTask.get_parser().parse_args([])))
    return {k: v for k, v in conf.items() if k in known and k not in RUN_KEYS}


def find_checkpoint(config, model_file):
    if model_file:
        if not os.path.isfile(model_file):
            raise ImportModelError(f"{model_file}: no such checkpoint")
        return model_file
    here = os.path.dirname(os.path.abspath(config))
    for pattern in CHECKPOINTS:
        found = sorted(glob.glob(os.path.join(here, pattern)))
        if found:
            return found[0]
    raise ImportModelError(f"{config}: no checkpoint beside it (expected one of {', '.join(CHECKPOINTS)}, or name "
                           "it with --asr_model_file)")


def import_model(model_dir, out_dir, model_file=None, token_case=None, checkpoint_name=None):
    """Check the model dir and write the imported model into out_dir (its checkpoint as checkpoint_name, the
    recipe's --inference_model; default valid.acc.best.pth, a CTC model's valid.cer_ctc.best.pth); returns a
    summary dict. A transformers CTC model's directory (mpq_plugins.espnet.hf_ctc) is converted; token_case
    applies to it only."""
    from mpq_plugins.espnet.hf_ctc import is_hf_ctc_dir
    if os.path.isdir(model_dir) and is_hf_ctc_dir(model_dir):
        return import_hf_ctc(model_dir, out_dir, model_file, token_case,
                             checkpoint_name or "valid.cer_ctc.best.pth")
    checkpoint_name = checkpoint_name or "valid.acc.best.pth"
    if token_case:
        raise ImportModelError(f"{model_dir}: token_case is for a transformers CTC model (config.json of a "
                               "Wav2Vec2ForCTC or HubertForCTC); an ESPnet model keeps its token list")
    from mpq_plugins.espnet.load import build_from_config    # the model is built only after the cheap checks
    config = find_config(model_dir)
    conf = read_config(config)
    if conf.get("quantization"):
        raise ImportModelError(f"{config}: the model is quantized already (a quantization section); import its float model")
    encoder = conf.get("encoder")
    if encoder not in ENCODERS:
        raise ImportModelError(f"{config}: encoder {encoder!r} is not supported (supported: "
                               f"{', '.join(f'{k} ({v})' for k, v in ENCODERS.items())})")
    checkpoint = find_checkpoint(config, model_file)
    try:
        state = load_checkpoint(checkpoint)
    except Exception as e:   # a damaged or non-checkpoint file
        raise ImportModelError(f"{checkpoint}: not a readable checkpoint ({e})") from None
    tokens_value = conf.get("token_list")
    if isinstance(tokens_value, list):
        tokens, tokens_file = tokens_value, config
    elif isinstance(tokens_value, str):
        tokens_file = resolve(tokens_value, "token_list", config)
        tokens = read_token_list(tokens_file)
    else:
        raise ImportModelError(f"{config}: token_list is missing")
    ctc = state.get("ctc.ctc_lo.weight")
    if ctc is None:
        raise ImportModelError(f"{checkpoint}: no ctc.ctc_lo.weight: not an ESPnet CTC/attention ASR model")
    if ctc.shape[0] != len(tokens):
        raise ImportModelError(f"{tokens_file}: {len(tokens)} tokens, but {checkpoint} has {ctc.shape[0]} CTC outputs: "
                               "the token list of another model?")
    bpemodel = None
    if conf.get("token_type") == "bpe":
        if not conf.get("bpemodel"):
            raise ImportModelError(f"{config}: token_type bpe without a bpemodel")
        bpemodel = resolve(conf["bpemodel"], "bpemodel", config)
    stats = None
    if conf.get("normalize") == "global_mvn":
        value = (conf.get("normalize_conf") or {}).get("stats_file")
        if not value:
            raise ImportModelError(f"{config}: normalize global_mvn without normalize_conf.stats_file")
        stats = resolve(value, "normalize_conf.stats_file", config)
    out_conf = model_options(conf)
    out_conf["token_list"] = os.path.join(out_dir, "tokens.txt")
    if bpemodel:
        out_conf["bpemodel"] = os.path.join(out_dir, "bpe.model")
    if stats:
        out_conf["normalize_conf"] = {**conf["normalize_conf"], "stats_file": os.path.join(out_dir, "feats_stats.npz")}
    check = {**out_conf, "token_list": list(tokens)}
    if bpemodel:
        check["bpemodel"] = bpemodel
    if stats:
        check["normalize_conf"] = {**conf["normalize_conf"], "stats_file": stats}
    try:
        model = build_from_config(check, config)
        load_state_strict(model, state, checkpoint)
    except Exception as e:
        raise ImportModelError(f"{checkpoint}: does not fit {config} ({e})") from None
    os.makedirs(out_dir, exist_ok=True)
    _write_if_changed(os.path.join(out_dir, "tokens.txt"), "".join(t + "\n" for t in tokens))
    if bpemodel:
        _copy_if_changed(bpemodel, os.path.join(out_dir, "bpe.model"))
    if stats:
        _copy_if_changed(stats, os.path.join(out_dir, "feats_stats.npz"))
    _copy_if_changed(checkpoint, os.path.join(out_dir, checkpoint_name))
    import yaml
    _write_if_changed(os.path.join(out_dir, "config.yaml"), yaml.safe_dump(out_conf, sort_keys=False))
    return {"config": config, "checkpoint": checkpoint, "encoder": ENCODERS[encoder], "tokens": len(tokens),
            "token_type": conf.get("token_type"), "params": sum(p.numel() for p in model.parameters())}


def import_hf_ctc(model_dir, out_dir, model_file=None, token_case=None, checkpoint_name="valid.cer_ctc.best.pth"):
    """A transformers CTC model as an ESPnet one in out_dir: config.yaml, tokens.txt, the checkpoint."""
    import torch
    import yaml

    from mpq_plugins.espnet.hf_ctc import HFCTCError, convert
    if model_file:
        raise ImportModelError(f"{model_dir}: a transformers model's weights are its own (model.safetensors or "
                               "pytorch_model.bin): no --model_file")
    if ".acc." in checkpoint_name:
        raise ImportModelError(f"{model_dir}: a CTC model has no attention accuracy: its checkpoints are chosen by "
                               f"validation CER, not {checkpoint_name} (run.sh --inference_model "
                               "valid.cer_ctc.best.pth)")
    try:
        conf, tokens, state = convert(model_dir, token_case)
    except HFCTCError as e:
        raise ImportModelError(str(e)) from None
    os.makedirs(out_dir, exist_ok=True)
    _write_if_changed(os.path.join(out_dir, "tokens.txt"), "".join(t + "\n" for t in tokens))
    tmp = os.path.join(out_dir, checkpoint_name + ".new")
    torch.save(state, tmp)
    _copy_if_changed(tmp, os.path.join(out_dir, checkpoint_name))
    os.remove(tmp)
    out_conf = {**conf, "token_list": os.path.join(out_dir, "tokens.txt")}
    _write_if_changed(os.path.join(out_dir, "config.yaml"), yaml.safe_dump(out_conf, sort_keys=False))
    return {"config": os.path.join(model_dir, "config.json"), "checkpoint": model_dir,
            "encoder": f"{conf['encoder']} (transformers CTC model)", "tokens": len(tokens), "token_type": "char",
            "params": sum(v.numel() for k, v in state.items() if v.is_floating_point())}


def _write_if_changed(path, text):
    """Rewritten only when it changes: later stages compare their outputs' times with it."""
    if os.path.exists(path) and open(path, encoding="utf-8").read() == text:
        return
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _copy_if_changed(src, dst):
    if os.path.exists(dst) and os.path.getsize(dst) == os.path.getsize(src) and \
            open(dst, "rb").read() == open(src, "rb").read():
        return
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)

