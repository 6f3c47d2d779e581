"""Import of checkpoints trained with the authors' reference LAP implementation.

The reference saves one flat state dict (``model.state``, docs/lap_spec.md section
7): the Hugging Face ``WavLMModel`` under ``frontend.``, LAP under
``backend.layer_aggregation.``, the pooling and embedding layers under
``backend.speaker_network.`` and the sub-centre AAM weight as
``aam_softmax.weight``. :func:`from_reference` renames and reshapes these
tensors for :class:`~lap_speechbrain.lobes.LAPSpeakerBackend`, the HF model and
:class:`~lap_speechbrain.nnet.SubCenterClassifier`, inferring every size from
the tensor shapes.

Authors
 * lap-speechbrain contributors 2026
"""

from pathlib import Path
from typing import Callable, Dict, List, Mapping, Tuple, Union

import torch

DDP_PREFIX = "module."
FRONTEND_PREFIX = "frontend."
LAP_PREFIX = "backend.layer_aggregation."
POOLING_PREFIX = "backend.speaker_network."
CLASSIFIER_KEY = "aam_softmax.weight"

# Keys whose shapes define every size; checked first so that a missing one is
# reported as missing rather than as a failed shape inference.
SIZE_KEYS = (
    LAP_PREFIX + "sq_weight",
    LAP_PREFIX + "in_norm.weight",
    LAP_PREFIX + "out_weight.weight",
    POOLING_PREFIX + "t_pool.attention.0.weight",
    POOLING_PREFIX + "emb_weight.weight",
    CLASSIFIER_KEY,
)

