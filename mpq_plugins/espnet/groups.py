"""Module groups of ESPnet ASR models for `quantization: modules:` (mpq_plugins.quant.config), per
encoder type: {group name: regular expression over module names}."""
_N = r"\d+"
DECODER = {
    "decoder_attention": rf"decoder\.decoders\.{_N}\.(self_attn|src_attn)\.linear_(q|k|v|out)",
    "decoder_feed_forward": rf"decoder\.decoders\.{_N}\.feed_forward\.w_[12]",
    "decoder_embed": r"decoder\.embed\.0",
    "decoder_output": r"decoder\.output_layer",
    "ctc": r"ctc\.ctc_lo",
}
ENCODERS = {
    "ConformerEncoder": {
        "subsampling": r"encoder\.embed\.(conv\.\d+|out\.0)",
        "attention": rf"encoder\.encoders\.{_N}\.self_attn\.linear_(q|k|v|out|pos)",
        "feed_forward": rf"encoder\.encoders\.{_N}\.feed_forward(_macaron)?\.w_[12]",
        "conv_module": rf"encoder\.encoders\.{_N}\.conv_module\.(pointwise_conv1|depthwise_conv|pointwise_conv2)",
    },
    "EBranchformerEncoder": {
        "subsampling": r"encoder\.embed\.(conv\.\d+|out\.0)",
        "attention": rf"encoder\.encoders\.{_N}\.attn\.linear_(q|k|v|out|pos)",
        "feed_forward": rf"encoder\.encoders\.{_N}\.feed_forward(_macaron)?\.w_[12]",
        # the convolutional gating MLP branch and the merge of both branches
        "cgmlp": rf"encoder\.encoders\.{_N}\.cgmlp\.(channel_proj1\.0|channel_proj2|csgu\.conv|csgu\.linear)",
        "merge": rf"encoder\.encoders\.{_N}\.(depthwise_conv_fusion|merge_proj)",
    },
    "HFSSLEncoder": {   # wav2vec2 / HuBERT (mpq_plugins.espnet.ssl), transformers' module names
        "feature_encoder": r"encoder\.model\.feature_extractor\.conv_layers\.\d+\.conv",
        "feature_projection": r"encoder\.model\.feature_projection\.projection",
        "positional_conv": r"encoder\.model\.encoder\.pos_conv_embed\.conv",   # weight norm folded
        "attention": rf"encoder\.model\.encoder\.layers\.{_N}\.attention\.(q|k|v|out)_proj",
        "feed_forward": rf"encoder\.model\.encoder\.layers\.{_N}\.feed_forward\.(intermediate|output)_dense",
    },
    "TransformerEncoder": {
        "subsampling": r"encoder\.embed\.(conv\.\d+|out\.0)",
        "attention": rf"encoder\.encoders\.{_N}\.self_attn\.linear_(q|k|v|out)",
        "feed_forward": rf"encoder\.encoders\.{_N}\.feed_forward\.w_[12]",
    },
}


CONFORMER = {**ENCODERS["ConformerEncoder"], **DECODER}   # the default model's groups


def groups_for(model):
    """The groups of an ESPnet ASR model: its encoder's, then the attention decoder's and CTC's; None
    for an encoder without groups here (then `modules: [all]` is every Linear, Conv and Embedding,
    and other entries must be regular expressions)."""
    for cls in type(getattr(model, "encoder", None)).__mro__:   # a subclass (e.g. heads cut) has its base's groups
        if cls.__name__ in ENCODERS:
            return {**ENCODERS[cls.__name__], **DECODER}
    return None
