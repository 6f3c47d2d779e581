"""Speaker diarization time with pyannote.audio and a LAP embedding, per pipeline step.

Runs pyannote.audio's ``SpeakerDiarization`` (agglomerative clustering) on a
synthetic two-speaker conversation (espeak-ng voices taking turns) with

- ``lap``: a randomly initialised WavLM Base+-sized LAP model (default
  backend, 192-d), exported and loaded through
  :class:`lap_speechbrain.integrations.pyannote.LAPPyannoteEmbedding`;
- ``resnet34``: pyannote's own embedding architecture (WeSpeaker ResNet34,
  random weights), for comparison.

The segmentation network is a randomly initialised ``PyanNet`` of the size and
output of pyannote's released segmentation model (10 s chunks, 3 speakers, 2 at
once); no hub weights are available offline. Random weights cost the same
compute as trained ones, but the segmentation they produce is arbitrary, which
changes how many (chunk, speaker) embeddings are computed: the script prints
that count next to the times. Times are wall-clock seconds of one run after a
warm-up run on 10 s of audio, with the process's CPU time (all threads), which
varies less than wall time on a shared machine.

Usage
-----
    python benchmarks/diarization_speed.py --seconds 60
    python benchmarks/diarization_speed.py --seconds 60 --embedding-batch 8 --device cuda

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from inference_speed import export_random_model  # benchmarks/ is the script's folder
from pyannote.audio.core.plda import PLDA
from pyannote.audio.core.task import Problem, Resolution, Specifications
from pyannote.audio.models.embedding import WeSpeakerResNet34
from pyannote.audio.models.segmentation import PyanNet
from pyannote.audio.pipelines import SpeakerDiarization

from lap_speechbrain.demo.synthetic_speech import sample_speakers, speak_duration
from lap_speechbrain.integrations.pyannote import LAPPyannoteEmbedding

SAMPLE_RATE = 16000
STEPS = ("segmentation", "embeddings", "discrete_diarization")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the conversation")
    parser.add_argument("--embedding-batch", type=int, default=1,
                        help="pyannote's embedding_batch_size (its default: 1)")
    parser.add_argument("--embeddings", nargs="+", choices=("lap", "resnet34"), default=["lap", "resnet34"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def conversation(seconds: float, seed: int) -> torch.Tensor:
    """(1, N) two synthetic speakers taking turns of 1-6 s with 0.2-0.8 s pauses."""
    rng = np.random.default_rng(seed)
    speakers = sample_speakers(rng, 2)
    pieces, total, turn = [], 0, 0
    while total < seconds * SAMPLE_RATE:
        speech, _ = speak_duration(speakers[turn % 2], float(rng.uniform(1.0, 6.0)), rng)
        pause = np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), dtype=np.float32)
        pieces += [speech, pause]
        total += len(speech) + len(pause)
        turn += 1
    wav = np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]
    return torch.from_numpy(wav + 0.003 * rng.standard_normal(len(wav)).astype(np.float32))[None]


def released_size_segmentation(seed: int) -> PyanNet:
    """PyanNet with its default sizes and the released model's powerset output, random weights."""
    torch.manual_seed(seed)
    model = PyanNet()
    model.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=10.0,
        classes=["speaker#1", "speaker#2", "speaker#3"], powerset_max_classes=2, permutation_invariant=True,
    )
    model.setup()
    return model.eval()


def unused_plda(folder: Path) -> PLDA:
    """SpeakerDiarization loads a PLDA even for agglomerative clustering, which ignores it."""
    np.savez(folder / "xvec_transform.npz", mean1=np.zeros(1), mean2=np.zeros(1), lda=np.eye(1))
    np.savez(folder / "plda.npz", mu=np.zeros(1), tr=np.eye(1), psi=np.ones(1))
    return PLDA(folder / "xvec_transform.npz", folder / "plda.npz")


def run(pipeline: SpeakerDiarization, waveform: torch.Tensor) -> Dict[str, float]:
    """Seconds per step of one diarization, and the number of embeddings computed."""
    marks = {"start": time.perf_counter()}
    cpu_start = time.process_time()
    counts = {}

    def hook(step, artifact, file=None, total=None, completed=None):
        if completed is None and step in STEPS:
            marks[step] = time.perf_counter()
            if step == "embeddings":
                counts["finite"] = int(np.isfinite(artifact).all(axis=-1).sum())
                counts["rows"] = int(np.prod(artifact.shape[:2]))

    pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE}, num_speakers=2, hook=hook)
    end = time.perf_counter()
    counts["cpu"] = time.process_time() - cpu_start
    times = {"segmentation": marks["segmentation"] - marks["start"],
             "embeddings": marks["embeddings"] - marks["segmentation"],
             "rest": end - marks["embeddings"], "total": end - marks["start"]}
    return {**times, **counts}


def main() -> None:
    args = parse_arguments()
    device = torch.device(args.device)
    waveform = conversation(args.seconds, args.seed)
    print(f"{args.seconds:.0f} s two-speaker conversation, device {device}, "
          f"{torch.get_num_threads()} torch threads, embedding_batch_size {args.embedding_batch}")
    print("| embedding | load s | segmentation s | embeddings s (finite/rows) | clustering + rest s "
          "| total s | x real time | CPU s (all threads) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.embeddings:
            start = time.perf_counter()
            if name == "lap":
                embedding = LAPPyannoteEmbedding(export_random_model(Path(workdir), "base-plus"))
            else:
                torch.manual_seed(args.seed)
                embedding = WeSpeakerResNet34().eval()
            load = time.perf_counter() - start
            pipeline = SpeakerDiarization(
                segmentation=released_size_segmentation(args.seed), embedding=embedding,
                embedding_batch_size=args.embedding_batch, clustering="AgglomerativeClustering",
                plda=unused_plda(Path(workdir)),
            )
            pipeline.instantiate({"segmentation": {"min_duration_off": 0.0},
                                  "clustering": {"method": "centroid", "min_cluster_size": 12, "threshold": 0.7}})
            pipeline.to(device)
            run(pipeline, waveform[:, : 10 * SAMPLE_RATE])  # warm-up
            times = run(pipeline, waveform)
            print(f"| {name} | {load:.1f} | {times['segmentation']:.1f} | {times['embeddings']:.1f} "
                  f"({times['finite']}/{times['rows']}) | {times['rest']:.1f} | {times['total']:.1f} "
                  f"| {args.seconds / times['total']:.2f} | {times['cpu']:.0f} |")


if __name__ == "__main__":
    main()
