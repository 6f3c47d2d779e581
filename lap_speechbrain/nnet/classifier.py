"""Sub-center cosine classifier.

Authors
 * lap-speechbrain contributors 2026
"""

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import Classifier


class SubCenterClassifier(Classifier):
    """Cosine classifier with K sub-centres per class (sub-center AAM-softmax).

    SpeechBrain's ECAPA ``Classifier`` has one centre per class; this subclass
    stores ``num_subcenters`` rows per class in the same ``weight`` matrix (row
    ``c * K + k`` is sub-centre k of class c) and returns, for each class, the
    largest cosine over its sub-centres.

    The weights are initialised as the reference's (K, E, classes) tensor:
    Xavier-uniform over that 3-d shape, whose fans (E x classes in, K x classes
    out) make each sub-centre about 8x shorter than Xavier over the 2-d matrix
    that ``Classifier`` draws (norm ~0.0105 instead of ~0.084 for E = 192,
    17,982 classes, K = 3). Only directions enter the cosines, but the norm
    sets how far each Adam step turns a centre.

    Arguments
    ---------
    input_size : int
        Embedding size.
    out_neurons : int
        Number of classes.
    num_subcenters : int
        Sub-centres K per class.

    Example
    -------
    >>> classifier = SubCenterClassifier(input_size=8, out_neurons=5, num_subcenters=3)
    >>> classifier.weight.shape
    torch.Size([15, 8])
    >>> cosine = classifier(torch.randn(4, 1, 8))
    >>> cosine.shape, bool(cosine.abs().max() <= 1.0 + 1e-6)
    (torch.Size([4, 1, 5]), True)
    """

    def __init__(self, input_size: int, out_neurons: int, num_subcenters: int = 3):
        super().__init__(input_size, out_neurons=out_neurons * num_subcenters)
        self.out_neurons = out_neurons
        self.num_subcenters = num_subcenters
        reference = torch.empty(num_subcenters, input_size, out_neurons)
        torch.nn.init.xavier_uniform_(reference)
        # Sub-centre k of class c (column c of slice k) -> row c * K + k.
        with torch.no_grad():
            self.weight.copy_(reference.permute(2, 0, 1).reshape(out_neurons * num_subcenters, input_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine to the nearest sub-centre of each class.

        Arguments
        ---------
        x : torch.Tensor
            Embeddings, (B, 1, D).

        Returns
        -------
        torch.Tensor
            Cosines, (B, 1, classes), computed in fp32.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            embedding = F.normalize(x.squeeze(1).float())
            centres = F.normalize(self.weight.float())
            cosine = F.linear(embedding, centres)
        cosine = cosine.view(-1, self.out_neurons, self.num_subcenters).amax(dim=2)
        return cosine.unsqueeze(1)
