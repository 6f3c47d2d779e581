"""Import of checkpoints trained with the authors' reference LAP implementation.

The reference saves one flat state dict (``model.state``, docs/lap_spec.md section
7): the Hugging Face ``WavLMModel`` under ``frontend.``, the layer aggregation
(LAP or SUPERB) under ``backend.layer_aggregation.``, the speaker network under
``backend.speaker_network.`` (MHFA holds its two aggregations there) and the
sub-centre AAM weight as ``aam_softmax.weight``. :func:`from_reference` reads
the combination from the keys, renames and reshapes the tensors for the backend
of :func:`~lap_speechbrain.lobes.build_backend`, the HF model and
:class:`~lap_speechbrain.nnet.SubCenterClassifier`, inferring every size from
the tensor shapes. It imports all eight combinations: ``lap`` or ``superb``
with ``astp``, ``ecapa-tdnn``, ``x-vector`` or ``mhfa``. ECAPA-TDNN's Res2Net
blocks order their channel groups otherwise than the reference's (SpeechBrain
passes the first group through, the reference the last), so the channels
between the convolutions around them are permuted on import; the imported
model computes the reference's function (:mod:`lap_speechbrain.lobes.networks`).

Authors
 * lap-speechbrain contributors 2026
"""

import inspect
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple, Union

import torch

from lap_speechbrain.lobes.networks import ECAPATDNNNetwork, XvectorNetwork

DDP_PREFIX = "module."
FRONTEND_PREFIX = "frontend."
LAP_PREFIX = "backend.layer_aggregation."
POOLING_PREFIX = "backend.speaker_network."
CLASSIFIER_KEY = "aam_softmax.weight"

MHFA_KEY_PREFIX = POOLING_PREFIX + "l_pool_k."
MHFA_VALUE_PREFIX = POOLING_PREFIX + "l_pool_v."

# The key prefix that marks each speaker network of the reference.
NETWORK_MARKERS = {"astp": "t_pool.", "mhfa": "l_pool_k.", "ecapa-tdnn": "layer1.", "x-vector": "layers."}
# build_backend's fixed MHFA sizes (the reference's).
MHFA_HEADS, MHFA_COMPRESSION = 64, 128

# Arguments of lap_speechbrain.lobes.build_backend that the config provides
# (the LAP sizes only where LAP is used).
BACKEND_ARGUMENTS = ("aggregation", "network", "num_layers", "input_size", "lap_channels", "num_heads",
                     "embedding_dim")

# Legacy torch weight-norm names (older transformers) -> the parametrization
# names that current transformers' WavLM positional convolution uses.
LEGACY_WEIGHT_NORM = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}

StateDict = Dict[str, torch.Tensor]
Rule = Tuple[str, Tuple[int, ...], Callable[[torch.Tensor], torch.Tensor]]


class ReferenceCheckpointError(ValueError):
    """A state dict does not have the reference implementation's layout."""


