"""Checks of command-line overrides against the yaml they override.

``load_hyperpyyaml`` rejects an unknown top-level override, but merges nested
mappings key by key and accepts any key there: ``--frozen="{epoch: 1}"``
(for ``epochs``) would add an unused key and train with the default.
:func:`check_override_keys` refuses such keys the same way, before any work.

Authors
 * lap-speechbrain contributors 2026
"""

from collections.abc import Mapping
from typing import Collection, List, Optional, Union

import ruamel.yaml


def unknown_override_keys(
    yaml_text: str, overrides: Optional[Union[str, Mapping]], open_keys: Collection[str] = ()
) -> List[str]:
    """The overridden keys that the yaml does not have, with the valid keys of their mapping.

    Nested mappings are compared key by key, as hyperpyyaml merges them. A
    mapping that is empty in the yaml, or named in ``open_keys`` (mappings
    whose keys are names chosen by the user, such as trial lists), accepts
    any key; a key that is null in the yaml accepts any mapping.

    Arguments
    ---------
    yaml_text : str
        The hyperpyyaml file as written (tags such as ``!new:`` are kept, not run).
    overrides : str or mapping or None
        The overrides, as ``speechbrain.parse_arguments`` returns them (a yaml string).
    open_keys : collection of str
        Keys of mappings that take any key.

    Returns
    -------
    list of str
        One line per unknown key: its dotted path and the valid keys.

    Example
    -------
    >>> text = "frozen:\\n    epochs: 40\\n    batch_size: 512\\nnoise_folders: {}\\n"
    >>> unknown_override_keys(text, "{frozen: {epoch: 1}, noise_folders: {rir: /data/rirs}}")
    ["frozen.epoch (valid keys of frozen: ['batch_size', 'epochs'])"]
    """
    if not overrides:
        return []
    loader = ruamel.yaml.YAML()
    base = loader.load(yaml_text)
    if isinstance(overrides, str):
        overrides = loader.load(overrides)
    if not isinstance(base, Mapping) or not isinstance(overrides, Mapping):
        return []
    problems: List[str] = []

    def walk(known: Mapping, given: Mapping, path: str) -> None:
        for key, value in given.items():
            dotted = f"{path}.{key}" if path else str(key)
            if key not in known:
                where = path or "the yaml"
                problems.append(f"{dotted} (valid keys of {where}: {sorted(map(str, known))})")
            elif isinstance(value, Mapping) and isinstance(known[key], Mapping):
                if known[key] and key not in open_keys:
                    walk(known[key], value, dotted)

    walk(base, overrides, "")
    return problems


def check_override_keys(
    yaml_text: str, overrides: Optional[Union[str, Mapping]], open_keys: Collection[str] = (), source: str = "the yaml"
) -> None:
    """Raises ``ValueError`` listing the overrides that :func:`unknown_override_keys` finds.

    Arguments
    ---------
    yaml_text, overrides, open_keys
        As :func:`unknown_override_keys`.
    source : str
        The yaml file's name, for the message.
    """
    problems = unknown_override_keys(yaml_text, overrides, open_keys)
    if problems:
        raise ValueError(f"unknown settings for {source}: " + "; ".join(problems))
