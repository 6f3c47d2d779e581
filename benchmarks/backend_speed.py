"""Speed and size of the LAP backend against the usual SSL speaker backend.

On random WavLM-Large-shaped hidden states (L 25, D 1024, 2 s crops = 99
frames) this script measures, in one process and on one device:

1. forward + backward time per batch (train mode, the frozen-SSL stage 1 step
   without the optimiser) and parameter count of ``LAPSpeakerBackend`` and of
   SpeechBrain's ``ECAPA_TDNN`` (channels 512, 192-d, as in the WeSpeaker /
   UniSpeech SSL recipes) fed by the SUPERB-style ``WeightedLayerSum``;
2. the backend's forward cost (eval, no_grad) relative to the forward of a
   randomly initialised WavLM-Large-shaped model on the same batch of 2 s
   waveforms.

Times are medians over ``--runs`` runs after ``--warmup`` untimed runs.

Usage
-----
    python benchmarks/backend_speed.py --batch 16 --threads 1
    python benchmarks/backend_speed.py --batch 128 --device cuda --dtype bf16

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import contextlib
import statistics
import time
from typing import Callable, Dict, List

import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from torch.utils.flop_counter import FlopCounterMode
from transformers import WavLMConfig, WavLMModel

from lap_speechbrain.demo.random_ssl import WAVLM_PRESETS
from lap_speechbrain.lobes import LAPSpeakerBackend, WeightedLayerSum

SAMPLE_RATE = 16000
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=2.0, help="crop length (2 s = 99 frames)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="bf16: hidden states in bf16 and the models under bf16 autocast")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU intra-op threads (0: torch's default)")
    parser.add_argument("--skip-ssl", action="store_true",
                        help="do not build and time the WavLM-Large-shaped forward")
    args = parser.parse_args()
    if args.batch < 2:
        parser.error(f"--batch {args.batch}: training-mode BatchNorm needs at least 2 utterances")
    return args


def median_seconds(
    steps: Dict[str, Callable[[], None]], runs: int, warmup: int, device: torch.device
) -> Dict[str, float]:
    """Median wall time of each step, the steps interleaved run by run so that
    a change of machine load affects all of them alike (CUDA is synchronised
    around each run)."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for index in range(warmup + runs):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def main() -> None:
    args = parse_arguments()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    wavlm_config = WavLMConfig(**WAVLM_PRESETS["large"])
    num_layers = wavlm_config.num_hidden_layers + 1
    width = wavlm_config.hidden_size
    samples = int(args.seconds * SAMPLE_RATE)
    frames = samples  # the CNN's frame count for this crop (99 for 2 s)
    for kernel, stride in zip(wavlm_config.conv_kernel, wavlm_config.conv_stride):
        frames = (frames - kernel) // stride + 1

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    torch.manual_seed(0)
    hidden_states = torch.randn(num_layers, args.batch, frames, width, device=device, dtype=dtype)
    lengths = torch.ones(args.batch, device=device)
    projection = torch.randn(args.batch, 1, 192, device=device)

    lap = LAPSpeakerBackend(num_layers=num_layers, input_size=width).to(device)
    layer_sum = WeightedLayerSum(num_layers).to(device)
    ecapa = ECAPA_TDNN(width, channels=[512, 512, 512, 512, 1536], lin_neurons=192).to(device)
    baseline = torch.nn.ModuleDict({"layer_sum": layer_sum, "ecapa": ecapa})

    def lap_embed(states=hidden_states):
        return lap(states, lengths[: states.shape[1]])

    def ecapa_embed(states=hidden_states):
        return ecapa(layer_sum(states), lengths[: states.shape[1]])

    def forward_gflop(model: torch.nn.Module, embed: Callable[..., torch.Tensor]) -> float:
        """Matmul/conv GFLOP of one utterance's forward (hardware-independent)."""
        model.eval()
        with torch.no_grad(), autocast(), FlopCounterMode(display=False) as counter:
            embed(hidden_states[:, :1])
        return counter.get_total_flops() / 1e9

    def train_step(model: torch.nn.Module, embed: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step():
            model.train()
            model.zero_grad(set_to_none=True)
            with autocast():
                embedding = embed()
            # A random projection: its gradient passes the final BatchNorm.
            (embedding.float() * projection).sum().backward()
        return step

    def forward_only(model: torch.nn.Module, embed: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step():
            model.eval()
            with torch.no_grad(), autocast():
                embed()
        return step

    train = median_seconds(
        {"lap": train_step(lap, lap_embed), "ecapa": train_step(baseline, ecapa_embed)},
        args.runs, args.warmup, device,
    )
    forward = median_seconds(
        {"lap": forward_only(lap, lap_embed), "ecapa": forward_only(baseline, ecapa_embed)},
        args.runs, args.warmup, device,
    )
    lap_train, ecapa_train = train["lap"], train["ecapa"]
    lap_forward, ecapa_forward = forward["lap"], forward["ecapa"]

    header = (f"{args.batch} x {args.seconds:g} s crops, hidden states L {num_layers} x T {frames} "
              f"x D {width}, {device.type} {args.dtype}, {torch.get_num_threads()} threads, "
              f"median of {args.runs} runs")
    print(header)
    print()
    print("| backend | parameters | fwd GFLOP/utt | fwd+bwd ms/batch | fwd ms/batch (eval) "
          "| fwd+bwd time vs LAP |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| LAPSpeakerBackend (LAP + ASTP) | {count_parameters(lap):,} "
          f"| {forward_gflop(lap, lap_embed):.2f} | {lap_train * 1e3:.1f} "
          f"| {lap_forward * 1e3:.1f} | 1.00 |")
    print(f"| WeightedLayerSum + ECAPA_TDNN (C 512) | {count_parameters(baseline):,} "
          f"| {forward_gflop(baseline, ecapa_embed):.2f} | {ecapa_train * 1e3:.1f} "
          f"| {ecapa_forward * 1e3:.1f} | {ecapa_train / lap_train:.2f} |")

    if args.skip_ssl:
        return
    wavlm = WavLMModel(wavlm_config).to(device).eval()
    wavs = 0.1 * torch.randn(args.batch, samples, device=device)

    def ssl_forward():
        with torch.no_grad(), autocast():
            states = wavlm(wavs, output_hidden_states=True).hidden_states
        if len(states) != num_layers or states[0].shape[1] != frames:
            raise RuntimeError(f"WavLM gave {len(states)} x {tuple(states[0].shape)}")

    # Timed again beside the SSL model, so that both see the same machine load.
    ssl = median_seconds(
        {"wavlm": ssl_forward, "lap": forward_only(lap, lap_embed),
         "lap_train": train_step(lap, lap_embed)},
        args.runs, args.warmup, device,
    )
    ssl_time, lap_forward, lap_train = ssl["wavlm"], ssl["lap"], ssl["lap_train"]
    print()
    with torch.no_grad(), autocast(), FlopCounterMode(display=False) as counter:
        wavlm(wavs[:1], output_hidden_states=True)
    print("| step | parameters | fwd GFLOP/utt | ms/batch | vs WavLM-Large forward |")
    print("|---|---:|---:|---:|---:|")
    print(f"| WavLM-Large-shaped forward (random init, eval, no_grad) | {count_parameters(wavlm):,} "
          f"| {counter.get_total_flops() / 1e9:.2f} | {ssl_time * 1e3:.1f} | 100 % |")
    print(f"| LAPSpeakerBackend forward (eval, no_grad) | {count_parameters(lap):,} "
          f"| {forward_gflop(lap, lap_embed):.2f} | {lap_forward * 1e3:.1f} "
          f"| {100 * lap_forward / ssl_time:.1f} % |")
    print(f"| LAPSpeakerBackend forward + backward (train) | {count_parameters(lap):,} | "
          f"| {lap_train * 1e3:.1f} "
          f"| {100 * lap_train / ssl_time:.1f} % |")


if __name__ == "__main__":
    main()