def from_reference(state_dict_or_path: Union[str, Path, Mapping[str, torch.Tensor]]) -> dict:
    """Converts a reference-implementation checkpoint to this project's modules.

    Arguments
    ---------
    state_dict_or_path : str, Path or dict
        The reference ``model.state`` file, or the state dict loaded from it.
        Keys may carry DDP's ``module.`` prefix.

    Returns
    -------
    dict
        ``"backend"``: state dict for ``build_backend(**{k: config[k] for k
        in BACKEND_ARGUMENTS if k in config})`` (loads with ``strict=True``);
        ``"frontend"``: the HF ``WavLMModel`` state dict;
        ``"classifier"``: state dict for ``SubCenterClassifier(embedding_dim,
        num_classes, num_subcenters)``;
        ``"config"``: ``aggregation`` and ``network``, and the inferred sizes
        ``num_layers`` (L), ``input_size`` (D), ``embedding_dim``,
        ``num_classes`` and ``num_subcenters`` (K); with LAP also
        ``num_heads`` (h), ``squeeze_size`` (r) and ``lap_channels`` (H);
        with ASTP ``attention_channels``; with MHFA ``mhfa_heads`` and
        ``compression_dim``; with ECAPA-TDNN ``tdnn_channels`` and
        ``attention_channels``; with x-vector ``tdnn_channels`` and
        ``statistics_channels``.

    Raises
    ------
    ReferenceCheckpointError
        Listing the missing and unknown keys, the tensors whose shapes do
        not fit the inferred sizes, or sizes that ``build_backend`` cannot
        represent.

    Example
    -------
    >>> from lap_speechbrain.lobes import build_backend
    >>> converted = from_reference("exp/lap_wavlm_large/model.state")  # doctest: +SKIP
    >>> config = converted["config"]  # doctest: +SKIP
    >>> backend = build_backend(**{k: config[k] for k in BACKEND_ARGUMENTS if k in config})  # doctest: +SKIP
    >>> backend.load_state_dict(converted["backend"])  # doctest: +SKIP
    """
    state = _load(state_dict_or_path)
    state = {_strip_prefix(key): value for key, value in state.items()}
    frontend = {
        LEGACY_WEIGHT_NORM.get(key[len(FRONTEND_PREFIX):], key[len(FRONTEND_PREFIX):]): value
        for key, value in state.items()
        if key.startswith(FRONTEND_PREFIX)
    }
    rest = {key: value for key, value in state.items() if not key.startswith(FRONTEND_PREFIX)}

    aggregation, network = _combination(rest)
    missing = [key for key in _size_keys(aggregation, network) if key not in rest]
    if missing or not frontend:
        if not frontend:
            missing.append(FRONTEND_PREFIX + "*")
        raise ReferenceCheckpointError(
            f"not a reference checkpoint of {aggregation} + {network}; missing keys: {missing}"
        )
    config = _infer_config(rest, aggregation, network)
    rules = _rules(config)

    missing = sorted(set(rules) - set(rest))
    unknown = sorted(set(rest) - set(rules))
    if missing or unknown:
        raise ReferenceCheckpointError(
            f"reference checkpoint does not match the layout inferred for {config}; "
            f"missing keys: {missing}; unknown keys: {unknown}"
        )
    wrong = [
        f"{key} {tuple(rest[key].shape)} (expected {shape})"
        for key, (_, shape, _) in rules.items()
        if tuple(rest[key].shape) != shape
    ]
    if wrong:
        raise ReferenceCheckpointError(
            f"tensors whose shapes do not fit the inferred sizes {config}: {wrong}"
        )
    _check_frontend(frontend, config)

    converted = {"backend": {}, "classifier": {}}
    for key, (target, _, transform) in rules.items():
        group, name = target.split(":")
        converted[group][name] = transform(rest[key]).contiguous()
    converted["frontend"] = frontend
    converted["config"] = config
    return converted


