"""Inference speed of an exported LAP model: batched (length-sorted) vs one utterance at a time.

Builds randomly initialised WavLM Base+-sized models (768 wide, 12 layers, the
default LAP backend: 16 heads, 512 channels, 192-d), exports each with
``lap_speechbrain.export.folder``, loads it with
``EncoderClassifier.from_hparams`` and embeds the same utterances of random
lengths two ways:

- ``single``: ``encode_batch`` on each utterance alone (no padding);
- ``batched``: utterances sorted by length, ``--batch`` per padded batch with
  relative lengths.

Two front ends are measured, because padding is handled differently:

- ``base-plus``: the released Base+ shape, GroupNorm in the first CNN layer.
  Its output depends on padding, so ``SSLSpeakerEncoder`` runs a padded batch
  either one utterance at a time inside the SSL model (``batched``: batching
  then only batches the LAP backend) or in one call with that GroupNorm's
  statistics over each utterance's valid frames (``masked``); both are
  measured, in the same run.
- ``large-cnn``: the same width and depth with the Large-type CNN
  (LayerNorm, stable layer norm), which runs padded batches in one call.

Reported: seconds of audio embedded per second of wall time (median over
``--runs``), the batched/single ratio, the largest embedding difference
between the two ways, and the peak memory above the loaded model (CPU: RSS
sampled every 2 ms; CUDA: ``max_memory_allocated``).

Usage
-----
    python benchmarks/inference_speed.py
    python benchmarks/inference_speed.py --utterances 32 --batch 8 --device cuda

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from speechbrain.inference.speaker import EncoderClassifier
from transformers import WavLMConfig

from lap_speechbrain.demo.random_ssl import WAVLM_PRESETS, save_random_wavlm
from lap_speechbrain.export.folder import export_model
from lap_speechbrain.lobes import SSLSpeakerEncoder
from lap_speechbrain.nnet import SubCenterClassifier

SAMPLE_RATE = 16000
FRONT_ENDS = {
    "base-plus": {},
    "large-cnn": dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True),
}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=12, help="number of utterances")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="shortest utterance")
    parser.add_argument("--max-seconds", type=float, default=6.0, help="longest utterance")
    parser.add_argument("--batch", type=int, default=8, help="utterances per padded batch")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--front-ends", nargs="+", choices=sorted(FRONT_ENDS), default=sorted(FRONT_ENDS))
    return parser.parse_args()


def export_random_model(workdir: Path, front_end: str, **size: int) -> Path:
    """A Base+-sized random WavLM (``size``: WavLMConfig overrides) with the default LAP backend, exported."""
    from speechbrain.integrations.huggingface.wavlm import WavLM

    source = save_random_wavlm(
        workdir / f"wavlm-{front_end}", preset="base-plus", **{**FRONT_ENDS[front_end], **size}
    )
    encoder = SSLSpeakerEncoder(WavLM(source, save_path=str(workdir / "hf")), frozen=True).eval()
    config = WavLMConfig.from_pretrained(source).to_dict()
    classifier = SubCenterClassifier(encoder.backend.embedding_dim, 10)
    return export_model(
        workdir / f"exported-{front_end}", ssl_config=config, backend_config={},
        embedding_state=encoder.state_dict(), classifier_state=classifier.state_dict(),
        labels=[f"spk{i}" for i in range(10)], threshold=None,
    )


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator, or sampled process RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._start)
            time.sleep(0.002)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()


def embed_single(model: EncoderClassifier, waveforms: List[torch.Tensor]) -> torch.Tensor:
    """One ``encode_batch`` per utterance."""
    return torch.cat([model.encode_batch(w[None]) for w in waveforms]).squeeze(1)


def embed_batched(model: EncoderClassifier, waveforms: List[torch.Tensor], batch: int) -> torch.Tensor:
    """Length-sorted padded batches; embeddings returned in input order."""
    order = sorted(range(len(waveforms)), key=lambda i: -waveforms[i].numel())
    out = [None] * len(waveforms)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        longest = waveforms[chunk[0]].numel()
        wavs = torch.zeros(len(chunk), longest)
        for row, index in enumerate(chunk):
            wavs[row, : waveforms[index].numel()] = waveforms[index]
        lengths = torch.tensor([waveforms[i].numel() / longest for i in chunk])
        embeddings = model.encode_batch(wavs, lengths).squeeze(1)
        for row, index in enumerate(chunk):
            out[index] = embeddings[row]
    return torch.stack(out)


def measure(
    steps: Dict[str, Callable[[], torch.Tensor]], runs: int, device: torch.device
) -> Dict[str, Tuple[float, int, torch.Tensor]]:
    """Median seconds, peak memory of the first (untimed) run and the output of each step.

    The timed runs alternate between the steps, so that a change of machine
    load affects them alike.
    """
    results = {}
    for name, step in steps.items():
        with PeakMemory(device) as memory:
            output = step()
        results[name] = ([], memory.peak, output)
    for _ in range(runs):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            results[name][0].append(time.perf_counter() - start)
    return {name: (statistics.median(times), peak, output) for name, (times, peak, output) in results.items()}


def embed_masked(model: EncoderClassifier, waveforms: List[torch.Tensor], batch: int) -> torch.Tensor:
    """:func:`embed_batched` with a GroupNorm front end run batched on valid-frame statistics."""
    encoder = model.mods.embedding_model
    default = encoder.group_norm_batching
    encoder.group_norm_batching = "masked"
    try:
        return embed_batched(model, waveforms, batch)
    finally:
        encoder.group_norm_batching = default


def random_waveforms(count: int, min_seconds: float, max_seconds: float) -> List[torch.Tensor]:
    """``count`` noise waveforms of lengths uniform in [min_seconds, max_seconds] (seeded)."""
    generator = torch.Generator().manual_seed(0)
    seconds = min_seconds + (max_seconds - min_seconds) * torch.rand(count, generator=generator)
    return [0.1 * torch.randn(int(s * SAMPLE_RATE), generator=generator) for s in seconds]


def compare_modes(
    workdir: Path,
    front_end: str,
    waveforms: List[torch.Tensor],
    batch: int,
    runs: int,
    device: torch.device,
    **size: int,
) -> List[Tuple[str, float, float, float, float]]:
    """Exports a random model of ``front_end`` (``size``: WavLMConfig overrides) and times its embedding modes.

    Returns
    -------
    list of tuple
        ``(mode, audio seconds per second, speed vs single, peak MiB, max |diff| vs single)``.
    """
    folder = export_random_model(workdir, front_end, **size)
    model = EncoderClassifier.from_hparams(source=str(folder), run_opts={"device": str(device)})
    steps = {"single": lambda: embed_single(model, waveforms),
             "batched": lambda: embed_batched(model, waveforms, batch)}
    if model.mods.embedding_model.pads_by_group_norm:
        steps["masked"] = lambda: embed_masked(model, waveforms, batch)
    with torch.no_grad():
        results = measure(steps, runs, device)
    audio = sum(waveform.numel() for waveform in waveforms) / SAMPLE_RATE
    single_time, _, single = results["single"]
    return [
        (mode, audio / seconds, single_time / seconds, peak / 2**20, float((output - single).abs().max()))
        for mode, (seconds, peak, output) in results.items()
    ]


def main() -> None:
    args = parse_arguments()
    device = torch.device(args.device)
    waveforms = random_waveforms(args.utterances, args.min_seconds, args.max_seconds)
    audio = sum(waveform.numel() for waveform in waveforms) / SAMPLE_RATE
    print(f"{args.utterances} utterances, {args.min_seconds:g}-{args.max_seconds:g} s, {audio:.1f} s of audio; "
          f"batch {args.batch}; device {device}; torch threads {torch.get_num_threads()}; "
          f"WavLM Base+ shape {WAVLM_PRESETS['base-plus']['hidden_size']} x "
          f"{WAVLM_PRESETS['base-plus']['num_hidden_layers']} layers; median of {args.runs} runs")
    print(f"{'front end':<10} {'mode':<8} {'audio s / s':>11} {'x single':>9} {'peak MiB':>9} {'max |diff|':>11}")
    with tempfile.TemporaryDirectory() as workdir:
        for front_end in args.front_ends:
            for mode, speed, ratio, peak, difference in compare_modes(
                Path(workdir), front_end, waveforms, args.batch, args.runs, device
            ):
                shown = "" if mode == "single" else f"{difference:.2e}"
                print(f"{front_end:<10} {mode:<8} {speed:>11.1f} {ratio:>9.2f} {peak:>9.0f} {shown:>11}")


if __name__ == "__main__":
    main()
