"""Warnings of dependencies that every command would repeat, filtered once where a program starts.

The ``lap-speechbrain`` command and the recipes call :func:`filter_known_warnings`
first. Each filter names one warning by category and message, so any other
warning, and any new one from a dependency, still shows; a library that
imports this package keeps its own warning settings.

Authors
 * lap-speechbrain contributors 2026
"""

import warnings
from typing import Tuple, Type

KNOWN_WARNINGS: Tuple[Tuple[Type[Warning], str], ...] = (
    # transformers' WavLM attention gives torch's multi_head_attention_forward a
    # boolean padding mask with its float position bias; torch deprecates the
    # mix and warns on every padded batch. The attention it computes is right.
    (UserWarning, r"Support for mismatched key_padding_mask and attn_mask is deprecated"),
)


def filter_known_warnings() -> None:
    """Hides the warnings of :data:`KNOWN_WARNINGS` (and only those) in this process.

    Example
    -------
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     filter_known_warnings()
    ...     warnings.warn("Support for mismatched key_padding_mask and attn_mask is deprecated.")
    ...     warnings.warn("something else")
    >>> [str(w.message) for w in caught]
    ['something else']
    """
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
