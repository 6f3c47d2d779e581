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
themselves, nor the parameters and their gradient buffers (allocated before
the step). Printed: that peak divided by the hidden states' size at
``--batch``; the slope of a straight line through the peaks at ``--batch``
and half of it (peak bytes per input byte: the ratio once parameter-sized
temporaries no longer count); and the peak at the paper's batch of 512 x 2 s
on WavLM Large from that line. Times are medians of ``--runs`` interleaved
runs (without the profiler) after ``--warmup`` runs, in CPU time of the
process on CPU (use ``--threads 1``), wall time on CUDA. On CPUs without native
bf16 the bf16 matrix products are emulated and slow (the "NN" layout that
autograd's linear backward uses about 10x slower than the "NT" one the lean
LAP uses), so bf16 times on such a CPU say little; use a small ``--batch``.

    python benchmarks/backend_memory.py --precision fp32 --batch 16 --threads 1
    python benchmarks/backend_memory.py --precision bf16 --batch 4 --runs 1 --threads 1
    python benchmarks/backend_memory.py --device cuda --batch 128

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import contextlib
import statistics
import time
from typing import Callable, Dict, List, Tuple

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
        for parameter in self.backend.parameters():  # gradient buffers outside the measurement
            parameter.grad = torch.zeros_like(parameter)

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


def median_times(cases: Dict[str, Case], runs: int, warmup: int, device: torch.device) -> Dict[str, float]:
    """Median seconds per step, the cases interleaved run by run. On CPU the
    process's CPU time: on a shared machine the wall clock measures the other
    processes' load as much as ours."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    times: Dict[str, List[float]] = {name: [] for name in cases}
    for index in range(warmup + runs):
        for name, case in cases.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = clock()
            case.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= warmup:
                times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_fit(formulation: str, stage: int, precision: str, batch: int,
             device: torch.device) -> Tuple[float, float, float]:
    """Peak at ``batch`` and ``batch // 2``, fitted as slope x input + constant.

    Returns the peak over the input size at ``batch``, the slope (peak bytes
    per input byte, what is left of the ratio at large batches) and the peak
    in GiB extrapolated to the paper's batch.
    """
    points = []
    for size in (batch // 2, batch):
        case = Case(formulation, stage, precision, size, device)
        points.append((case.input_bytes(), peak_bytes(case.step, device)))
        del case
    (small_input, small_peak), (input_bytes, peak) = points
    slope = (peak - small_peak) / (input_bytes - small_input)
    constant = peak - slope * input_bytes
    paper_input = LAYERS * PAPER_BATCH * FRAMES_PER_2S * WIDTH * DTYPES[precision].itemsize
    return peak / input_bytes, slope, (slope * paper_input + constant) / 2**30


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16,
                        help="utterances of 2 s per batch (the fit also measures half of it)")
    parser.add_argument("--precision", choices=sorted(DTYPES), nargs="+", default=list(DTYPES))
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (0: no timing)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.batch < 4:
        parser.error(f"--batch {args.batch}: the fit also runs batch // 2, and training-mode "
                     "BatchNorm on pooled statistics needs at least 2 utterances")
    return args


def main() -> None:
    args = parse_arguments()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"LAP + ASTP, WavLM-Large-shaped hidden states (L {LAYERS}, D {WIDTH}, 2 s = "
          f"{FRAMES_PER_2S} frames), batch {args.batch}, {device.type}, {torch.get_num_threads()} "
          f"threads. Peak: memory above the hidden states and parameters over the hidden states' "
          f"size; slope: its growth per byte of hidden states (fit on batch {args.batch // 2} and "
          f"{args.batch}); time: forward + backward, median of {args.runs} "
          f"({'process CPU' if device.type == 'cpu' else 'wall'} time).")
    print()
    print(f"| precision | stage | formulation | peak / input | slope | ms per step | time vs plain "
          f"| GiB at {PAPER_BATCH} x 2 s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for precision in args.precision:
        for stage in (1, 2):
            fits = {name: peak_fit(name, stage, precision, args.batch, device) for name in FORMULATIONS}
            times = {}
            if args.runs > 0:
                cases = {name: Case(name, stage, precision, args.batch, device) for name in FORMULATIONS}
                times = median_times(cases, args.runs, args.warmup, device)
                del cases
            for name in FORMULATIONS:
                ratio, slope, gib = fits[name]
                timing = (f"{times[name] * 1e3:.0f} | {times[name] / times['plain']:.2f}" if times
                          else "- | -")
                print(f"| {precision} | {stage} | {name} | {ratio:.2f}x | {slope:.2f}x | {timing} "
                      f"| {gib:.1f} |", flush=True)
    print()
    print(f"Hidden states of {PAPER_BATCH} x 2 s on WavLM Large (not counted above): "
          + ", ".join(f"{LAYERS * PAPER_BATCH * FRAMES_PER_2S * WIDTH * DTYPES[name].itemsize / 2**30:.2f} "
                      f"GiB in {name}" for name in args.precision) + ".")


if __name__ == "__main__":
    main()