# Constructor arguments of LAPSpeakerBackend that the config provides.
BACKEND_ARGUMENTS = ("num_layers", "input_size", "lap_channels", "num_heads", "embedding_dim")

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
        ``"backend"``: state dict for ``LAPSpeakerBackend(**{k: config[k] for k
        in BACKEND_ARGUMENTS})`` (loads with ``strict=True``);
        ``"frontend"``: the HF ``WavLMModel`` state dict;
        ``"classifier"``: state dict for ``SubCenterClassifier(embedding_dim,
        num_classes, num_subcenters)``;
        ``"config"``: the inferred sizes ``num_layers`` (L), ``input_size`` (D),
        ``num_heads`` (h), ``squeeze_size`` (r), ``lap_channels`` (H, also the
        pooling's channels), ``attention_channels``, ``embedding_dim``,
        ``num_classes`` and ``num_subcenters`` (K).

    Raises
    ------
    ReferenceCheckpointError
        Listing the missing and unknown keys, the tensors whose shapes do not
        fit the inferred sizes, or sizes that ``LAPSpeakerBackend`` cannot
        represent.

    Example
    -------
    >>> from lap_speechbrain.lobes import LAPSpeakerBackend
    >>> converted = from_reference("exp/lap_wavlm_large/model.state")  # doctest: +SKIP
    >>> config = converted["config"]  # doctest: +SKIP
    >>> backend = LAPSpeakerBackend(**{k: config[k] for k in BACKEND_ARGUMENTS})  # doctest: +SKIP
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

    missing = [key for key in SIZE_KEYS if key not in rest]
    if missing or not frontend:
        if not frontend:
            missing.append(FRONTEND_PREFIX + "*")
        raise ReferenceCheckpointError(
            f"not a reference LAP checkpoint; missing keys: {missing}"
        )
    config = _infer_config(rest)
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


def _infer_config(state: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Reads the sizes from the shapes of the size-defining tensors."""
    shapes = {key: tuple(state[key].shape) for key in SIZE_KEYS}
    try:
        heads, layers, squeeze = shapes[LAP_PREFIX + "sq_weight"]
        (width,) = shapes[LAP_PREFIX + "in_norm.weight"]
        channels = shapes[LAP_PREFIX + "out_weight.weight"][0]
        attention = shapes[POOLING_PREFIX + "t_pool.attention.0.weight"][0]
        embedding = shapes[POOLING_PREFIX + "emb_weight.weight"][0]
        subcenters, _, classes = shapes[CLASSIFIER_KEY]
    except (ValueError, IndexError) as error:
        raise ReferenceCheckpointError(
            f"cannot infer the sizes from the shapes {shapes}: {error}"
        ) from error
    config = {
        "num_layers": layers,
        "input_size": width,
        "num_heads": heads,
        "squeeze_size": squeeze,
        "lap_channels": channels,
        "attention_channels": attention,
        "embedding_dim": embedding,
        "num_classes": classes,
        "num_subcenters": subcenters,
    }
    # LAPSpeakerBackend derives these two sizes; other values cannot be loaded.
    unsupported = []
    if squeeze != layers // 2:
        unsupported.append(f"squeeze width r={squeeze} (LAP uses floor(L/2)={layers // 2})")
    if attention != channels // 2:
        unsupported.append(
            f"attention channels {attention} (the backend uses lap_channels/2={channels // 2})"
        )
    if width % heads:
        unsupported.append(f"D={width} not divisible by h={heads}")
    if unsupported:
        raise ReferenceCheckpointError(
            f"reference checkpoint with sizes {config} cannot be represented: {unsupported}"
        )
    return config


def _batch_norm(source: str, target: str, size: int) -> Dict[str, Rule]:
    """Rules for one BatchNorm, buffers included."""
    rules = {
        f"{source}.{name}": (f"{target}.{name}", (size,), _same)
        for name in ("weight", "bias", "running_mean", "running_var")
    }
    rules[f"{source}.num_batches_tracked"] = (f"{target}.num_batches_tracked", (), _same)
    return rules


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _drop_kernel(tensor: torch.Tensor) -> torch.Tensor:
    """1x1 convolution weight (out, in, 1[, 1]) -> linear weight (out, in)."""
    return tensor.reshape(tensor.shape[0], tensor.shape[1])


def _subcentres_to_rows(tensor: torch.Tensor) -> torch.Tensor:
    """(K, E, classes) with sub-centre k of class c in column c of slice k ->
    (classes * K, E) with it in row c * K + k (SubCenterClassifier's layout)."""
    subcenters, embedding, classes = tensor.shape
    return tensor.permute(2, 0, 1).reshape(classes * subcenters, embedding)


def _rules(config: Dict[str, int]) -> Dict[str, Rule]:
    """Reference key -> ("backend:" or "classifier:" + our key, shape, transform)."""
    width, channels = config["input_size"], config["lap_channels"]
    heads, layers, squeeze = config["num_heads"], config["num_layers"], config["squeeze_size"]
    attention, embedding = config["attention_channels"], config["embedding_dim"]
    lap, pool = LAP_PREFIX, POOLING_PREFIX + "t_pool."
    rules: Dict[str, Rule] = {}
    rules.update(_batch_norm(lap + "in_norm", "backend:lap.input_norm", width))
    if heads > 1:  # with one head LAP has no input projection
        rules[lap + "in_weight.weight"] = ("backend:lap.input_projection.weight", (width, width, 1, 1), _drop_kernel)
        rules[lap + "in_weight.bias"] = ("backend:lap.input_projection.bias", (width,), _same)
    rules[lap + "sq_weight"] = ("backend:lap.squeeze_weight", (heads, layers, squeeze), _same)
    rules[lap + "sq_bias"] = ("backend:lap.squeeze_bias", (heads, 1, squeeze), _same)
    rules[lap + "ex_weight"] = ("backend:lap.excite_weight", (heads, squeeze, layers), _same)
    rules[lap + "ex_bias"] = ("backend:lap.excite_bias", (heads, 1, layers), _same)
    rules[lap + "out_weight.weight"] = ("backend:lap.output_projection.weight", (channels, width, 1), _drop_kernel)
    rules[lap + "out_weight.bias"] = ("backend:lap.output_projection.bias", (channels,), _same)
    rules.update(_batch_norm(lap + "out_norm", "backend:lap.output_norm", channels))
    rules[pool + "attention.0.weight"] = ("backend:pooling.tdnn.conv.conv.weight", (attention, 3 * channels, 1), _same)
    rules[pool + "attention.0.bias"] = ("backend:pooling.tdnn.conv.conv.bias", (attention,), _same)
    rules.update(_batch_norm(pool + "attention.2", "backend:pooling.tdnn.norm.norm", attention))
    rules[pool + "attention.3.weight"] = ("backend:pooling.conv.conv.weight", (channels, attention, 1), _same)
    rules[pool + "attention.3.bias"] = ("backend:pooling.conv.conv.bias", (channels,), _same)
    rules.update(_batch_norm(pool + "norm", "backend:pooling_norm", 2 * channels))
    rules[POOLING_PREFIX + "emb_weight.weight"] = ("backend:embedding.weight", (embedding, 2 * channels), _same)
    rules[POOLING_PREFIX + "emb_weight.bias"] = ("backend:embedding.bias", (embedding,), _same)
    rules.update(_batch_norm(POOLING_PREFIX + "emb_norm", "backend:embedding_norm", embedding))
    rules[CLASSIFIER_KEY] = (
        "classifier:weight",
        (config["num_subcenters"], embedding, config["num_classes"]),
        _subcentres_to_rows,
    )
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
            f"but LAP has L={config['num_layers']}"
        )
    projection = frontend.get("feature_projection.projection.weight")
    if projection is None:
        problems.append("frontend.feature_projection.projection.weight is missing")
    elif projection.shape[0] != config["input_size"]:
        problems.append(
            f"the SSL width is {projection.shape[0]}, but LAP has D={config['input_size']}"
        )
    if problems:
        raise ReferenceCheckpointError(f"frontend does not fit the backend: {problems}")
