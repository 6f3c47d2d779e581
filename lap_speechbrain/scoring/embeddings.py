"""Embedding extraction for every utterance of a trial list or cohort, once, with a disk cache.

- All files are checked before any embedding work: missing and unreadable
  files are reported together in one error.
- Utterances are sorted by duration and grouped into batches of similar
  length (at most ``batch_size`` utterances and ``max_batch_seconds`` of
  padded audio), so padding stays small; relative lengths are passed to the
  model. The next batch is read from disk while the model runs.
- Finished embeddings are written to ``cache_dir`` as shards (one ``.npz``
  per ``shard_size`` utterances, each written to a temporary file and renamed),
  so a rerun, or a run after a crash, only embeds what is not there yet.
  ``cache_dir/meta.json`` records what the cache was made with (a caller's
  key such as the model source, the sample rate and the chunking rule); a
  mismatch is an error rather than silently mixing embeddings.
- Chunking rule for very long files: with ``max_chunk_seconds`` set, an
  utterance longer than that is cut into ``n = ceil(duration /
  max_chunk_seconds)`` consecutive chunks of equal length (the < n samples
  left over are dropped), the chunks are embedded as one batch without
  padding, and the utterance's embedding is the mean of the chunk
  embeddings. ``None`` embeds every utterance at full length (docs/lap_spec.md
  section 6).

Authors
 * lap-speechbrain contributors 2026
"""

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from speechbrain.utils.data_utils import batch_pad_right
from tqdm import tqdm

from lap_speechbrain.data.manifest import probe_audio
from lap_speechbrain.fileio import atomic_open

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LoadFn = Callable[[str], torch.Tensor]


class MissingAudioError(ValueError):
    """Some utterances to embed are missing or unreadable; all are listed."""