def _load(state_dict_or_path) -> Mapping[str, torch.Tensor]:
    """Reads the checkpoint if given a path and checks it is a flat state dict."""
    if isinstance(state_dict_or_path, (str, Path)):
        path = Path(state_dict_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"reference checkpoint {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        source = str(path)
    else:
        state = state_dict_or_path
        source = "the given state dict"
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ReferenceCheckpointError(
            f"{source} is not a flat state dict of tensors (the reference's model.state)"
        )
    return state


def _strip_prefix(key: str) -> str:
    """Removes DDP's ``module.`` prefix."""
    return key[len(DDP_PREFIX):] if key.startswith(DDP_PREFIX) else key


def _combination(state: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """(aggregation, network) of a reference checkpoint, read from its keys.

    A checkpoint without the marking keys is taken for LAP + ASTP, so that
    the keys it lacks are listed.
    """
    network = next(
        (name for name, marker in NETWORK_MARKERS.items()
         if any(key.startswith(POOLING_PREFIX + marker) for key in state)),
        "astp",
    )
    prefix = MHFA_KEY_PREFIX if network == "mhfa" else LAP_PREFIX
    aggregation = "superb" if prefix + "layer_weights" in state else "lap"
    return aggregation, network


def _aggregation_prefixes(aggregation: str, network: str) -> Dict[str, str]:
    """Reference prefix of each layer aggregation -> our module's name in the backend."""
    if network == "mhfa":
        return {MHFA_KEY_PREFIX: "key_aggregation", MHFA_VALUE_PREFIX: "value_aggregation"}
    if network == "astp":
        return {LAP_PREFIX: "lap" if aggregation == "lap" else "layer_sum"}
    return {LAP_PREFIX: "aggregation"}  # SpeakerBackend


def _size_keys(aggregation: str, network: str) -> List[str]:
    """Keys whose shapes define every size; checked first so that a missing one
    is reported as missing rather than as a failed shape inference."""
    prefix = MHFA_KEY_PREFIX if network == "mhfa" else LAP_PREFIX
    if aggregation == "lap":
        keys = [prefix + "sq_weight", prefix + "in_norm.weight", prefix + "out_weight.weight"]
    else:
        keys = [prefix + "layer_weights"]
    network_keys = {
        "astp": ("t_pool.attention.0.weight", "emb_weight.weight"),
        "mhfa": ("cmp_linear_k.weight", "att_head.weight", "pooling_fc.weight"),
        "ecapa-tdnn": ("layer1.conv.weight", "pool.linear1.weight", "linear.weight"),
        "x-vector": ("layers.0.weight", "layers.12.weight", "linear1.weight"),
    }
    return keys + [POOLING_PREFIX + key for key in network_keys[network]] + [CLASSIFIER_KEY]


def _infer_config(state: Mapping[str, torch.Tensor], aggregation: str, network: str) -> Dict[str, Any]:
    """Reads the sizes from the shapes of the size-defining tensors."""
    shapes = {key: tuple(state[key].shape) for key in _size_keys(aggregation, network)}
    prefix = MHFA_KEY_PREFIX if network == "mhfa" else LAP_PREFIX
    config: Dict[str, Any] = {"aggregation": aggregation, "network": network}
    try:
        if aggregation == "lap":
            heads, layers, squeeze = shapes[prefix + "sq_weight"]
            (width,) = shapes[prefix + "in_norm.weight"]
            channels = shapes[prefix + "out_weight.weight"][0]
        else:
            (layers,) = shapes[prefix + "layer_weights"]
        if network == "astp":
            attention, frame_channels = shapes[POOLING_PREFIX + "t_pool.attention.0.weight"][:2]
            frame_channels //= 3
            embedding = shapes[POOLING_PREFIX + "emb_weight.weight"][0]
        elif network == "mhfa":
            compression, frame_channels = shapes[POOLING_PREFIX + "cmp_linear_k.weight"]
            mhfa_heads = shapes[POOLING_PREFIX + "att_head.weight"][0]
            embedding = shapes[POOLING_PREFIX + "pooling_fc.weight"][0]
        elif network == "ecapa-tdnn":
            tdnn_channels, frame_channels = shapes[POOLING_PREFIX + "layer1.conv.weight"][:2]
            attention = shapes[POOLING_PREFIX + "pool.linear1.weight"][0]
            embedding = shapes[POOLING_PREFIX + "linear.weight"][0]
        else:
            tdnn_channels, frame_channels = shapes[POOLING_PREFIX + "layers.0.weight"][:2]
            statistics = shapes[POOLING_PREFIX + "layers.12.weight"][0]
            embedding = shapes[POOLING_PREFIX + "linear1.weight"][0]
        subcenters, _, classes = shapes[CLASSIFIER_KEY]
    except (ValueError, IndexError) as error:
        raise ReferenceCheckpointError(
            f"cannot infer the sizes from the shapes {shapes}: {error}"
        ) from error
    if aggregation == "superb":  # the network reads the SSL width itself
        width = channels = frame_channels
    config.update(num_layers=layers, input_size=width)
    unsupported = []
    if aggregation == "lap":
        config.update(num_heads=heads, squeeze_size=squeeze, lap_channels=channels)
        # LAP derives the squeeze width; other values cannot be loaded.
        if squeeze != layers // 2:
            unsupported.append(f"squeeze width r={squeeze} (LAP uses floor(L/2)={layers // 2})")
        if width % heads:
            unsupported.append(f"D={width} not divisible by h={heads}")
    if network == "astp":
        config["attention_channels"] = attention
        if attention != channels // 2:
            unsupported.append(f"attention channels {attention} (the backend uses C/2={channels // 2})")
    elif network == "ecapa-tdnn":
        config.update(tdnn_channels=tdnn_channels, attention_channels=attention)
        unsupported += _fixed_size_problems(ECAPATDNNNetwork, channels=tdnn_channels, attention_channels=attention)
    elif network == "x-vector":
        config.update(tdnn_channels=tdnn_channels, statistics_channels=statistics)
        unsupported += _fixed_size_problems(XvectorNetwork, hidden_channels=tdnn_channels,
                                            statistics_channels=statistics)
    else:
        config.update(mhfa_heads=mhfa_heads, compression_dim=compression)
        if (mhfa_heads, compression) != (MHFA_HEADS, MHFA_COMPRESSION):
            unsupported.append(
                f"MHFA with {mhfa_heads} heads and compression {compression} "
                f"(build_backend has the reference's {MHFA_HEADS} and {MHFA_COMPRESSION})"
            )
    config.update(embedding_dim=embedding, num_classes=classes, num_subcenters=subcenters)
    if unsupported:
        raise ReferenceCheckpointError(
            f"reference checkpoint with sizes {config} cannot be represented: {unsupported}"
        )
    return config


def _fixed_size_problems(network: type, **sizes: int) -> List[str]:
    """The sizes that differ from those ``build_backend`` builds ``network`` with (its defaults)."""
    defaults = inspect.signature(network).parameters
    return [
        f"{network.__name__} {name}={size} (build_backend has the reference's {defaults[name].default})"
        for name, size in sizes.items()
        if size != defaults[name].default
    ]


def _weight_and_bias(source: str, target: str, shape: Tuple[int, ...],
                     weight: Callable[[torch.Tensor], torch.Tensor] = None,
                     bias: Callable[[torch.Tensor], torch.Tensor] = None) -> Dict[str, Rule]:
    """Rules for one layer's weight of ``shape`` and its bias, with optional transforms."""
    return {
        f"{source}.weight": (f"{target}.weight", shape, weight or _same),
        f"{source}.bias": (f"{target}.bias", shape[:1], bias or _same),
    }


def _batch_norm(source: str, target: str, size: int,
                transform: Callable[[torch.Tensor], torch.Tensor] = None) -> Dict[str, Rule]:
    """Rules for one BatchNorm, buffers included; ``transform`` applies to its per-channel tensors."""
    rules = {
        f"{source}.{name}": (f"{target}.{name}", (size,), transform or _same)
        for name in ("weight", "bias", "running_mean", "running_var")
    }
    rules[f"{source}.num_batches_tracked"] = (f"{target}.num_batches_tracked", (), _same)
    return rules


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _drop_kernel(tensor: torch.Tensor) -> torch.Tensor:
    """1x1 convolution weight (out, in, 1[, 1]) -> linear weight (out, in)."""
    return tensor.reshape(tensor.shape[0], tensor.shape[1])


def _add_kernel(tensor: torch.Tensor) -> torch.Tensor:
    """Linear weight (out, in) -> 1x1 convolution weight (out, in, 1)."""
    return tensor.unsqueeze(2)


def _subcentres_to_rows(tensor: torch.Tensor) -> torch.Tensor:
    """(K, E, classes) with sub-centre k of class c in column c of slice k ->
    (classes * K, E) with it in row c * K + k (SubCenterClassifier's layout)."""
    subcenters, embedding, classes = tensor.shape
    return tensor.permute(2, 0, 1).reshape(classes * subcenters, embedding)


def _rules(config: Dict[str, Any]) -> Dict[str, Rule]:
    """Reference key -> ("backend:" or "classifier:" + our key, shape, transform)."""
    aggregation, network = config["aggregation"], config["network"]
    rules: Dict[str, Rule] = {}
    for source, target in _aggregation_prefixes(aggregation, network).items():
        if aggregation == "lap":
            rules.update(_lap_rules(source, f"backend:{target}.", config))
        else:
            rules[source + "layer_weights"] = (f"backend:{target}.layer_weights", (config["num_layers"],), _same)
    embedding = config["embedding_dim"]
    if network == "astp":
        rules.update(_astp_rules(config))
    elif network == "ecapa-tdnn":
        rules.update(_ecapa_rules(config))
    elif network == "x-vector":
        rules.update(_xvector_rules(config))
    else:
        channels, compression = _network_input_channels(config), config["compression_dim"]
        shapes = {
            "cmp_linear_k": ("key_compression", (compression, channels)),
            "cmp_linear_v": ("value_compression", (compression, channels)),
            "att_head": ("attention", (config["mhfa_heads"], compression)),
            "pooling_fc": ("projection", (embedding, config["mhfa_heads"] * compression)),
        }
        for source, (target, shape) in shapes.items():
            rules.update(_weight_and_bias(POOLING_PREFIX + source, f"backend:{target}", shape))
    rules[CLASSIFIER_KEY] = (
        "classifier:weight",
        (config["num_subcenters"], embedding, config["num_classes"]),
        _subcentres_to_rows,
    )
    return rules


def _lap_rules(lap: str, target: str, config: Dict[str, Any]) -> Dict[str, Rule]:
    """Rules of one reference LAP under prefix ``lap`` to our LAP under ``target``."""
    width, channels = config["input_size"], config["lap_channels"]
    heads, layers, squeeze = config["num_heads"], config["num_layers"], config["squeeze_size"]
    rules: Dict[str, Rule] = {}
    rules.update(_batch_norm(lap + "in_norm", target + "input_norm", width))
    if heads > 1:  # with one head LAP has no input projection
        rules[lap + "in_weight.weight"] = (target + "input_projection.weight", (width, width, 1, 1), _drop_kernel)
        rules[lap + "in_weight.bias"] = (target + "input_projection.bias", (width,), _same)
    rules[lap + "sq_weight"] = (target + "squeeze_weight", (heads, layers, squeeze), _same)
    rules[lap + "sq_bias"] = (target + "squeeze_bias", (heads, 1, squeeze), _same)
    rules[lap + "ex_weight"] = (target + "excite_weight", (heads, squeeze, layers), _same)
    rules[lap + "ex_bias"] = (target + "excite_bias", (heads, 1, layers), _same)
    rules[lap + "out_weight.weight"] = (target + "output_projection.weight", (channels, width, 1), _drop_kernel)
    rules[lap + "out_weight.bias"] = (target + "output_projection.bias", (channels,), _same)
    rules.update(_batch_norm(lap + "out_norm", target + "output_norm", channels))
    return rules


def _astp_rules(config: Dict[str, Any]) -> Dict[str, Rule]:
    """Rules of the reference's ASTP network (pooling and embedding layers)."""
    channels = _network_input_channels(config)
    attention, embedding = config["attention_channels"], config["embedding_dim"]
    pool = POOLING_PREFIX + "t_pool."
    rules: Dict[str, Rule] = {}
    rules[pool + "attention.0.weight"] = ("backend:pooling.tdnn.conv.conv.weight", (attention, 3 * channels, 1), _same)
    rules[pool + "attention.0.bias"] = ("backend:pooling.tdnn.conv.conv.bias", (attention,), _same)
    rules.update(_batch_norm(pool + "attention.2", "backend:pooling.tdnn.norm.norm", attention))
    rules[pool + "attention.3.weight"] = ("backend:pooling.conv.conv.weight", (channels, attention, 1), _same)
    rules[pool + "attention.3.bias"] = ("backend:pooling.conv.conv.bias", (channels,), _same)
    rules.update(_batch_norm(pool + "norm", "backend:pooling_norm", 2 * channels))
    rules[POOLING_PREFIX + "emb_weight.weight"] = ("backend:embedding.weight", (embedding, 2 * channels), _same)
    rules[POOLING_PREFIX + "emb_weight.bias"] = ("backend:embedding.bias", (embedding,), _same)
    rules.update(_batch_norm(POOLING_PREFIX + "emb_norm", "backend:embedding_norm", embedding))
    return rules


def _network_input_channels(config: Dict[str, Any]) -> int:
    """Channels of the frames the speaker network reads: LAP's output, or the SSL width."""
    return config["lap_channels"] if config["aggregation"] == "lap" else config["input_size"]


def _ecapa_rules(config: Dict[str, Any]) -> Dict[str, Rule]:
    """Rules of the reference's ECAPA-TDNN to :class:`ECAPATDNNNetwork`.

    The reference's Res2Net block convolves channel groups 0..6 in a chain and
    passes group 7 through; SpeechBrain's passes group 0 through and chains
    groups 1..7. Rolling the channels by one group between the 1x1 convolutions
    around the block (the output rows of the first, with its BatchNorm, and the
    input columns of the second) makes the two compute the same function.
    """
    channels, frames = config["tdnn_channels"], _network_input_channels(config)
    attention, embedding = config["attention_channels"], config["embedding_dim"]
    with torch.device("meta"):  # only its layout is read
        network = ECAPATDNNNetwork(frames, embedding, channels, attention)
    scale = network.blocks[1].res2net_block.scale
    width, aggregated = channels // scale, network.mfa[0].out_channels
    order = torch.roll(torch.arange(channels), width)  # our channel c is the reference's order[c]

    def rows(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[order]

    def columns(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[:, order]

    source, target = POOLING_PREFIX, "backend:network."
    rules: Dict[str, Rule] = {}

    def conv(name: str, ours: str, shape: Tuple[int, ...], weight=None, bias=None) -> None:
        rules.update(_weight_and_bias(source + name, target + ours, shape, weight, bias))

    conv("layer1.conv", "blocks.0.conv.conv", (channels, frames, 5))
    rules.update(_batch_norm(source + "layer1.bn", target + "blocks.0.norm.norm", channels))
    for block in (1, 2, 3):
        theirs, ours = f"layer{block + 1}.se_res2block.", f"blocks.{block}."
        conv(theirs + "0.conv", ours + "tdnn1.conv.conv", (channels, channels, 1), rows, rows)
        rules.update(_batch_norm(source + theirs + "0.bn", target + ours + "tdnn1.norm.norm", channels, rows))
        for index in range(scale - 1):
            conv(f"{theirs}1.convs.{index}", f"{ours}res2net_block.blocks.{index}.conv.conv", (width, width, 3))
            rules.update(_batch_norm(f"{source}{theirs}1.bns.{index}",
                                     f"{target}{ours}res2net_block.blocks.{index}.norm.norm", width))
        conv(theirs + "2.conv", ours + "tdnn2.conv.conv", (channels, channels, 1), columns)
        rules.update(_batch_norm(source + theirs + "2.bn", target + ours + "tdnn2.norm.norm", channels))
        squeeze = network.blocks[block].se_block.conv1.conv.out_channels
        conv(theirs + "3.linear1", ours + "se_block.conv1.conv", (squeeze, channels), _add_kernel)
        conv(theirs + "3.linear2", ours + "se_block.conv2.conv", (channels, squeeze), _add_kernel)
    conv("conv", "mfa.0", (aggregated, 3 * channels, 1))
    conv("pool.linear1", "asp.tdnn", (attention, 3 * aggregated, 1))
    conv("pool.linear2", "asp.conv.conv", (aggregated, attention, 1))
    rules.update(_batch_norm(source + "bn", target + "asp_bn.norm", 2 * aggregated))
    conv("linear", "fc.conv", (embedding, 2 * aggregated), _add_kernel)
    return rules


def _xvector_rules(config: Dict[str, Any]) -> Dict[str, Rule]:
    """Rules of the reference's x-vector to :class:`XvectorNetwork` (same layer indices)."""
    hidden, statistics = config["tdnn_channels"], config["statistics_channels"]
    embedding = config["embedding_dim"]
    kernels = XvectorNetwork.KERNEL_SIZES
    inputs = [_network_input_channels(config)] + [hidden] * (len(kernels) - 1)
    outputs = [hidden] * (len(kernels) - 1) + [statistics]
    source, target = POOLING_PREFIX, "backend:network."
    rules: Dict[str, Rule] = {}
    for layer, (size_in, size_out, kernel) in enumerate(zip(inputs, outputs, kernels)):
        conv, norm = 3 * layer, 3 * layer + 2  # conv, ReLU, BatchNorm in both
        rules.update(_weight_and_bias(f"{source}layers.{conv}", f"{target}blocks.{conv}.conv",
                                      (size_out, size_in, kernel)))
        rules.update(_batch_norm(f"{source}layers.{norm}", f"{target}blocks.{norm}.norm", size_out))
    linear = 3 * len(kernels) + 1  # after the statistics pooling
    rules.update(_weight_and_bias(source + "linear1", f"{target}blocks.{linear}.w", (embedding, 2 * statistics)))
    rules.update(_weight_and_bias(source + "linear2", target + "training_projection", (embedding, embedding)))
    return rules


def _check_frontend(frontend: StateDict, config: Dict[str, int]) -> None:
    """Checks the SSL model's depth and width against the backend's L and D."""
    layer_ids = {
        int(key.split(".")[2]) for key in frontend if key.startswith("encoder.layers.")
    }
    problems: List[str] = []
    if len(layer_ids) + 1 != config["num_layers"]:
        problems.append(
            f"{len(layer_ids)} transformer layers give {len(layer_ids) + 1} hidden states, "
            f"but the backend has L={config['num_layers']}"
        )
    projection = frontend.get("feature_projection.projection.weight")
    if projection is None:
        problems.append("frontend.feature_projection.projection.weight is missing")
    elif projection.shape[0] != config["input_size"]:
        problems.append(
            f"the SSL width is {projection.shape[0]}, but the backend has D={config['input_size']}"
        )
    if problems:
        raise ReferenceCheckpointError(f"frontend does not fit the backend: {problems}")
