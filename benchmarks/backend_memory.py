#!/usr/bin/env python3
"""Peak activation memory and time of LAP + ASTP, against two formulations of the same function.

On random WavLM-Large-shaped hidden states (L 25, D 1024, 2 s crops = 99
frames), one forward + backward pass of the LAP + ASTP backend (train mode,
gradient of a random projection of the embeddings) is run for

- ``lean``: ``LAPSpeakerBackend`` as the library has it (one autograd function
  for LAP, see ``lap_speechbrain/lobes/lap.py``);
- ``plain``: the same parameters through the formulation the library used
  before, written with ordinary autograd ops (``plain_lap`` below: the folded
  BatchNorm with statistics on an fp32 copy, a gated (L, B, T, D) tensor,
  ``max`` over layers);
- ``reference``: the op sequence of the authors' implementation
  (``reference_lap`` below: BatchNorm2d and a 1x1 Conv2d on (B, D, T, L), heads
  rearranged into a copy, gate multiply, max over layers);

in both stages (1: frozen SSL model, the hidden states need no gradient;
2: joint fine-tuning, their gradient is computed too) and both precisions
(fp32; bf16: bf16 hidden states under bf16 autocast).

Memory method. On CUDA: ``torch.cuda.max_memory_allocated`` above what was
allocated before the step. On CPU: the allocation and free events of torch's
CPU allocator, recorded by ``torch.profiler`` with ``profile_memory=True``
during the step; the peak is the maximum of their running sum. The count
includes every tensor made in the step (outputs, saved tensors, temporaries,
and in stage 2 the hidden states' gradient) but not the hidden states
themselves, nor the parameters and their gradient buffers (allocated by an
untimed warm-up step and zeroed in place). The figure printed is that peak
divided by the size of the hidden states, and it is extrapolated linearly to a
batch of 512 x 2 s crops of WavLM Large. Times are medians of ``--runs``
interleaved runs (without the profiler) after ``--warmup`` runs.

    python benchmarks/backend_memory.py --batch 16 --threads 2
    python benchmarks/backend_memory.py --device cuda --batch 128

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import contextlib
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lap_speechbrain.lobes import LAPSpeakerBackend

LAYERS, WIDTH = 25, 1024  # WavLM Large: 24 layers + hidden state 0, D 1024
FRAMES_PER_2S = 99
PAPER_BATCH = 512
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FORMULATIONS = ("lean", "plain", "reference")


def plain_lap(backend: LAPSpeakerBackend, hidden_states: torch.Tensor) -> torch.Tensor:
    """LAP as the library computed it before the lean version, with plain autograd.

    (L, B, T, D) -> (B, T, H). Batch statistics in train mode; the running
    statistics are not updated (no effect on memory or the result).
    """
    lap = backend.lap
    num_layers, batch, frames, width = hidden_states.shape
    norm = lap.input_norm
    flat = hidden_states.reshape(-1, width)
    if norm.training:
        variance, mean = torch.var_mean(flat.to(torch.promote_types(flat.dtype, torch.float32)),
                                        dim=0, unbiased=False)
    else:
        mean, variance = norm.running_mean, norm.running_var
    scale = norm.weight * torch.rsqrt(variance + norm.eps)
    shift = norm.bias - mean * scale
    weight = lap.input_projection.weight
    projected = F.linear(hidden_states, weight * scale.unsqueeze(0),
                         lap.input_projection.bias + weight @ shift)
    heads = projected.view(num_layers, batch, frames, lap.num_heads, -1)
    average, maximum = heads.mean(dim=-1), heads.max(dim=-1).values
    descriptors = torch.cat([average, maximum], dim=1).float()
    descriptors = descriptors.permute(3, 1, 2, 0).reshape(lap.num_heads, -1, num_layers)
    hidden = F.relu(torch.baddbmm(lap.squeeze_bias, descriptors, lap.squeeze_weight))
    excited = torch.baddbmm(lap.excite_bias, hidden, lap.excite_weight)
    excited = excited.view(lap.num_heads, 2, batch * frames, num_layers)
    gates = F.dropout(torch.sigmoid(excited[:, 0] + excited[:, 1]), lap.dropout, lap.training)
    gates = gates.permute(2, 1, 0).reshape(num_layers, batch, frames, lap.num_heads, 1)
    pooled = (heads * gates.to(heads.dtype)).max(dim=0).values
    output = lap.output_projection(pooled.reshape(batch, frames, width))
    output = lap.output_norm(output.reshape(batch * frames, -1))
    return output.view(batch, frames, -1)


def reference_lap(backend: LAPSpeakerBackend, states: torch.Tensor) -> torch.Tensor:
    """LAP in the op order of the authors' implementation: (B, D, T, L) -> (B, H, T)."""
    lap = backend.lap
    batch, width, frames, num_layers = states.shape
    norm = lap.input_norm
    x = F.batch_norm(states, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                     lap.training, norm.momentum, norm.eps)
    x = F.conv2d(x, lap.input_projection.weight[:, :, None, None], lap.input_projection.bias)
    heads = lap.num_heads
    x = x.view(batch, heads, width // heads, frames, num_layers)
    x = x.permute(0, 3, 1, 2, 4).reshape(batch * frames, heads, width // heads, num_layers)

    def excite(z):  # ((B T), h, 1, L) through each head's MLP
        hidden = F.relu(torch.matmul(z, lap.squeeze_weight) + lap.squeeze_bias)
        return torch.matmul(hidden, lap.excite_weight) + lap.excite_bias

    mean, maximum = x.mean(dim=2, keepdim=True), x.max(dim=2, keepdim=True).values
    gates = F.dropout(torch.sigmoid(excite(mean) + excite(maximum)), lap.dropout, lap.training)
    pooled = (x * gates).max(dim=-1).values  # ((B T), h, d)
    pooled = pooled.reshape(batch, frames, width).transpose(1, 2)
    return lap.output_norm(F.conv1d(pooled, lap.output_projection.weight[:, :, None],
                                    lap.output_projection.bias))


def embed_frames(backend: LAPSpeakerBackend, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ASTP and the embedding layers of the backend on LAP's output (B, H, T)."""
    stats = backend.pooling(frames, lengths).squeeze(2)
    return backend.embedding_norm(backend.embedding(backend.pooling_norm(stats)))


def embed(formulation: str, backend: LAPSpeakerBackend, states: torch.Tensor,
          lengths: torch.Tensor) -> torch.Tensor:
    """Embeddings (B, E) by one formulation; ``states`` is (B, D, T, L) for the reference."""
    if formulation == "lean":
        return backend(states, lengths).squeeze(1)
    if formulation == "plain":
        return embed_frames(backend, plain_lap(backend, states).transpose(1, 2), lengths)
    return embed_frames(backend, reference_lap(backend, states), lengths)


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak of the memory allocated by ``step`` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recording:
        step()
    allocation = torch._C._profiler._EventType.Allocation
    events, pending = [], list(recording.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == allocation and event.extra_fields.device.type == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


class Case:
    """One formulation, stage and precision: a backend, its input and a training step."""

    def __init__(self, formulation: str, stage: int, precision: str, batch: int,
                 device: torch.device, num_layers: int = LAYERS, width: int = WIDTH,
                 frames: int = FRAMES_PER_2S, num_heads: int = 16, lap_channels: int = 512,
                 seed: int = 0):
        torch.manual_seed(seed)
        self.device = device
        self.backend = LAPSpeakerBackend(num_layers=num_layers, input_size=width, num_heads=num_heads,
                                         lap_channels=lap_channels).to(device).train()
        self.formulation = formulation
        dtype = DTYPES[precision]
        self.autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
                         else contextlib.nullcontext())
        states = torch.randn(num_layers, batch, frames, width, device=device).to(dtype)
        if formulation == "reference":
            states = states.permute(1, 3, 2, 0).contiguous()  # its native (B, D, T, L) layout
        self.states = states.requires_grad_(stage == 2)
        self.lengths = torch.ones(batch, device=device)
        self.projection = torch.randn(batch, 192, device=device)
        self.step()  # allocates the parameters' gradient buffers outside the measurement

    def step(self) -> None:
        self.backend.zero_grad(set_to_none=False)
        self.states.grad = None
        with self.autocast:
            embedding = embed(self.formulation, self.backend, self.states, self.lengths)
        (embedding.float() * self.projection).sum().backward()

    def input_bytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    def peak_ratio(self) -> float:
        """Peak memory of one step as a multiple of the hidden states' size."""
        return peak_bytes(self.step, self.device) / self.input_bytes()


def median_times(cases: Dict[str, Case], runs: int, warmup: int) -> Dict[str, float]:
    """Median seconds per step, the cases interleaved run by run."""
    times: Dict[str, List[float]] = {name: [] for name in cases}
    for index in range(warmup + runs):
        for name, case in cases.items():
            if case.device.type == "cuda":
                torch.cuda.synchronize(case.device)
            start = time.perf_counter()
            case.step()
            if case.device.type == "cuda":
                torch.cuda.synchronize(case.device)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="utterances of 2 s per batch")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.batch < 2:
        parser.error(f"--batch {args.batch}: training-mode BatchNorm needs at least 2 utterances")
    return args


def main() -> None:
    args = parse_arguments()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"LAP + ASTP (L {LAYERS}, D {WIDTH}, 2,312,464 parameters), batch {args.batch} x 2 s "
          f"({FRAMES_PER_2S} frames), {device.type}, {torch.get_num_threads()} threads; "
          f"peak activation memory as a multiple of the hidden states' size, "
          f"time per forward + backward (median of {args.runs})")
    print()
    print("| precision | stage | lean peak | plain peak | reference peak "
          "| lean ms | plain ms | reference ms | lean time / plain | "
          f"lean / plain / reference at {PAPER_BATCH} x 2 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for precision in DTYPES:
        for stage in (1, 2):
            cases = {name: Case(name, stage, precision, args.batch, device) for name in FORMULATIONS}
            ratios = {name: case.peak_ratio() for name, case in cases.items()}
            times = median_times(cases, args.runs, args.warmup)
            paper_bytes = LAYERS * PAPER_BATCH * FRAMES_PER_2S * WIDTH * DTYPES[precision].itemsize
            at_scale = " / ".join(f"{ratios[name] * paper_bytes / 2**30:.1f}" for name in FORMULATIONS)
            print(f"| {precision} | {stage} | {ratios['lean']:.2f}x | {ratios['plain']:.2f}x "
                  f"| {ratios['reference']:.2f}x | {times['lean'] * 1e3:.0f} "
                  f"| {times['plain'] * 1e3:.0f} | {times['reference'] * 1e3:.0f} "
                  f"| {times['lean'] / times['plain']:.2f} | {at_scale} GiB |")
            del cases
    print()
    print(f"Hidden states of {PAPER_BATCH} x 2 s on WavLM Large: "
          + ", ".join(f"{LAYERS * PAPER_BATCH * FRAMES_PER_2S * WIDTH * dtype.itemsize / 2**30:.2f} GiB "
                      f"in {name}" for name, dtype in DTYPES.items())
          + " (not counted in the peaks).")


if __name__ == "__main__":
    main()
