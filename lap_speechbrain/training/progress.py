"""Names on the progress bars that ``speechbrain.Brain`` draws during training.

``Brain.fit`` builds one tqdm bar per training epoch and one per validation
pass, with no description and no hook to give one: a staged run shows bars
that do not say which stage, pass or epoch they count.
:func:`described_progress_bars` gives them one while ``fit`` runs.

Authors
 * lap-speechbrain contributors 2026
"""

import contextlib
from typing import Callable, Iterator

import speechbrain.core


@contextlib.contextmanager
def described_progress_bars(describe: Callable[[], str]) -> Iterator[None]:
    """Inside this context, every bar ``speechbrain.core`` creates is labelled ``describe()``.

    SpeechBrain calls ``tqdm`` from ``speechbrain.core`` with no ``desc``
    argument; the module's ``tqdm`` is replaced for the duration of the
    context by one that adds ``desc=describe()`` (called when the bar is
    created, e.g. after ``on_stage_start``), and restored afterwards.

    Arguments
    ---------
    describe : callable
        Returns the label of a bar being created, e.g. ``"frozen: train epoch 1"``.

    Example
    -------
    >>> import io
    >>> out = io.StringIO()
    >>> with described_progress_bars(lambda: "frozen: train epoch 1"):
    ...     _ = list(speechbrain.core.tqdm(range(3), file=out))
    >>> "frozen: train epoch 1: 100%" in out.getvalue()
    True
    """
    plain = speechbrain.core.tqdm

    def described(*args, **kwargs):
        kwargs.setdefault("desc", describe())
        return plain(*args, **kwargs)

    speechbrain.core.tqdm = described
    try:
        yield
    finally:
        speechbrain.core.tqdm = plain
