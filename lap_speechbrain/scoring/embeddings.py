"""Embedding extraction for every utterance of a trial list or cohort, once, with a disk cache.

- All files are checked before any embedding work: missing and unreadable
  files are reported together in one error.
- Batching is SpeechBrain's: a ``DynamicItemDataset`` reads the audio (in
  ``num_workers`` DataLoader worker processes, while the model runs), a
  ``DynamicBatchSampler`` groups utterances of similar duration (buckets
  whose edges are a factor :data:`BUCKET_RATIO` apart, longest first; at most
  ``batch_size`` utterances and ``max_batch_seconds`` of padded audio per
  batch) and ``PaddedBatch`` pads them and gives the relative lengths that
  the model receives.
- Finished embeddings are written to ``cache_dir`` as shards (one ``.npz``
  per ``shard_size`` utterances, each written to a temporary file and renamed),
  so a rerun, or a run after a crash, only embeds what is not there yet.
  Entries are keyed by the audio's identity: its resolved path, size and
  modification time (:func:`audio_identity`), so another data folder, a
  replaced file or a touched file is embedded again, never served from an
  older entry. The temporary of a shard whose write was killed is removed
  by the next run. ``cache_dir/meta.json`` records what the cache was made with
  (a caller's model key, the sample rate and the chunking rule); a mismatch
  is an error rather than silently mixing embeddings.
- Chunking rule for very long files: with ``max_chunk_seconds`` set, an
  utterance longer than that is cut into ``n = ceil(duration /
  max_chunk_seconds)`` consecutive chunks of equal length, without overlap
  (the < n samples left over are dropped), the chunks are embedded in
  batches without padding (at most ``batch_size`` chunks and
  ``max_batch_seconds`` of audio each, so peak memory is that of the largest
  batch, whatever the file's length), and the utterance's embedding is the
  mean of the chunk embeddings. ``None`` embeds every utterance at full
  length, as the reference does (docs/lap_spec.md section 6); WavLM's
  attention memory then grows with the square of the longest file (README,
  Evaluate: the measured memory and the embedding/EER difference).
- Audio with NaN or infinite samples, and a non-finite embedding, stop the
  run with an error naming the file: nothing non-finite reaches the cache.
- Scaling out: started under ``torchrun`` (torch.distributed's default
  process group initialised, as SpeechBrain's ``ddp_init_group`` does), every
  process reads the cache, the utterances still to embed are dealt out
  longest first (process ``r`` of ``W`` takes every ``W``-th, from the
  ``r``-th), each process writes its own shards (``shard-<rank>-<n>.npz``),
  and after a barrier every process reads the others' shards. An interrupted
  run resumes from every finished shard, with any number of processes.

Authors
 * lap-speechbrain contributors 2026
"""

import functools
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.distributed import ddp_barrier, run_on_main
from torch.utils.data import DataLoader
from tqdm import tqdm

from lap_speechbrain.data.audio import NonFiniteError, check_finite
from lap_speechbrain.data.manifest import probe_audio
from lap_speechbrain.fileio import atomic_open, remove_stale_temporaries

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LoadFn = Callable[[str], torch.Tensor]

# Duration ratio between neighbouring bucket edges: at most 25 % padding in a batch.
BUCKET_RATIO = 1.25


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


def audio_identity(path: Union[str, Path]) -> str:
    """What a cached embedding of ``path`` is valid for: resolved path, size, mtime.

    Arguments
    ---------
    path : str or Path
        An existing audio file.

    Returns
    -------
    str
        ``"<resolved path>|<size in bytes>|<mtime in ns>"``.

    Example
    -------
    >>> path = Path(str(getfixture("tmpdir"))) / "a.wav"
    >>> _ = path.write_bytes(b"RIFF")
    >>> audio_identity(path).split("|")[1]
    '4'
    """
    resolved = os.path.realpath(path)
    stat = os.stat(resolved)
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


