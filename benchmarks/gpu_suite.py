#!/usr/bin/env python3
"""The GPU suite: the paper-scale figures one GPU should give, in one run (< 8 minutes on one GPU).

It reuses the other benchmarks' functions and prints, on ``--device``:

1. Training steps, bf16 autocast, random WavLM-Large-sized model (1024 x 24
   layers), batch 64 and 128 x 2 s crops, 17,982 classes: stage-1 step (frozen
   WavLM) and stage-2 step (joint) time and peak memory, each against its
   floor (frozen forward; WavLM forward + backward), for the LAP + ASTP
   backend and for the WeightedLayerSum + ECAPA-TDNN baseline
   (``benchmarks/training_step.py``).
2. Inference, batched vs one utterance at a time, for both front-end types
   (GroupNorm Base-type: also the masked batched path; Large-type CNN)
   (``benchmarks/inference_speed.py``).
3. AS-Norm at VoxCeleb1-E scale (579,818 trials, 145,000 utterances, 5,994 x
   192 cohort, top-600): the torch implementation on the device against the
   numpy one on the CPU (``benchmarks/scoring_speed.py``).

``--small`` shrinks every size (tiny WavLM, batch 2 x 0.5 s, a few
utterances, a 2,000-trial AS-Norm) so the whole suite runs on a CPU in
seconds: the test suite runs ``--device cpu --small``.

    python benchmarks/gpu_suite.py                         # on a GPU
    python benchmarks/gpu_suite.py --device cpu --small    # what the tests run

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from speechbrain.integrations.huggingface.wavlm import WavLM
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.nnet.losses import LogSoftmaxWrapper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inference_speed  # noqa: E402 (the sibling benchmarks are scripts, not a package)
import scoring_speed  # noqa: E402
import training_step  # noqa: E402

from lap_speechbrain.demo.random_ssl import save_random_wavlm  # noqa: E402
from lap_speechbrain.lobes import SSLSpeakerEncoder, WeightedLayerSum  # noqa: E402
from lap_speechbrain.nnet import AdditiveAngularMarginInterTopK, SubCenterClassifier  # noqa: E402
from lap_speechbrain.scoring import as_norm, normalize_embeddings, top_n_stats, trial_scores  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7)
FULL = dict(ecapa_channels=(512, 512, 512, 512, 1536), batches=(64, 128), seconds=2.0, classes=3 * 5994, repeats=3, warmup=1, utterances=32, batch=16,
            min_seconds=2.0, max_seconds=8.0, trials=579818, scoring_utterances=145000, cohort=5994, top_n=600)
SMALL = dict(ecapa_channels=(16, 16, 16, 16, 48), batches=(2,), seconds=0.5, classes=10, repeats=1, warmup=0, utterances=3, batch=3,
             min_seconds=0.5, max_seconds=1.0, trials=2000, scoring_utterances=500, cohort=50, top_n=10)


class LayerSumECAPA(nn.Module):
    """The baseline back end: WeightedLayerSum of the (L, B, T, D) states into ECAPA-TDNN, (B, 1, E)."""

    def __init__(self, num_layers: int, input_size: int, channels: tuple, embedding_dim: int = 192):
        super().__init__()
        self.layer_sum = WeightedLayerSum(num_layers)
        self.ecapa = ECAPA_TDNN(input_size, channels=list(channels), lin_neurons=embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, hidden_states: torch.Tensor, lengths=None) -> torch.Tensor:
        return self.ecapa(self.layer_sum(hidden_states), lengths)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes (a CPU test of the suite)")
    return parser.parse_args()


def training_part(sizes: dict, device: str, small: bool, workdir: Path) -> None:
    """Stage-1 and stage-2 steps, both back ends, each batch size, bf16 autocast."""
    training_step.clock = time.perf_counter if device.startswith("cuda") else time.process_time
    torch.manual_seed(0)
    folder = save_random_wavlm(workdir / "large", **(TINY if small else {"preset": "large"}))
    ssl = WavLM(folder, save_path=str(workdir / "cache"))
    loss_fn = LogSoftmaxWrapper(AdditiveAngularMarginInterTopK(margin=0.2, scale=30.0, top_k=5, top_k_penalty=0.06))
    device_type = torch.device(device).type
    autocast = (lambda: torch.autocast(device_type, dtype=torch.bfloat16)) if device_type == "cuda" else nullcontext
    precision = "bf16" if device_type == "cuda" else "fp32 (bf16 is emulated on CPUs)"
    print(f"1. training steps: WavLM L={ssl.model.config.num_hidden_layers + 1} D={ssl.model.config.hidden_size}, "
          f"{sizes['seconds']:g} s crops, {sizes['classes']} classes, {precision}, median of {sizes['repeats']}")
    print(f"{'back end':<22} {'batch':>5} {'stage':>5} {'step ms':>9} {'floor ms':>9} {'x floor':>8} {'peak MiB':>9}")
    for name in ("LAP + ASTP", "WeightedLayerSum+ECAPA"):
        encoder = SSLSpeakerEncoder(ssl, frozen=True)
        if name != "LAP + ASTP":
            encoder.backend = LayerSumECAPA(encoder.num_layers, encoder.input_size, sizes["ecapa_channels"])
        encoder = encoder.to(device)
        classifier = SubCenterClassifier(encoder.backend.embedding_dim, sizes["classes"]).to(device)
        for batch in sizes["batches"]:
            wavs = (0.1 * torch.randn(batch, int(sizes["seconds"] * 16000))).to(device)
            labels = torch.randint(sizes["classes"], (batch, 1), device=device)
            results = training_step.stage_steps(encoder, classifier, loss_fn, wavs, labels, autocast, device,
                                                sizes["repeats"], sizes["warmup"])
            for stage, floor in ((1, "forward"), (2, "forward_backward")):
                print(f"{name:<22} {batch:>5} {stage:>5} {results[f'stage{stage}'] * 1000:>9.1f} "
                      f"{results[floor] * 1000:>9.1f} {results[f'ratio{stage}']:>8.2f} "
                      f"{results[f'memory{stage}']:>9.0f}")
        del encoder, classifier
        if device_type == "cuda":
            torch.cuda.empty_cache()


def inference_part(sizes: dict, device: str, small: bool, workdir: Path) -> None:
    """Batched vs one at a time, both front-end types."""
    waveforms = inference_speed.random_waveforms(sizes["utterances"], sizes["min_seconds"], sizes["max_seconds"])
    print(f"2. inference: {sizes['utterances']} utterances of {sizes['min_seconds']:g}-{sizes['max_seconds']:g} s, "
          f"batch {sizes['batch']}, WavLM {'tiny' if small else 'Base+'}-sized, median of {sizes['repeats']}")
    print(f"{'front end':<10} {'mode':<8} {'audio s / s':>11} {'x single':>9} {'peak MiB':>9} {'max |diff|':>11}")
    for front_end in sorted(inference_speed.FRONT_ENDS):
        rows = inference_speed.compare_modes(workdir, front_end, waveforms, sizes["batch"], sizes["repeats"],
                                             torch.device(device), **(TINY if small else {}))
        for mode, speed, ratio, peak, difference in rows:
            print(f"{front_end:<10} {mode:<8} {speed:>11.1f} {ratio:>9.2f} {peak:>9.0f} {difference:>11.2e}")


def scoring_part(sizes: dict, device: str) -> None:
    """AS-Norm: the torch implementation on the device vs numpy on the CPU."""
    rng = np.random.default_rng(0)
    utterances = normalize_embeddings(rng.standard_normal((sizes["scoring_utterances"], 192), dtype=np.float32))
    cohort = normalize_embeddings(rng.standard_normal((sizes["cohort"], 192), dtype=np.float32))
    enrol = rng.integers(0, sizes["scoring_utterances"], sizes["trials"])
    test = rng.integers(0, sizes["scoring_utterances"], sizes["trials"])

    def numpy_as_norm():
        mean, std = top_n_stats(utterances, cohort, sizes["top_n"], 4096)
        raw = trial_scores(utterances, enrol, test)
        return as_norm(raw, (mean[enrol], std[enrol]), (mean[test], std[test]))

    inputs = [torch.from_numpy(array).to(device) for array in (utterances, cohort, enrol, test)]

    def device_as_norm():
        scores = scoring_speed.torch_as_norm(inputs[0], inputs[1], sizes["top_n"], 4096, inputs[2], inputs[3])
        return scores.cpu().numpy()

    numpy_s, device_s, (ours, theirs) = scoring_speed.interleaved(numpy_as_norm, device_as_norm, sizes["repeats"])
    print(f"3. AS-Norm, {sizes['trials']} trials over {sizes['scoring_utterances']} utterances, cohort "
          f"{sizes['cohort']} x 192, top-{sizes['top_n']}: numpy (CPU) {numpy_s:.2f} s, torch on {device} "
          f"{device_s:.2f} s, ratio {numpy_s / device_s:.2f}x; largest difference {np.abs(ours - theirs).max():.1e}")


def main() -> None:
    args = parse_arguments()
    sizes = SMALL if args.small else FULL
    start = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"GPU suite on {args.device} ({name}), {'small' if args.small else 'full'} sizes")
    with tempfile.TemporaryDirectory() as workdir:
        training_part(sizes, args.device, args.small, Path(workdir))
        inference_part(sizes, args.device, args.small, Path(workdir))
    scoring_part(sizes, args.device)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
