"""Scoring protocols: the project's default and the authors' reference evaluation.

Both score cosine after subtracting the mean raw embedding of the cohort
(training) utterances, AS-Norm with the top-N scores against one embedding
per training speaker, and QMF (logistic regression on nine quality features
of a trial, fitted on training pairs scored against the cohort without the
pair's speakers). They differ in these choices:

=======================  ================================  =================================
 choice                   ``default``                       ``reference`` (sadPororo/LAP)
=======================  ================================  =================================
 cohort utterances        optionally capped per speaker,    all, at full length
                          optionally chunked
 speaker embedding        mean of mean-subtracted,          mean of raw embeddings, minus
                          length-normalised embeddings      the mean
 top-N std                population (ddof 0)               sample (ddof 1, ``torch.std``)
 QMF fit                  standardised features, L-BFGS     raw features, liblinear
 QMF non-target pairs     two utterances drawn among all    two speakers drawn, then one
                                                            utterance of each
 EER                      mean of the two rates where       the larger rate where they are
                          they are closest                  closest on sklearn's ROC curve
=======================  ================================  =================================

The reference's min-max rescaling of scores before its metrics and its
``predict_proba`` QMF output are monotonic maps of the scores used here, so
they change no EER or minDCF (only the thresholds' scale).

Authors
 * lap-speechbrain contributors 2026
"""

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class ScoringProtocol:
    """The choices of one scoring protocol (see the module docstring).

    Arguments
    ---------
    name : str
        ``"default"`` or ``"reference"``.
    description : str
        One line for reports.
    condition_suffix : str
        Appended to the condition names (``cosine``, ``AS-Norm``, ...) in
        results, so a table says which protocol produced it.
    whole_cohort : bool
        Every cohort utterance at full length (no per-speaker cap, no chunks).
    speaker_means_of_raw : bool
        Speaker embeddings are means of raw embeddings (minus the mean), not
        of normalised ones.
    std_correction : int
        ddof of the top-N standard deviation.
    qmf_solver : str
        scikit-learn ``LogisticRegression`` solver.
    qmf_standardize : bool
        Standardise QMF features before the fit.
    nontargets_by : str
        ``"utterance"`` or ``"speaker"``: how QMF non-target pairs are drawn.
    eer_rule : str
        ``"mean"`` or ``"max"``, see :func:`lap_speechbrain.scoring.report.evaluate_scores`.
    """

    name: str
    description: str
    condition_suffix: str
    whole_cohort: bool
    speaker_means_of_raw: bool
    std_correction: int
    qmf_solver: str
    qmf_standardize: bool
    nontargets_by: str
    eer_rule: str

    def condition(self, name: str) -> str:
        """The reported name of a scoring condition under this protocol.

        Example
        -------
        >>> PROTOCOLS["reference"].condition("AS-Norm")
        'AS-Norm (reference)'
        """
        return name + self.condition_suffix


PROTOCOLS: Dict[str, ScoringProtocol] = {
    "default": ScoringProtocol(
        name="default",
        description="speaker means of normalised embeddings, population std, "
        "QMF on standardised features (L-BFGS), EER = mean of the rates where they are closest",
        condition_suffix="",
        whole_cohort=False,
        speaker_means_of_raw=False,
        std_correction=0,
        qmf_solver="lbfgs",
        qmf_standardize=True,
        nontargets_by="utterance",
        eer_rule="mean",
    ),
    "reference": ScoringProtocol(
        name="reference",
        description="as the authors' evaluate/ code: all cohort utterances at full length, "
        "speaker means of raw embeddings, sample std, QMF on raw features (liblinear) with "
        "non-target pairs drawn by speaker, EER = max(FAR, FRR) at the crossing",
        condition_suffix=" (reference)",
        whole_cohort=True,
        speaker_means_of_raw=True,
        std_correction=1,
        qmf_solver="liblinear",
        qmf_standardize=False,
        nontargets_by="speaker",
        eer_rule="max",
    ),
}


def get_protocol(name: str) -> ScoringProtocol:
    """The protocol called ``name``.

    Example
    -------
    >>> get_protocol("reference").std_correction
    1
    """
    if name not in PROTOCOLS:
        raise ValueError(f"protocol {name!r} is unknown; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]
