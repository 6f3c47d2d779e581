"""Plots of LAP's layer gates for one utterance: which SSL layers the model uses, and when.

Authors
 * lap-speechbrain contributors 2026
"""

import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lap_speechbrain.lobes import SSLSpeakerEncoder


def layer_gates(encoder: SSLSpeakerEncoder, waveform: torch.Tensor) -> np.ndarray:
    """LAP's gates alpha of one utterance, (heads, T, L), in eval mode.

    Arguments
    ---------
    encoder : SSLSpeakerEncoder
        The model (e.g. ``EncoderClassifier.mods.embedding_model``).
    waveform : torch.Tensor
        (N,) waveform at 16 kHz.

    Returns
    -------
    numpy.ndarray
        Gates in (0, 1): per head, frame and hidden state.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        with torch.no_grad():
            gates = encoder.layer_gates(waveform[None].to(device))
    finally:
        encoder.train(was_training)
    return gates[0].float().cpu().numpy()


def plot_lap_attention(
    encoder: SSLSpeakerEncoder,
    waveform: torch.Tensor,
    out_path: Union[str, Path],
    sample_rate: int = 16000,
    title: Optional[str] = None,
) -> np.ndarray:
    """Draws the gates of one utterance aligned with its waveform and spectrogram.

    Panels, all on the same time axis: the waveform, its log spectrogram, the
    gates averaged over heads (time x layer), one heat map per head; and on
    the right the average gate per layer as a bar chart.

    Arguments
    ---------
    encoder : SSLSpeakerEncoder
        The model.
    waveform : torch.Tensor
        (N,) waveform at ``sample_rate`` (16 kHz for WavLM).
    out_path : str or Path
        Image file (the extension picks the format: png, pdf, svg).
    sample_rate : int
        Sample rate of ``waveform``.
    title : str or None
        Figure title.

    Returns
    -------
    numpy.ndarray
        The gates, (heads, T, L).
    """
    gates = layer_gates(encoder, waveform)
    heads, frames, layers = gates.shape
    duration = waveform.numel() / sample_rate
    signal = waveform.detach().float().cpu()

    head_cols = min(4, heads)
    head_rows = math.ceil(heads / head_cols)
    figure = Figure(figsize=(14, 7 + 1.6 * head_rows), constrained_layout=True)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(3 + head_rows, head_cols + 1,
                               height_ratios=[1, 1.4, 2] + [1.2] * head_rows)
    layer_extent = [0, duration, -0.5, layers - 0.5]

    wave_axis = figure.add_subplot(grid[0, :head_cols])
    wave_axis.plot(np.arange(signal.numel()) / sample_rate, signal.numpy(), linewidth=0.5)
    wave_axis.set_xlim(0, duration)
    wave_axis.set_ylabel("waveform")
    wave_axis.set_title(title or "LAP layer gates")

    spec_axis = figure.add_subplot(grid[1, :head_cols], sharex=wave_axis)
    window = int(0.025 * sample_rate)
    spectrum = torch.stft(signal, n_fft=512, hop_length=window // 2, win_length=window,
                          window=torch.hann_window(window), return_complex=True).abs()
    spec_axis.imshow(20 * np.log10(spectrum.numpy() + 1e-6), origin="lower", aspect="auto",
                     extent=[0, duration, 0, sample_rate / 2000], cmap="magma")
    spec_axis.set_ylabel("kHz")

    mean_axis = figure.add_subplot(grid[2, :head_cols], sharex=wave_axis)
    image = mean_axis.imshow(gates.mean(axis=0).T, origin="lower", aspect="auto", extent=layer_extent,
                             vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    mean_axis.set_ylabel("layer\n(mean of heads)")
    mean_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    holder = figure.add_subplot(grid[3:, head_cols])
    holder.set_axis_off()
    figure.colorbar(image, cax=holder.inset_axes([0.0, 0.0, 0.08, 1.0]), label="gate")

    for head in range(heads):
        axis = figure.add_subplot(grid[3 + head // head_cols, head % head_cols], sharex=wave_axis)
        axis.imshow(gates[head].T, origin="lower", aspect="auto", extent=layer_extent,
                    vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(f"head {head}", fontsize=8)
        axis.tick_params(labelsize=7)
        if head % head_cols == 0:
            axis.set_ylabel("layer")
        if head // head_cols == head_rows - 1:
            axis.set_xlabel("time (s)")

    bar_axis = figure.add_subplot(grid[:3, head_cols])
    per_layer = gates.mean(axis=(0, 1))
    spread = gates.mean(axis=1).std(axis=0)  # across heads
    bar_axis.barh(np.arange(layers), per_layer, xerr=spread, color="tab:blue", alpha=0.8)
    bar_axis.set_ylim(-0.5, layers - 0.5)
    bar_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    bar_axis.set_xlim(0, 1)
    bar_axis.set_xlabel("average gate")
    bar_axis.set_ylabel("layer (0 = CNN features)")
    bar_axis.set_title("per layer (std over heads)", fontsize=9)

    figure.savefig(out_path, dpi=110)
    return gates
