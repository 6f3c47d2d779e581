#!/usr/bin/env python3
"""Benchmark: the paper's eight back ends on WavLM Large, against the frozen WavLM forward.

For each combination of layer aggregation (``lap``, ``superb``) and speaker
network (``astp``, ``ecapa-tdnn``, ``x-vector``, ``mhfa``), built by the
recipe's own ``SSLSpeakerEncoder`` on a randomly initialised WavLM-Large-shaped
model with a sub-centre AAM classifier (VoxCeleb2 x 3 speeds by default),
times alternately with the frozen WavLM forward

- a stage-1 step (frozen WavLM forward, back end + classifier forward and
  backward, Adam step), and
- a stage-2 step (everything trains: WavLM forward and backward too),

each reported as the median of the paired ratios to the frozen WavLM forward,
with the back end's parameter count and the peak memory of each stage. Every
system runs in its own process, so the peak memory (CUDA: allocated; CPU: the
process's peak RSS, the WavLM weights and, in stage 2, their Adam state
included) is its own. LayerDrop and SpecAugment are off, so every step does
the same work.

    python benchmarks/comparison_speed.py --threads 1 --batch 2 --repeats 2
    python benchmarks/comparison_speed.py --device cuda --dtype bf16 --batch 64

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from training_step import CLOCK, DTYPES, paired_times, peak_memory_mb

SYSTEMS = [(aggregation, network) for aggregation in ("lap", "superb")
           for network in ("astp", "ecapa-tdnn", "x-vector", "mhfa")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_folder", default=str(Path(tempfile.gettempdir()) / "lap_random_wavlm"),
                        help="where the random WavLM Large is saved (reused across runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="crop length")
    parser.add_argument("--classes", type=int, default=3 * 5994, help="classifier classes (VoxCeleb2 x3 speeds)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--systems", nargs="*", default=[f"{a}+{n}" for a, n in SYSTEMS],
                        help="aggregation+network pairs to run (default: all eight)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one system, JSON out
    return parser.parse_args()


def measure(args: argparse.Namespace) -> dict:
    """Times one system (``args.systems[0]``) in this process."""
    import torch
    from speechbrain.integrations.huggingface.wavlm import WavLM
    from speechbrain.nnet.losses import LogSoftmaxWrapper

    import training_step
    from lap_speechbrain.demo.random_ssl import save_random_wavlm
    from lap_speechbrain.lobes import SSLSpeakerEncoder
    from lap_speechbrain.nnet import AdditiveAngularMarginInterTopK, SubCenterClassifier

    aggregation, network = args.systems[0].split("+")
    if args.threads:
        torch.set_num_threads(args.threads)
    training_step.clock = CLOCK["wall" if args.device.startswith("cuda") else "process"]
    torch.manual_seed(0)
    folder = save_random_wavlm(Path(args.model_folder) / "large", preset="large")
    ssl = WavLM(folder, save_path=str(Path(args.model_folder) / "cache"))
    encoder = SSLSpeakerEncoder(ssl, frozen=True, aggregation=aggregation, network=network).to(args.device)
    classifier = SubCenterClassifier(encoder.embedding_dim, args.classes).to(args.device)
    loss_fn = LogSoftmaxWrapper(AdditiveAngularMarginInterTopK(margin=0.2, scale=30.0, top_k=5, top_k_penalty=0.06))
    wavs = (0.1 * torch.randn(args.batch, int(args.seconds * 16000))).to(args.device)
    labels = torch.randint(args.classes, (args.batch, 1), device=args.device)
    dtype = DTYPES[args.dtype]
    device_type = torch.device(args.device).type

    def autocast():
        return torch.autocast(device_type, dtype=dtype) if dtype else nullcontext()

    def frozen_forward():
        training = encoder.ssl_model.training  # in stage 2 the SSL model trains; the baseline is eval
        encoder.ssl_model.eval()
        with torch.no_grad(), autocast():
            encoder.hidden_states(wavs)
        encoder.ssl_model.train(training)

    encoder.train()
    classifier.train()
    step = training_step.training_step_fn(encoder, classifier, loss_fn, wavs, labels, autocast)
    forward_s, stage1_s, ratio1 = paired_times(frozen_forward, step, args.device, args.repeats, args.warmup)
    memory1 = peak_memory_mb(args.device)
    encoder.set_ssl_frozen(False)
    encoder.train()
    step = training_step.training_step_fn(encoder, classifier, loss_fn, wavs, labels, autocast)
    _, stage2_s, ratio2 = paired_times(frozen_forward, step, args.device, args.repeats, args.warmup)
    return {
        "system": args.systems[0],
        "parameters": sum(p.numel() for p in encoder.backend.parameters()),
        "frozen_forward_ms": 1000 * forward_s,
        "stage1_ms": 1000 * stage1_s,
        "stage1_ratio": ratio1,
        "stage2_ms": 1000 * stage2_s,
        "stage2_ratio": ratio2,
        "peak_stage1_mib": memory1,
        "peak_stage2_mib": peak_memory_mb(args.device),
    }


def main() -> None:
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return
    options = ["--model_folder", args.model_folder, "--device", args.device, "--dtype", args.dtype,
               "--batch", str(args.batch), "--seconds", str(args.seconds), "--classes", str(args.classes),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    print(f"WavLM-Large-shaped random model, batch {args.batch} x {args.seconds:g} s, {args.classes} classes, "
          f"{args.device} {args.dtype}, {args.threads or 'default'} threads, "
          f"{'wall' if args.device.startswith('cuda') else 'process CPU'} time, median of {args.repeats} "
          f"paired ratios; peak memory: {'allocated' if args.device.startswith('cuda') else 'process RSS'}")
    print()
    print("| aggregation + network | back-end parameters | stage-1 step / frozen fwd | stage-2 step / frozen fwd "
          "| peak memory stage 1 / 2 (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for system in args.systems:
        result = subprocess.run([sys.executable, __file__, "--one", "--systems", system, *options],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"| {system} | failed: {result.stderr.strip().splitlines()[-1:]} | | | |")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {system} | {row['parameters']:,} | {row['stage1_ratio']:.2f}x | {row['stage2_ratio']:.2f}x "
              f"| {row['peak_stage1_mib']:,.0f} / {row['peak_stage2_mib']:,.0f} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