def check_audio_files(
    utterances: Sequence[Tuple[str, str]], durations: Optional[Sequence[float]] = None, progress: bool = True
) -> np.ndarray:
    """Checks that every file exists and is readable; returns the durations.

    Arguments
    ---------
    utterances : sequence of (id, path)
        The utterances to embed.
    durations : sequence of float, optional
        Known durations in seconds (e.g. from a manifest CSV); without them
        the audio headers are read, in parallel.
    progress : bool
        Show a progress bar while reading the headers.

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
    infos = probe_audio(paths, desc="Reading audio headers" if progress else "")
    found = {str(info.path): info.duration for info in infos}
    unreadable = [path for path in paths if str(Path(path)) not in found]
    if unreadable:
        listing = "\n  ".join(unreadable)
        raise MissingAudioError(
            f"{len(unreadable)} of {len(paths)} audio files are unreadable or empty:\n  {listing}"
        )
    return np.asarray([found[str(Path(path))] for path in paths], dtype=np.float64)


def bucket_edges(durations: Sequence[float], longest: Optional[float] = None) -> List[float]:
    """Upper edges of the duration buckets of ``DynamicBatchSampler``, ascending.

    Neighbouring edges are :data:`BUCKET_RATIO` apart, from ``longest``
    (default: the longest duration) down to the shortest duration; longer
    utterances fall in SpeechBrain's last bucket, of batch size 1.

    Arguments
    ---------
    durations : sequence of float
        (N,) durations in seconds.
    longest : float, optional
        The top edge.

    Returns
    -------
    list of float
        The edges.

    Example
    -------
    >>> [round(edge, 3) for edge in bucket_edges([1.0, 1.5, 2.0])]
    [0.819, 1.024, 1.28, 1.6, 2.0]
    """
    top = max(durations) if longest is None else longest
    bottom = max(min(durations), 1e-3)
    count = max(0, math.ceil(math.log(top / bottom) / math.log(BUCKET_RATIO))) if top > bottom else 0
    return [top / BUCKET_RATIO**k for k in range(count, -1, -1)]


def process_group() -> Tuple[int, int]:
    """This process's rank and the number of processes of torch.distributed's default group.

    Returns
    -------
    tuple of int
        ``(rank, world_size)``; ``(0, 1)`` without an initialised group.

    Example
    -------
    >>> process_group()
    (0, 1)
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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
    """Shards of finished embeddings in a folder, keyed by :func:`audio_identity`.

    Arguments
    ---------
    folder : str or Path
        The cache folder (created if needed).
    meta : dict
        What the embeddings depend on; must match an existing cache's.
    rank : int
        The writing process's rank: its shards are ``shard-<rank>-<n>.npz``,
        so processes of one run never write the same file.
    """

    def __init__(self, folder: Union[str, Path], meta: Dict[str, object], rank: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = f"shard-{rank:03d}-"
        meta_path = self.folder / "meta.json"
        # A run killed while writing left the temporary of this writer's next shard.
        remove_stale_temporaries(self.folder, ["meta.json", self._next_shard().name])
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

    def _next_shard(self) -> Path:
        """The file of this writer's next shard."""
        numbers = [int(shard.stem[len(self.prefix):]) for shard in self.folder.glob(f"{self.prefix}*.npz")]
        return self.folder / f"{self.prefix}{max(numbers, default=-1) + 1:06d}.npz"

    def load(self) -> Dict[str, np.ndarray]:
        """Every cached embedding (of all writers): audio identity -> (E,) embedding."""
        cached: Dict[str, np.ndarray] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")):
            with np.load(shard) as data:
                identities = [key.decode() for key in data["identities"].tolist()]
                cached.update(zip(identities, data["embeddings"]))
        return cached

    def write(self, identities: List[str], embeddings: np.ndarray) -> None:
        """Adds one shard of (len(identities), E) embeddings, atomically."""
        path = self._next_shard()
        with atomic_open(path, "wb") as handle:
            np.savez(
                handle,
                identities=np.asarray([key.encode() for key in identities], dtype=bytes),
                embeddings=embeddings.astype(np.float32),
            )


def read_finite(path: str, load: LoadFn) -> torch.Tensor:
    """``load(path)``, refusing NaN or infinite samples.

    Arguments
    ---------
    path : str
        Audio file.
    load : callable
        ``load(path) -> (N,) float tensor``.

    Returns
    -------
    torch.Tensor
        (N,) the waveform.

    Raises
    ------
    NonFiniteError
        Naming the file and the number of bad samples.
    """
    return check_finite(load(path), path)


def _flush(
    cache: Optional[EmbeddingCache],
    done: Dict[str, np.ndarray],
    identities: List[str],
    outputs: List[np.ndarray],
) -> None:
    """Writes finished embeddings to the cache (if any) and records them as done."""
    embeddings = np.concatenate(outputs)
    if cache is not None:
        cache.write(identities, embeddings)
    done.update(zip(identities, embeddings))


@torch.no_grad()
def extract_embeddings(
    utterances: Sequence[Tuple[str, str]],
    embed: EmbedFn,
    load: LoadFn,
    cache_dir: Optional[Union[str, Path]] = None,
    cache_key: Optional[str] = None,
    batch_size: int = 16,
    max_batch_seconds: float = 600.0,
    max_chunk_seconds: Optional[float] = None,
    durations: Optional[Sequence[float]] = None,
    sample_rate: int = 16000,
    device: Union[str, torch.device] = "cpu",
    num_workers: int = 0,
    shard_size: int = 256,
    desc: str = "Embedding",
    progress: Optional[bool] = True,
) -> EmbeddingTable:
    """Embeds each utterance once, reusing and extending the disk cache.

    Arguments
    ---------
    utterances : sequence of (id, path)
        Unique ids and their audio files.
    embed : callable
        ``embed(wavs (B, N), wav_lens (B,)) -> (B, E)`` embeddings; relative
        lengths as in SpeechBrain.
    load : callable
        ``load(path) -> (N,) float tensor`` at ``sample_rate`` (e.g.
        ``functools.partial(lap_speechbrain.inference.load_audio,
        target_sample_rate=16000)``); it runs in the DataLoader workers.
    cache_dir : str or Path, optional
        Folder of the cache; None keeps the embeddings in memory only (one
        process only: a group of processes shares embeddings through it).
    cache_key : str, optional
        Identifies the model (e.g. its weights' fingerprint); stored in the
        cache's meta. Required with ``cache_dir``.
    batch_size : int
        Most utterances per batch.
    max_batch_seconds : float
        Most padded seconds of audio per batch.
    max_chunk_seconds : float, optional
        Chunking rule for very long files (module docstring); None: full length.
    durations : sequence of float, optional
        Known durations (seconds); otherwise read from the audio headers.
    sample_rate : int
        Sample rate of the loaded audio.
    device : str or torch.device
        Where the waveforms are sent.
    num_workers : int
        DataLoader worker processes reading audio (0: in this process).
    shard_size : int
        Utterances per cache shard (what a crash can lose at most).
    desc : str
        Progress-bar label.
    progress : bool or None
        Show the progress bars (tqdm, on stderr: reading headers, embedding):
        always (True), never (False), or only when stderr is a terminal (None).

    Returns
    -------
    EmbeddingTable
        In the order of ``utterances`` (all of them, on every process of a group).

    Raises
    ------
    MissingAudioError
        Before any work, listing every missing or unreadable file.
    NonFiniteError
        Naming a file with NaN or infinite samples or embedding.
    """
    ids = [utt for utt, _ in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError("utterance ids passed to extract_embeddings must be unique")
    if cache_dir is not None and cache_key is None:
        raise ValueError("extract_embeddings needs a cache_key (the model's identity) with cache_dir")
    progress = sys.stderr.isatty() if progress is None else progress
    rank, world_size = process_group()
    if world_size > 1 and cache_dir is None:
        raise ValueError(
            f"extract_embeddings in a group of {world_size} processes needs a cache_dir: "
            "the processes share their embeddings through it"
        )
    durations = check_audio_files(utterances, durations, progress)
    identities = [audio_identity(path) for _, path in utterances]
    cache = None
    if cache_dir is not None:
        meta = {"key": cache_key, "sample_rate": sample_rate, "max_chunk_seconds": max_chunk_seconds}
        run_on_main(EmbeddingCache, args=[cache_dir, meta])  # one process writes meta.json
        cache = EmbeddingCache(cache_dir, meta, rank)
    done = cache.load() if cache is not None else {}
    # Every process has read the cache before any writes to it: all agree on what is left.
    ddp_barrier()
    # Longest first (the sampler keeps dataset order inside each bucket), dealt
    # out in turn so every process gets a similar share of audio.
    todo = sorted(
        (i for i, identity in enumerate(identities) if identity not in done), key=lambda i: -durations[i]
    )[rank::world_size]
    if todo:
        dataset = DynamicItemDataset(
            {str(i): {"path": utterances[i][1]} for i in todo}
        )
        dataset.add_dynamic_item(functools.partial(read_finite, load=load), "path", "wav")
        dataset.set_output_keys(["id", "path", "wav"])
        todo_durations = [float(durations[i]) for i in todo]
        sampler = DynamicBatchSampler(
            dataset,
            max_batch_length=max_batch_seconds,
            bucket_boundaries=bucket_edges(todo_durations, max_chunk_seconds),
            lengths_list=todo_durations,
            shuffle=False,
            batch_ordering="descending",
            max_batch_ex=batch_size,
        )
        loader = DataLoader(
            dataset, batch_sampler=sampler, collate_fn=PaddedBatch, num_workers=num_workers
        )
        max_chunk_samples = (
            None if max_chunk_seconds is None else int(max_chunk_seconds * sample_rate)
        )
        pending_rows: List[int] = []
        pending: List[np.ndarray] = []
        with tqdm(total=len(todo), desc=desc, unit="utt", disable=not progress) as bar:
            for batch in loader:
                rows = [int(key) for key in batch.id]
                wavs, wav_lens = batch.wav
                # Longer utterances sit alone in the sampler's last bucket.
                if len(rows) == 1 and max_chunk_samples and wavs.shape[1] > max_chunk_samples:
                    chunks = chunk_waveform(wavs[0], max_chunk_samples).to(device)
                    # Chunks obey the batch limits too, so memory does not grow with the file.
                    per_batch = max(1, min(batch_size, int(max_batch_seconds * sample_rate) // chunks.shape[1]))
                    groups = chunks.split(per_batch)
                    output = torch.cat(
                        [embed(group, torch.ones(group.shape[0], device=device)) for group in groups]
                    ).mean(dim=0, keepdim=True)
                else:
                    output = embed(wavs.to(device), wav_lens.to(device))
                if output.ndim != 2 or output.shape[0] != len(rows):
                    raise ValueError(
                        f"embed must return (batch, embedding_dim) = ({len(rows)}, E), "
                        f"got {tuple(output.shape)}"
                    )
                finite = torch.isfinite(output).all(dim=1).tolist()
                if not all(finite):
                    bad = [path for path, ok in zip(batch.path, finite) if not ok]
                    raise NonFiniteError(
                        f"the model gave a NaN or infinite embedding for {bad}"
                    )
                pending_rows.extend(rows)
                pending.append(output.float().cpu().numpy())
                bar.update(len(rows))
                if len(pending_rows) >= shard_size:
                    _flush(cache, done, [identities[i] for i in pending_rows], pending)
                    pending_rows, pending = [], []
        if pending_rows:
            _flush(cache, done, [identities[i] for i in pending_rows], pending)
    if world_size > 1:
        ddp_barrier()
        done.update(cache.load())  # the other processes' parts
    embeddings = np.stack([done[identity] for identity in identities]).astype(np.float32)
    return EmbeddingTable(ids, embeddings, durations)
