#!/usr/bin/env python3
"""Benchmark: cost of a training step of each stage against the SSL model alone.

On a randomly initialised WavLM (Base+ shapes by default) and a small batch of
random crops, times alternately (so that load on a shared machine affects both
sides of a ratio alike)

- a stage-1 step (frozen WavLM forward, LAP + ASTP + classifier forward and
  backward, Adam step) against the frozen WavLM forward alone (the floor of
  stage 1; the target is at most 1.3x);
- a stage-2 step (everything trains) against the WavLM forward + backward alone;

and reports the medians, the median of the paired ratios and the peak memory
(CUDA: allocated; CPU: the process's peak RSS so far).

    python benchmarks/training_step.py --threads 1           # CPU, fp32
    python benchmarks/training_step.py --device cuda --dtype bf16 --batch 64
    python benchmarks/training_step.py --profile             # time the parts of a stage-1 step

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from speechbrain.integrations.huggingface.wavlm import WavLM
from speechbrain.nnet.losses import LogSoftmaxWrapper

from lap_speechbrain.demo.random_ssl import save_random_wavlm
from lap_speechbrain.lobes import SSLSpeakerEncoder
from lap_speechbrain.nnet import AdditiveAngularMarginInterTopK, SubCenterClassifier

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base-plus", choices=["base-plus", "large"])
    parser.add_argument("--model_folder", default=str(Path(tempfile.gettempdir()) / "lap_random_wavlm"),
                        help="where the random WavLM is saved (reused across runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="crop length")
    parser.add_argument("--classes", type=int, default=3 * 5994, help="classifier classes (VoxCeleb2 x3 speeds)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default); 1 avoids OpenMP spinning on a busy machine")
    parser.add_argument("--clock", default="auto", choices=["auto", *CLOCK],
                        help="auto: the process's CPU time on CPU, wall time on CUDA")
    parser.add_argument("--profile", action="store_true", help="also time the parts of a stage-1 step")
    return parser.parse_args()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# On a shared CPU machine the wall clock measures the other processes' load as
# much as ours; the process's CPU time (all its threads) does not.
CLOCK = {"wall": time.perf_counter, "process": time.process_time}
clock = time.perf_counter


def timed(function, device: str) -> float:
    synchronize(device)
    start = clock()
    function()
    synchronize(device)
    return clock() - start


def paired_times(baseline, step, device: str, repeats: int, warmup: int):
    """Median times of ``baseline`` and ``step`` and the median of their per-pair ratio.

    The two are timed alternately, so a change of load on a shared machine
    affects both sides of each ratio alike.
    """
    for _ in range(warmup):
        baseline()
        step()
    pairs = [(timed(baseline, device), timed(step, device)) for _ in range(repeats)]
    return (
        statistics.median(b for b, _ in pairs),
        statistics.median(s for _, s in pairs),
        statistics.median(s / b for b, s in pairs),
    )


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def profile_stage1(encoder, classifier, loss_fn, wavs, labels, frozen_forward, autocast, args) -> None:
    """Times the parts of a stage-1 step, each paired with the frozen forward.

    The classifier (sub-centres x classes x embedding) and Adam cost the same
    whatever the batch, so at a small batch they weigh far more than in
    training; LAP+ASTP scale with the batch like the forward does.
    """
    with torch.no_grad(), autocast():
        states = encoder.hidden_states(wavs)
    embedding_dim = encoder.backend.embedding_dim
    parameters = [p for m in (encoder, classifier) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-5)

    def backend_forward_backward():
        with autocast():
            embeddings = encoder.backend(states)
        embeddings.float().square().mean().backward()

    def head_forward_backward():
        embeddings = torch.randn(len(wavs), 1, embedding_dim, device=wavs.device, requires_grad=True)
        loss_fn(classifier(embeddings), labels).backward()

    def optimizer_step():
        optimizer.step()

    backend_forward_backward()
    head_forward_backward()
    parts = {
        "LAP+ASTP forward+backward": backend_forward_backward,
        "classifier+loss fwd+bwd": head_forward_backward,
        "Adam step": optimizer_step,
    }
    for name, part in parts.items():
        _, seconds, ratio = paired_times(frozen_forward, part, args.device, args.repeats, 0)
        print(f"{name:>28}: {seconds * 1000:9.1f} ms = {ratio:.2f} x the frozen forward")
    optimizer.zero_grad(set_to_none=True)


def training_step_fn(encoder, classifier, loss_fn, wavs, labels, autocast):
    """One training step (forward, loss, backward, Adam) over what currently requires grad."""
    parameters = [p for m in (encoder, classifier) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=1e-5)

    def step():
        with autocast():
            loss = loss_fn(classifier(encoder(wavs)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def stage_steps(encoder, classifier, loss_fn, wavs, labels, autocast, device: str, repeats: int, warmup: int) -> dict:
    """Times a stage-1 and a stage-2 step against their floors; peak memory of each stage.

    Leaves ``encoder`` frozen, as it found it.

    Returns
    -------
    dict
        ``forward``, ``stage1``, ``ratio1``, ``memory1``, ``forward_backward``,
        ``stage2``, ``ratio2``, ``memory2`` (seconds, paired ratios, MiB; on CUDA
        the peak of each stage alone, on CPU the process's peak so far).
    """
    ssl = encoder.ssl_model

    def frozen_forward():
        with torch.no_grad(), autocast():
            ssl(wavs)

    def ssl_forward_backward():
        with autocast():
            states = ssl(wavs)
        states.float().square().mean().backward()
        ssl.zero_grad(set_to_none=True)

    encoder.train()
    classifier.train()
    results = {}
    for stage, floor, frozen in ((1, frozen_forward, True), (2, ssl_forward_backward, False)):
        encoder.set_ssl_frozen(frozen)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        step = training_step_fn(encoder, classifier, loss_fn, wavs, labels, autocast)
        floor_s, step_s, ratio = paired_times(floor, step, device, repeats, warmup)
        results.update({
            ("forward" if stage == 1 else "forward_backward"): floor_s,
            f"stage{stage}": step_s, f"ratio{stage}": ratio, f"memory{stage}": peak_memory_mb(device),
        })
    encoder.set_ssl_frozen(True)
    return results


def main() -> None:
    args = parse_args()
    global clock
    if args.threads:
        torch.set_num_threads(args.threads)
    clock_name = args.clock if args.clock != "auto" else ("wall" if args.device.startswith("cuda") else "process")
    clock = CLOCK[clock_name]
    torch.manual_seed(0)
    folder = save_random_wavlm(Path(args.model_folder) / args.preset, preset=args.preset)
    ssl = WavLM(folder, save_path=str(Path(args.model_folder) / "cache"))
    encoder = SSLSpeakerEncoder(ssl, frozen=True).to(args.device)
    classifier = SubCenterClassifier(encoder.backend.embedding_dim, args.classes).to(args.device)
    loss_fn = LogSoftmaxWrapper(AdditiveAngularMarginInterTopK(margin=0.2, scale=30.0, top_k=5, top_k_penalty=0.06))
    wavs = (0.1 * torch.randn(args.batch, int(args.seconds * 16000))).to(args.device)
    labels = torch.randint(args.classes, (args.batch, 1), device=args.device)
    device_type = torch.device(args.device).type
    dtype = DTYPES[args.dtype]
    autocast = (lambda: torch.autocast(device_type, dtype=dtype)) if dtype else nullcontext
    print(f"{args.preset}: L={encoder.num_layers} D={encoder.input_size}, batch {args.batch} x {args.seconds} s, "
          f"{args.device} {args.dtype}, {torch.get_num_threads()} threads, {clock_name} time, median of {args.repeats}")

    if args.profile:
        def frozen_forward():
            with torch.no_grad(), autocast():
                ssl(wavs)

        profile_stage1(encoder, classifier, loss_fn, wavs, labels, frozen_forward, autocast, args)
    results = stage_steps(encoder, classifier, loss_fn, wavs, labels, autocast, args.device, args.repeats, args.warmup)
    for name, key in (("frozen WavLM forward", "forward"), ("stage-1 step", "stage1"),
                      ("WavLM forward+backward", "forward_backward"), ("stage-2 step", "stage2")):
        print(f"{name:>24}: {results[key] * 1000:9.1f} ms")
    print(f"stage-1 step / frozen forward      = {results['ratio1']:.2f}x (median of paired ratios; target <= 1.3x)")
    print(f"stage-2 step / forward+backward    = {results['ratio2']:.2f}x (median of paired ratios)")
    kind = "allocated" if args.device.startswith("cuda") else "process RSS"
    print(f"peak memory ({kind}): after stage 1 {results['memory1']:.0f} MiB, "
          f"after stage 2 {results['memory2']:.0f} MiB")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
