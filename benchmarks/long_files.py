#!/usr/bin/env python3
"""Long files in evaluation: full length vs the chunking policy, in memory and in results.

The policy (``max_chunk_seconds`` of ``extract_embeddings``, README "Evaluate"):
a file longer than ``max_chunk_seconds`` is cut into ``ceil(duration /
max_chunk_seconds)`` equal chunks without overlap, embedded in batches of at
most ``max_batch_seconds`` of audio, and its embedding is the mean of the
chunks'. Two measurements:

1. Memory and time of one ``--seconds`` (145) file on CPU, fp32, with a
   random WavLM-Large-sized model (1024 wide, 24 layers, Large-type CNN) and
   the default LAP backend, embedded through ``extract_embeddings``: under the
   policy (``--chunk-seconds``, chunks one per batch and all in one batch)
   and at full length (``--full-seconds``, each a separate file length, since
   full length at 145 s needs about 10 GB). Each configuration runs in a fresh
   process; reported: the process's peak RSS (``ru_maxrss``, model included),
   the RSS of the loaded model before embedding, and the wall time.
2. The difference the policy makes to embeddings and EER, on synthetic long
   files (the demo corpus's utterances are 2-8 s, too short to be chunked):
   ``--speakers`` x ``--files`` harmonic voices of 10-20 s (pitches 6 Hz
   apart, so that the task is not trivial), all pairs as
   trials, a tiny random WavLM + LAP (speaker-discriminative on these voices,
   fast); cosine distance between each file's full-length and chunked
   embeddings, and the EER of both.

    python benchmarks/long_files.py                       # both parts
    python benchmarks/long_files.py --part difference     # part 2 only, ~1 min

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import functools
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile
import torch

from lap_speechbrain.demo.random_ssl import save_random_wavlm
from lap_speechbrain.inference import load_audio
from lap_speechbrain.lobes import SSLSpeakerEncoder
from lap_speechbrain.scoring import compute_eer, encoder_embedding_fn, extract_embeddings

SAMPLE_RATE = 16000
TINY = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
            conv_dim=(32,) * 7, do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["memory", "difference", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=145.0, help="length of the long file (part 1)")
    parser.add_argument("--chunk-seconds", type=float, default=30.0, help="max_chunk_seconds of the policy")
    parser.add_argument("--full-seconds", type=float, nargs="*", default=[30.0, 60.0],
                        help="file lengths embedded at full length (part 1)")
    parser.add_argument("--speakers", type=int, default=8, help="synthetic speakers (part 2)")
    parser.add_argument("--files", type=int, default=3, help="files per speaker (part 2)")
    parser.add_argument("--difference-chunks", type=float, nargs="+", default=[5.0, 2.5],
                        help="max_chunk_seconds values compared with full length (part 2)")
    return parser.parse_args()


def voice(speaker: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A harmonic voice with a speaker-dependent pitch and tilt, a slow pitch glide and noise."""
    time_axis = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    pitch = (110.0 + 6.0 * speaker) * (1 + 0.08 * np.sin(2 * np.pi * 0.3 * time_axis + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    harmonics = sum(np.sin(k * phase) / k ** (1 + 0.03 * speaker) for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * time_axis) ** 2
    return (0.1 * harmonics * envelope + 0.05 * rng.standard_normal(len(time_axis))).astype(np.float32)


def build_encoder(folder: Path, **config: object) -> SSLSpeakerEncoder:
    """A frozen, eval-mode encoder on a random WavLM saved in ``folder``."""
    from speechbrain.integrations.huggingface.wavlm import WavLM

    source = save_random_wavlm(folder, **config)
    return SSLSpeakerEncoder(WavLM(source, save_path=str(folder / "hf")), frozen=True).eval()


def current_rss() -> int:
    """Resident memory of this process, bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def embed_in_child(
    model_folder: str, audio: str, max_chunk_seconds: Optional[float], max_batch_seconds: float,
    queue: multiprocessing.Queue,
) -> None:
    """Child process: loads the Large-sized model, embeds ``audio`` once, reports memory and time."""
    torch.manual_seed(0)
    encoder = build_encoder(Path(model_folder), preset="large")
    loaded = current_rss()
    start = time.perf_counter()
    extract_embeddings(
        [("long", audio)], encoder_embedding_fn(encoder),
        functools.partial(load_audio, target_sample_rate=SAMPLE_RATE),
        max_chunk_seconds=max_chunk_seconds, max_batch_seconds=max_batch_seconds, desc="long file",
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put((loaded, peak, time.perf_counter() - start))


def memory_part(args: argparse.Namespace, workdir: Path) -> None:
    """Part 1: one long file, each configuration in a fresh process."""
    rng = np.random.default_rng(0)
    build_encoder(workdir / "large", preset="large")  # saved once; children load it
    files = {}
    for seconds in sorted({args.seconds, *args.full_seconds}):
        files[seconds] = str(workdir / f"long_{seconds:g}.wav")
        soundfile.write(files[seconds], voice(0, seconds, rng), SAMPLE_RATE)
    chunks = int(np.ceil(args.seconds / args.chunk_seconds))
    configurations: List[Tuple[str, float, Optional[float], float]] = [
        (f"policy: {chunks} chunks of {args.seconds / chunks:.1f} s, one per batch", args.seconds,
         args.chunk_seconds, args.chunk_seconds),
        *[(f"full length {seconds:g} s", seconds, None, 600.0) for seconds in args.full_seconds],
        (f"policy: {chunks} chunks of {args.seconds / chunks:.1f} s, one batch", args.seconds,
         args.chunk_seconds, 600.0),
    ]
    context = multiprocessing.get_context("spawn")
    print(f"Part 1: WavLM-Large-sized random model + LAP, fp32, CPU, {torch.get_num_threads()} threads")
    print(f"{'configuration':<45} {'file s':>7} {'peak RSS GB':>12} {'model GB':>9} {'above GB':>9} {'time s':>7}")
    for name, seconds, max_chunk, max_batch in configurations:
        queue = context.Queue()
        child = context.Process(target=embed_in_child,
                                args=(str(workdir / "large"), files[seconds], max_chunk, max_batch, queue))
        child.start()
        loaded, peak, wall = queue.get()
        child.join()
        print(f"{name:<45} {seconds:>7g} {peak / 1e9:>12.2f} {loaded / 1e9:>9.2f} "
              f"{(peak - loaded) / 1e9:>9.2f} {wall:>7.1f}")


def difference_part(args: argparse.Namespace, workdir: Path) -> None:
    """Part 2: embeddings and EER of synthetic long files, full length vs chunked."""
    rng = np.random.default_rng(1)
    utterances = []
    for speaker in range(args.speakers):
        for index in range(args.files):
            path = workdir / f"spk{speaker}_{index}.wav"
            soundfile.write(path, voice(speaker, float(rng.uniform(10, 20)), rng), SAMPLE_RATE)
            utterances.append((f"spk{speaker}/{index}", str(path)))
    torch.manual_seed(0)
    encoder = build_encoder(workdir / "tiny", **TINY)
    load = functools.partial(load_audio, target_sample_rate=SAMPLE_RATE)
    pairs = list(combinations(range(len(utterances)), 2))
    labels = np.array([int(utterances[a][0].split("/")[0] == utterances[b][0].split("/")[0]) for a, b in pairs])

    def evaluate(max_chunk_seconds: Optional[float]) -> Tuple[np.ndarray, float]:
        table = extract_embeddings(utterances, encoder_embedding_fn(encoder), load, batch_size=1,
                                   max_chunk_seconds=max_chunk_seconds, desc="synthetic files")
        normalized = table.embeddings / np.linalg.norm(table.embeddings, axis=1, keepdims=True)
        scores = np.array([normalized[a] @ normalized[b] for a, b in pairs])
        return normalized, compute_eer(scores, labels)[0]

    results: Dict[str, Tuple[np.ndarray, float]] = {"full length": evaluate(None)}
    for chunk in args.difference_chunks:
        results[f"chunks of <= {chunk:g} s"] = evaluate(chunk)
    full, _ = results["full length"]
    print(f"Part 2: {len(utterances)} synthetic files of 10-20 s ({args.speakers} speakers), "
          f"{len(pairs)} trials, tiny random WavLM + LAP")
    print(f"{'embedding':<20} {'EER %':>7} {'median cos dist':>16} {'max cos dist':>13}")
    for name, (embeddings, eer) in results.items():
        distance = 1 - (embeddings * full).sum(axis=1)
        print(f"{name:<20} {100 * eer:>7.2f} {statistics.median(distance):>16.2e} {distance.max():>13.2e}")


def main() -> None:
    args = parse_arguments()
    with tempfile.TemporaryDirectory() as workdir:
        if args.part in ("memory", "both"):
            memory_part(args, Path(workdir))
        if args.part in ("difference", "both"):
            difference_part(args, Path(workdir))


if __name__ == "__main__":
    main()