@dataclass
class EmbeddingTable:
    """Embeddings of a list of utterances.

    Arguments
    ---------
    ids : list of str
        (N,) utterance ids.
    embeddings : np.ndarray
        (N, E) float32 raw embeddings (as the model returns them).
    durations : np.ndarray
        (N,) float64 durations in seconds.
    """

    ids: List[str]
    embeddings: np.ndarray
    durations: np.ndarray

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids`` in this table.

        Arguments
        ---------
        ids : sequence of str
            Utterance ids, each present in the table.

        Returns
        -------
        np.ndarray
            (len(ids),) int64 rows.
        """
        position = {utt: row for row, utt in enumerate(self.ids)}
        missing = [utt for utt in ids if utt not in position]
        if missing:
            raise KeyError(f"{len(missing)} ids are not in the table, e.g. {missing[:3]}")
        return np.fromiter((position[utt] for utt in ids), dtype=np.int64, count=len(ids))


def check_audio_files(
    utterances: Sequence[Tuple[str, str]], durations: Optional[Sequence[float]] = None
) -> np.ndarray:
    """Checks that every file exists and is readable; returns the durations.

    Arguments
    ---------
    utterances : sequence of (id, path)
        The utterances to embed.
    durations : sequence of float, optional
        Known durations in seconds (e.g. from a manifest CSV); without them
        the audio headers are read, in parallel.

    Returns
    -------
    np.ndarray
        (N,) durations in seconds.

    Raises
    ------
    MissingAudioError
        Listing every missing or unreadable file, before any work starts.
    """
    paths = [path for _, path in utterances]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        listing = "\n  ".join(missing)
        raise MissingAudioError(
            f"{len(missing)} of {len(paths)} audio files are missing:\n  {listing}"
        )
    if durations is not None:
        if len(durations) != len(paths):
            raise ValueError(f"{len(durations)} durations for {len(paths)} utterances")
        return np.asarray(durations, dtype=np.float64)
    infos = probe_audio(paths, desc="Reading audio headers")
    found = {str(info.path): info.duration for info in infos}
    unreadable = [path for path in paths if str(Path(path)) not in found]
    if unreadable:
        listing = "\n  ".join(unreadable)
        raise MissingAudioError(
            f"{len(unreadable)} of {len(paths)} audio files are unreadable or empty:\n  {listing}"
        )
    return np.asarray([found[str(Path(path))] for path in paths], dtype=np.float64)


def plan_batches(
    durations: Sequence[float],
    batch_size: int,
    max_batch_seconds: float,
    max_chunk_seconds: Optional[float] = None,
) -> List[List[int]]:
    """Groups utterances into batches of similar length, longest first.

    A batch holds at most ``batch_size`` utterances and at most
    ``max_batch_seconds`` of padded audio (count x longest); an utterance
    longer than ``max_chunk_seconds`` gets a batch of its own (it is chunked).

    Arguments
    ---------
    durations : sequence of float
        (N,) durations in seconds.
    batch_size : int
        Most utterances per batch.
    max_batch_seconds : float
        Most padded seconds per batch (a single longer utterance still runs).
    max_chunk_seconds : float, optional
        Utterances longer than this are embedded alone, in chunks.

    Returns
    -------
    list of list of int
        Indices into ``durations``, one list per batch.

    Example
    -------
    >>> plan_batches([1.0, 9.0, 2.0, 8.0, 3.0], batch_size=2, max_batch_seconds=100)
    [[1, 3], [4, 2], [0]]
    >>> plan_batches([1.0, 9.0, 2.0, 8.0, 3.0], batch_size=4, max_batch_seconds=10,
    ...              max_chunk_seconds=8.5)
    [[1], [3], [4, 2, 0]]
    """
    order = np.argsort(-np.asarray(durations, dtype=np.float64), kind="stable")
    batches: List[List[int]] = []
    current: List[int] = []
    for index in order.tolist():
        duration = durations[index]
        if max_chunk_seconds is not None and duration > max_chunk_seconds:
            batches.append([index])
            continue
        # Sorted longest first, so the batch's first utterance sets its padded length.
        longest = durations[current[0]] if current else duration
        if current and (
            len(current) >= batch_size or (len(current) + 1) * longest > max_batch_seconds
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def chunk_waveform(wav: torch.Tensor, max_samples: int) -> torch.Tensor:
    """Cuts a waveform into ``ceil(len / max_samples)`` equal consecutive chunks.

    Arguments
    ---------
    wav : torch.Tensor
        (N,) waveform.
    max_samples : int
        Longest allowed chunk.

    Returns
    -------
    torch.Tensor
        (n, N // n) chunks (the last ``N % n`` samples are dropped).

    Example
    -------
    >>> chunk_waveform(torch.arange(10.0), 4).tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    """
    count = max(1, math.ceil(wav.shape[0] / max_samples))
    length = wav.shape[0] // count
    return wav[: count * length].reshape(count, length)


class EmbeddingCache:
    """Shards of finished embeddings in a folder (see the module docstring).

    Arguments
    ---------
    folder : str or Path
        The cache folder (created if needed).
    meta : dict
        What the embeddings depend on; must match an existing cache's.
    """

    def __init__(self, folder: Union[str, Path], meta: Dict[str, object]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            with open(meta_path, encoding="utf-8") as handle:
                existing = json.load(handle)
            if existing != meta:
                raise ValueError(
                    f"embedding cache {self.folder} was made with {existing}, not {meta}; "
                    "use another cache folder or delete this one"
                )
        else:
            with atomic_open(meta_path) as handle:
                json.dump(meta, handle, indent=2)
        self.shards = sorted(self.folder.glob("shard-*.npz"))

    def load(self) -> Dict[str, np.ndarray]:
        """Every cached embedding: id -> (E,) embedding."""
        cached: Dict[str, np.ndarray] = {}
        for shard in self.shards:
            with np.load(shard) as data:
                cached.update(zip(data["ids"].tolist(), data["embeddings"]))
        return cached

    def write(self, ids: List[str], embeddings: np.ndarray) -> None:
        """Adds one shard of (len(ids), E) embeddings, atomically."""
        number = int(self.shards[-1].stem.split("-")[1]) + 1 if self.shards else 0
        path = self.folder / f"shard-{number:06d}.npz"
        with atomic_open(path, "wb") as handle:
            np.savez(
                handle,
                ids=np.asarray(ids, dtype=str),
                embeddings=embeddings.astype(np.float32),
            )
        self.shards.append(path)


def _default_loader(sample_rate: int) -> LoadFn:
    # Imported here: the inference package is optional for callers that pass a loader.
    from lap_speechbrain.inference.audio import load_audio

    return lambda path: load_audio(path, target_sample_rate=sample_rate)


def _flush(
    cache: EmbeddingCache, done: Dict[str, np.ndarray], ids: List[str], outputs: List[np.ndarray]
) -> None:
    """Writes finished embeddings to the cache and records them as done."""
    embeddings = np.concatenate(outputs)
    cache.write(ids, embeddings)
    done.update(zip(ids, embeddings))


@torch.no_grad()
def extract_embeddings(
    utterances: Sequence[Tuple[str, str]],
    embed: EmbedFn,
    cache_dir: Union[str, Path],
    cache_key: str,
    batch_size: int = 16,
    max_batch_seconds: float = 600.0,
    max_chunk_seconds: Optional[float] = None,
    durations: Optional[Sequence[float]] = None,
    load: Optional[LoadFn] = None,
    sample_rate: int = 16000,
    device: Union[str, torch.device] = "cpu",
    shard_size: int = 256,
    desc: str = "Embedding",
) -> EmbeddingTable:
    """Embeds each utterance once, reusing and extending the disk cache.

    Arguments
    ---------
    utterances : sequence of (id, path)
        Unique ids and their audio files.
    embed : callable
        ``embed(wavs (B, N), wav_lens (B,)) -> (B, E)`` embeddings; relative
        lengths as in SpeechBrain.
    cache_dir : str or Path
        Folder of the cache.
    cache_key : str
        Identifies the model (e.g. its source); stored in the cache's meta.
    batch_size : int
        Most utterances per batch.
    max_batch_seconds : float
        Most padded seconds of audio per batch.
    max_chunk_seconds : float, optional
        Chunking rule for very long files (module docstring); None: full length.
    durations : sequence of float, optional
        Known durations (seconds); otherwise read from the audio headers.
    load : callable, optional
        ``load(path) -> (N,) float tensor`` at ``sample_rate``; default
        ``lap_speechbrain.inference.audio.load_audio``.
    sample_rate : int
        Sample rate the model expects.
    device : str or torch.device
        Where the waveforms are sent.
    shard_size : int
        Utterances per cache shard (what a crash can lose at most).
    desc : str
        Progress-bar label.

    Returns
    -------
    EmbeddingTable
        In the order of ``utterances``.

    Raises
    ------
    MissingAudioError
        Before any work, listing every missing or unreadable file.
    """
    ids = [utt for utt, _ in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError("utterance ids passed to extract_embeddings must be unique")
    durations = check_audio_files(utterances, durations)
    cache = EmbeddingCache(
        cache_dir,
        {"key": cache_key, "sample_rate": sample_rate, "max_chunk_seconds": max_chunk_seconds},
    )
    done = cache.load()
    todo = [i for i, utt in enumerate(ids) if utt not in done]
    if todo:
        load = load or _default_loader(sample_rate)
        max_chunk_samples = (
            None if max_chunk_seconds is None else int(max_chunk_seconds * sample_rate)
        )
        batches = plan_batches(durations[todo], batch_size, max_batch_seconds, max_chunk_seconds)
        pending_rows: List[int] = []
        pending: List[np.ndarray] = []

        def read_batch(batch: List[int]) -> List[torch.Tensor]:
            return [load(utterances[todo[i]][1]) for i in batch]

        # One batch is read ahead in a thread while the model runs on the current one.
        with ThreadPoolExecutor(max_workers=1) as reader, tqdm(
            total=len(todo), desc=desc, unit="utt"
        ) as bar:
            next_wavs = reader.submit(read_batch, batches[0])
            for number, batch in enumerate(batches):
                wavs = next_wavs.result()
                if number + 1 < len(batches):
                    next_wavs = reader.submit(read_batch, batches[number + 1])
                indices = [todo[i] for i in batch]
                if max_chunk_samples is not None and wavs[0].shape[0] > max_chunk_samples:
                    chunks = chunk_waveform(wavs[0], max_chunk_samples).to(device)
                    output = embed(chunks, torch.ones(chunks.shape[0], device=device))
                    output = output.mean(dim=0, keepdim=True)
                else:
                    padded, wav_lens = batch_pad_right(wavs)
                    output = embed(padded.to(device), wav_lens.to(device))
                if output.ndim != 2 or output.shape[0] != len(indices):
                    raise ValueError(
                        f"embed must return (batch, embedding_dim) = ({len(indices)}, E), "
                        f"got {tuple(output.shape)}"
                    )
                pending_rows.extend(indices)
                pending.append(output.float().cpu().numpy())
                bar.update(len(indices))
                if len(pending_rows) >= shard_size:
                    _flush(cache, done, [ids[i] for i in pending_rows], pending)
                    pending_rows, pending = [], []
        if pending_rows:
            _flush(cache, done, [ids[i] for i in pending_rows], pending)
    embeddings = np.stack([done[utt] for utt in ids]).astype(np.float32)
    return EmbeddingTable(ids, embeddings, durations)
