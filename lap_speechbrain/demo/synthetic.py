"""An offline synthetic speaker-verification corpus: espeak-ng speakers in simulated rooms and channels.

:func:`prepare_synthetic_corpus` writes, with no data, network or GPU, a
corpus in exactly the layout and formats of a real one::

    <save_folder>/audio/train/<speaker>/<session>/<utt>.wav  training and validation speakers
    <save_folder>/audio/test/<speaker>/<session>/<utt>.wav   test speakers
    <save_folder>/test_trials.txt           VoxCeleb-format trials, paths relative to audio/test
    <save_folder>/noise/, babble/, rir/     wavs for the training augmentation
    <save_folder>/manifests/                train/valid CSVs, valid trials, noise/babble/rir CSVs
    <save_folder>/metadata.csv              what was done to every utterance

Speakers are espeak-ng voices (see :mod:`lap_speechbrain.demo.synthetic_speech`)
reading random sentences; each utterance then goes through a recording chain
(see :mod:`lap_speechbrain.demo.synthetic_effects`): a simulated room for a
share of them, additive noise at 5-20 dB SNR, the equaliser and level of its
session, and a telephone band for some. The shares are exact: the degraded
utterances of each split are a seeded draw of ``round(probability * count)``.
Train (with validation) and test speakers are disjoint; validation speakers
are held out of the training tree by
:func:`lap_speechbrain.data.custom.prepare_custom_corpus`.

Every random choice comes from a generator seeded by (seed, what, speaker,
utterance), so the same seed gives byte-identical files whatever the number
of worker processes. A second call with the same options reuses the corpus;
the options file is written last, so a corpus left half-written by a killed
run is regenerated.

Authors
 * lap-speechbrain contributors 2026
"""

import logging
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import soundfile
from tqdm import tqdm

from lap_speechbrain.data.custom import make_trials, prepare_custom_corpus
from lap_speechbrain.data.manifest import (
    PathLike,
    is_prepared,
    mark_prepared,
    write_csv,
)
from lap_speechbrain.data.noise import prepare_noise_csvs
from lap_speechbrain.data.trials import write_trials
from lap_speechbrain.demo.synthetic_effects import (
    NOISE_COLOURS,
    Channel,
    Room,
    add_noise,
    band_limit,
    coloured_noise,
    equalise,
    reverberate,
    room_impulse_response,
    sample_channel,
    sample_room,
    to_pcm16,
)
from lap_speechbrain.demo.synthetic_speech import (
    SAMPLE_RATE,
    SpeakerProfile,
    babble,
    espeak_version,
    sample_speakers,
    speak_duration,
)

logger = logging.getLogger(__name__)

# Bump when the generated audio changes for the same options, so cached corpora are rebuilt.
GENERATOR_VERSION = 1
NOISE_TYPES = tuple(NOISE_COLOURS) + ("babble",)
# Babble: this many overlapping talkers, drawn from crowds of synthetic
# speakers who are none of the corpus speakers (one crowd for the corpus
# degradations, another for the augmentation files).
BABBLE_TALKERS = (3, 5)
CROWD_SIZE = 24
# Babbled utterances take a random stretch of one of these tracks (seconds
# long), which costs far less than speaking a new crowd for every utterance.
BABBLE_TRACKS = 4
BABBLE_TRACK_DURATION = 20.0
# Augmentation noise files are this long (AddNoise crops or pads them to the batch).
AUGMENTATION_DURATION = 10.0

# Independent random streams: the first entropy word of every generator.
_SPEAKERS, _ASSIGN, _UTTERANCE, _RENDER, _SESSION, _ROOM, _AUGMENT, _BABBLE = range(8)
METADATA_FIELDS = (
    "ID", "split", "spk_id", "session", "wav", "duration", "voice", "pitch", "intonation", "rate",
    "vocal_tract", "noise", "snr_db", "room", "rt60", "band_limited", "level_db", "text",
)  # fmt: skip


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A generator for one (stream, keys) slot, independent of every other slot."""
    return np.random.default_rng([seed, stream, *keys])


@dataclass(frozen=True)
class UtterancePlan:
    """Everything decided about one utterance before its audio is rendered.

    Arguments
    ---------
    utt_id : str
        ``<speaker>/<session>/<utt>`` (the manifest ID).
    split : str
        ``"train"`` or ``"test"``.
    speaker : SpeakerProfile
        Who speaks.
    duration : float
        Seconds.
    noise : str
        Noise type (one of :data:`NOISE_TYPES`) or ``""`` for none.
    snr_db : float
        SNR of the noise (unused without noise).
    babble_track : int
        Babble track the babble noise is cut from (unused for other noises).
    babble_offset : float
        Where in that track the stretch starts (seconds).
    room : int
        Index into the degradation rooms, or -1 for no reverberation.
    band_limited : bool
        Whether the telephone band-pass is applied.
    channel : Channel
        The session's equaliser and level.
    seed : tuple of int
        Entropy of the generator that draws the sentences and the noise.
    """

    utt_id: str
    split: str
    speaker: SpeakerProfile
    duration: float
    noise: str
    snr_db: float
    babble_track: int
    babble_offset: float
    room: int
    band_limited: bool
    channel: Channel
    seed: tuple


@dataclass(frozen=True)
class _RenderTask:
    """One utterance to render and write, with the impulse response and babble it needs."""

    plan: UtterancePlan
    rir: Optional[np.ndarray]
    babble: Optional[np.ndarray]
    path: Path


def _render(task: _RenderTask) -> str:
    """Speaks, degrades and writes one utterance; returns the text spoken."""
    plan = task.plan
    rng = np.random.default_rng(list(plan.seed))
    wav, text = speak_duration(plan.speaker, plan.duration, rng)
    if task.rir is not None:
        wav = reverberate(wav, task.rir)
    if plan.noise == "babble":
        wav = add_noise(wav, task.babble, plan.snr_db)
    elif plan.noise:
        wav = add_noise(wav, coloured_noise(rng, len(wav), plan.noise), plan.snr_db)
    wav = equalise(wav, plan.channel.eq_gains_db)
    if plan.band_limited:
        wav = band_limit(wav)
    _write_wav(task.path, to_pcm16(wav, plan.channel.level_db))
    return text


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), pcm, SAMPLE_RATE, subtype="PCM_16")


@dataclass(frozen=True)
class _NoiseTask:
    """One noise track: a coloured noise, or the babble of a crowd."""

    kind: str
    duration: float
    seed: tuple
    crowd: Sequence[SpeakerProfile]


def _noise_track(task: _NoiseTask) -> np.ndarray:
    rng = np.random.default_rng(list(task.seed))
    if task.kind == "babble":
        talkers = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
        return babble(rng, task.duration, talkers, task.crowd)
    return coloured_noise(rng, int(round(task.duration * SAMPLE_RATE)), task.kind)


def _simulate_room(task: tuple) -> np.ndarray:
    room, seed = task
    return room_impulse_response(room, np.random.default_rng(list(seed)))


@contextmanager
def _worker_map(num_workers: int) -> Iterator[Callable]:
    """Yields ``map(fn, items, desc)`` running on ``num_workers`` processes with a progress bar."""
    if num_workers <= 1:
        yield lambda fn, items, desc: [fn(item) for item in tqdm(items, desc=desc)]
        return
    # fork shares the already imported modules (spawn would re-import speechbrain
    # in every worker); the workers use only numpy, scipy and libespeak-ng.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context(method)) as pool:

        def parallel_map(fn, items, desc):
            chunk = max(1, len(items) // (8 * num_workers))
            return list(tqdm(pool.map(fn, items, chunksize=chunk), total=len(items), desc=desc))

        yield parallel_map


def _assign(rng: np.random.Generator, count: int, probability: float) -> np.ndarray:
    """Boolean mask with exactly round(probability * count) True entries at random places."""
    mask = np.zeros(count, dtype=bool)
    mask[rng.permutation(count)[: int(round(probability * count))]] = True
    return mask


def plan_utterances(
    speakers: Sequence[SpeakerProfile],
    speaker_ids: Sequence[str],
    split: str,
    speaker_offset: int,
    utterances_per_speaker: int,
    sessions_per_speaker: int,
    min_duration: float,
    max_duration: float,
    noise_probability: float,
    snr_low: float,
    snr_high: float,
    reverb_probability: float,
    bandlimit_probability: float,
    num_rooms: int,
    babble_track_duration: float,
    seed: int,
) -> List[UtterancePlan]:
    """Decides the duration and degradations of every utterance of one split.

    Arguments
    ---------
    speakers : sequence of SpeakerProfile
        The split's speakers.
    speaker_ids : sequence of str
        Their folder names.
    split : str
        ``"train"`` or ``"test"``.
    speaker_offset : int
        Global index of the first speaker (keys the per-speaker generators).
    utterances_per_speaker, sessions_per_speaker : int
        Utterances of each speaker, spread round-robin over its sessions.
    min_duration, max_duration : float
        Utterance durations are uniform in this range (seconds).
    noise_probability, reverb_probability, bandlimit_probability : float
        Share of the split's utterances that get each degradation.
    snr_low, snr_high : float
        SNR range (dB) of the additive noise.
    num_rooms : int
        Number of degradation rooms to draw from.
    babble_track_duration : float
        Length of the babble tracks (seconds, at least ``max_duration``).
    seed : int
        The corpus seed.

    Returns
    -------
    list of UtterancePlan
        Ordered by speaker, then utterance.
    """
    count = len(speakers) * utterances_per_speaker
    split_key = 0 if split == "train" else 1
    noisy = _assign(_rng(seed, _ASSIGN, split_key, 0), count, noise_probability)
    reverberant = _assign(_rng(seed, _ASSIGN, split_key, 1), count, reverb_probability)
    band_limited = _assign(_rng(seed, _ASSIGN, split_key, 2), count, bandlimit_probability)
    # Whole samples, never below min_duration (the manifests skip shorter files).
    shortest = int(np.ceil(min_duration * SAMPLE_RATE))
    bounds = (shortest, max(shortest, int(np.floor(max_duration * SAMPLE_RATE))))
    plans = []
    for s, (speaker, speaker_id) in enumerate(zip(speakers, speaker_ids)):
        index = speaker_offset + s
        channels = [sample_channel(_rng(seed, _SESSION, index, k)) for k in range(sessions_per_speaker)]
        for u in range(utterances_per_speaker):
            n = s * utterances_per_speaker + u
            rng = _rng(seed, _UTTERANCE, index, u)
            duration = float(np.clip(round(rng.uniform(min_duration, max_duration) * SAMPLE_RATE), *bounds))
            duration /= SAMPLE_RATE
            noise = NOISE_TYPES[int(rng.integers(len(NOISE_TYPES)))]
            snr_db = float(rng.uniform(snr_low, snr_high))
            babble_track = int(rng.integers(BABBLE_TRACKS))
            babble_offset = float(rng.uniform(0.0, babble_track_duration - duration))
            room = int(rng.integers(num_rooms))
            session = u % sessions_per_speaker
            plans.append(
                UtterancePlan(
                    utt_id=f"{speaker_id}/session{session + 1}/{u + 1:05d}",
                    split=split,
                    speaker=speaker,
                    duration=duration,
                    noise=noise if noisy[n] else "",
                    snr_db=snr_db,
                    babble_track=babble_track,
                    babble_offset=babble_offset,
                    room=room if reverberant[n] else -1,
                    band_limited=bool(band_limited[n]),
                    channel=channels[session],
                    seed=(seed, _RENDER, index, u),
                )
            )
    return plans


def _metadata_row(plan: UtterancePlan, text: str, rooms: Sequence[Room], folder: Path) -> Dict[str, object]:
    speaker = plan.speaker
    return {
        "ID": plan.utt_id,
        "split": plan.split,
        "spk_id": plan.utt_id.split("/")[0],
        "session": plan.utt_id.split("/")[1],
        "wav": str(_audio_path(folder, plan)),
        "duration": plan.duration,
        "voice": speaker.voice,
        "pitch": round(speaker.pitch, 2),
        "intonation": round(speaker.intonation, 2),
        "rate": round(speaker.rate, 2),
        "vocal_tract": round(speaker.vocal_tract, 4),
        "noise": plan.noise or "none",
        "snr_db": round(plan.snr_db, 2) if plan.noise else "",
        "room": plan.room if plan.room >= 0 else "",
        "rt60": round(rooms[plan.room].rt60, 3) if plan.room >= 0 else "",
        "band_limited": int(plan.band_limited),
        "level_db": round(plan.channel.level_db, 2),
        "text": text,
    }


def _check_options(options: Dict[str, object]) -> None:
    """Raises a ValueError naming the first option out of its valid range."""
    for name in ("num_train_speakers", "num_test_speakers", "num_test_trials", "num_valid_trials"):
        if options[name] < 2:
            raise ValueError(f"{name}={options[name]}: expected at least 2")
    if options["num_valid_speakers"] < 2:
        raise ValueError(f"num_valid_speakers={options['num_valid_speakers']}: expected at least 2")
    if options["utterances_per_speaker"] < 2:
        raise ValueError(f"utterances_per_speaker={options['utterances_per_speaker']}: expected at least 2")
    if not 1 <= options["sessions_per_speaker"] <= options["utterances_per_speaker"]:
        raise ValueError(
            f"sessions_per_speaker={options['sessions_per_speaker']}: expected 1 to "
            f"utterances_per_speaker={options['utterances_per_speaker']}"
        )
    if not 0 < options["min_duration"] <= options["max_duration"]:
        raise ValueError(
            f"min_duration={options['min_duration']}, max_duration={options['max_duration']}: "
            "expected 0 < min_duration <= max_duration"
        )
    for name in ("noise_probability", "reverb_probability", "bandlimit_probability"):
        if not 0.0 <= options[name] <= 1.0:
            raise ValueError(f"{name}={options[name]}: expected a probability in [0, 1]")
    if options["snr_low"] > options["snr_high"]:
        raise ValueError(f"snr_low={options['snr_low']} > snr_high={options['snr_high']}")
    # make_trials draws distinct pairs: there must be enough of them.
    utterances = options["utterances_per_speaker"]
    target_pairs = options["num_test_speakers"] * utterances * (utterances - 1) // 2
    total = options["num_test_speakers"] * utterances
    nontarget_pairs = total * (total - 1) // 2 - target_pairs
    num_target = options["num_test_trials"] // 2
    if num_target > target_pairs or options["num_test_trials"] - num_target > nontarget_pairs:
        raise ValueError(
            f"num_test_trials={options['num_test_trials']}: the {options['num_test_speakers']} test speakers "
            f"with {utterances} utterances each have only {target_pairs} target pairs (and "
            f"{nontarget_pairs} non-target pairs); lower num_test_trials or add speakers or utterances"
        )
    if options["num_rooms"] < 1 or options["num_augmentation_files"] < 1:
        raise ValueError(
            f"num_rooms={options['num_rooms']}, num_augmentation_files="
            f"{options['num_augmentation_files']}: expected at least 1 each"
        )


# What the generator owns inside save_folder (removed before a regeneration).
_OWNED = ("audio", "noise", "babble", "rir", "manifests", "test_trials.txt", "metadata.csv")


def prepare_synthetic_corpus(
    save_folder: PathLike,
    num_train_speakers: int = 40,
    num_valid_speakers: int = 8,
    num_test_speakers: int = 20,
    utterances_per_speaker: int = 20,
    sessions_per_speaker: int = 4,
    min_duration: float = 2.0,
    max_duration: float = 8.0,
    noise_probability: float = 0.6,
    snr_low: float = 5.0,
    snr_high: float = 20.0,
    reverb_probability: float = 0.3,
    bandlimit_probability: float = 0.2,
    num_test_trials: int = 2000,
    num_valid_trials: int = 500,
    num_rooms: int = 32,
    num_augmentation_files: int = 12,
    seed: int = 1234,
    num_workers: int = 2,
) -> Dict[str, str]:
    """Generates (or reuses) the synthetic corpus and prepares its manifests, trials and noise CSVs.

    Arguments
    ---------
    save_folder : str or Path
        Where the corpus goes (layout in the module docstring).
    num_train_speakers : int
        Speakers used for training.
    num_valid_speakers : int
        Further speakers in the training tree, held out for validation.
    num_test_speakers : int
        Speakers of the test tree (disjoint from the others).
    utterances_per_speaker : int
        Utterances of every speaker.
    sessions_per_speaker : int
        Sessions (each with its own channel) the utterances are spread over.
    min_duration, max_duration : float
        Range of utterance durations in seconds.
    noise_probability : float
        Share of utterances with additive noise (white, pink, brown or babble).
    snr_low, snr_high : float
        SNR range of that noise in dB.
    reverb_probability : float
        Share of utterances recorded in a simulated room.
    bandlimit_probability : float
        Share of utterances band-limited to the telephone band (300-3400 Hz).
    num_test_trials, num_valid_trials : int
        Trials in the test and validation lists (half target).
    num_rooms : int
        Simulated rooms the reverberant utterances draw from.
    num_augmentation_files : int
        Files in each augmentation set (noise, babble, rir), all different
        from the noises and rooms of the corpus itself.
    seed : int
        Seed of everything; the same seed gives byte-identical audio.
    num_workers : int
        Processes generating audio (does not change the output).

    Returns
    -------
    dict
        Paths: ``"train"``, ``"valid"`` (manifest CSVs), ``"valid_trials"``
        (relative to ``"train_audio"``), ``"label_encoder"``, ``"test_trials"``
        (relative to ``"test_audio"``), ``"train_audio"``, ``"test_audio"``,
        ``"metadata"``, and the augmentation CSVs ``"noise"``, ``"babble"``, ``"rir"``.

    Example
    -------
    >>> import tempfile
    >>> paths = prepare_synthetic_corpus(
    ...     str(getfixture("tmpdir")), num_train_speakers=2, num_valid_speakers=2, num_test_speakers=2,
    ...     utterances_per_speaker=2, sessions_per_speaker=1, min_duration=1.0, max_duration=1.5,
    ...     num_test_trials=4, num_valid_trials=2, num_rooms=1, num_augmentation_files=1, num_workers=1,
    ... )
    >>> Path(paths["test_trials"]).read_text().count("\\n")
    4
    """
    options = {
        "generator_version": GENERATOR_VERSION,
        # Another espeak-ng release speaks differently (and may list other voices).
        "espeakng_loader": espeak_version(),
        "num_train_speakers": num_train_speakers,
        "num_valid_speakers": num_valid_speakers,
        "num_test_speakers": num_test_speakers,
        "utterances_per_speaker": utterances_per_speaker,
        "sessions_per_speaker": sessions_per_speaker,
        "min_duration": min_duration,
        "max_duration": max_duration,
        "noise_probability": noise_probability,
        "snr_low": snr_low,
        "snr_high": snr_high,
        "reverb_probability": reverb_probability,
        "bandlimit_probability": bandlimit_probability,
        "num_test_trials": num_test_trials,
        "num_valid_trials": num_valid_trials,
        "num_rooms": num_rooms,
        "num_augmentation_files": num_augmentation_files,
        "seed": seed,
    }
    _check_options(options)
    folder = Path(save_folder).absolute()
    audio = folder / "audio"
    options_file = folder / "synthetic_corpus.json"
    outputs = {
        "train_audio": str(audio / "train"),
        "test_audio": str(audio / "test"),
        "test_trials": str(folder / "test_trials.txt"),
        "metadata": str(folder / "metadata.csv"),
    }
    if is_prepared(options_file, options, outputs.values()):
        logger.info("Synthetic corpus in %s already generated with these options; reusing it.", folder)
    else:
        _generate(folder, options, num_workers)
        mark_prepared(options_file, options)
    # Both preparations are idempotent: on a reused corpus they return at once.
    outputs.update(
        prepare_custom_corpus(
            outputs["train_audio"],
            folder / "manifests",
            num_valid_speakers=num_valid_speakers,
            num_valid_trials=num_valid_trials,
            seed=seed,
            min_duration=min_duration,
        )
    )
    outputs.update(
        prepare_noise_csvs(
            folder / "manifests",
            noise_folders={kind: folder / kind for kind in ("noise", "babble", "rir")},
        )
    )
    return outputs


def _generate(folder: Path, options: Dict[str, object], num_workers: int) -> None:
    """Writes the audio, augmentation sets, test trials and metadata (see prepare_synthetic_corpus)."""
    (folder / "synthetic_corpus.json").unlink(missing_ok=True)
    for name in _OWNED:  # leftovers of an older or interrupted generation
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    seed = options["seed"]
    num_train = options["num_train_speakers"] + options["num_valid_speakers"]
    num_speakers = num_train + options["num_test_speakers"]
    # One draw for corpus and crowds, so that no two share a (language, variant) voice.
    speakers = sample_speakers(_rng(seed, _SPEAKERS), num_speakers + 2 * CROWD_SIZE)
    crowd, augmentation_crowd = speakers[num_speakers:-CROWD_SIZE], speakers[-CROWD_SIZE:]
    speaker_ids = [f"spk{index + 1:04d}" for index in range(num_speakers)]
    num_rooms, num_files = options["num_rooms"], options["num_augmentation_files"]
    rooms = [sample_room(_rng(seed, _ROOM, 0, r)) for r in range(num_rooms)]
    augmentation_rooms = [sample_room(_rng(seed, _ROOM, 1, r)) for r in range(num_files)]
    room_tasks = [(room, (seed, _ROOM, 2, r)) for r, room in enumerate(rooms + augmentation_rooms)]
    track_duration = max(BABBLE_TRACK_DURATION, options["max_duration"])
    noise_tasks = [
        _NoiseTask("babble", track_duration, (seed, _BABBLE, t), crowd) for t in range(BABBLE_TRACKS)
    ]
    augmentation_kinds = [(colour, "noise") for colour in NOISE_COLOURS] + [("babble", "babble")]
    noise_tasks += [
        _NoiseTask(kind, AUGMENTATION_DURATION, (seed, _AUGMENT, k, i), augmentation_crowd)
        for k, (kind, _) in enumerate(augmentation_kinds)
        for i in range(num_files)
    ]

    plan_options = {
        key: options[key]
        for key in (
            "utterances_per_speaker", "sessions_per_speaker", "min_duration", "max_duration",
            "noise_probability", "snr_low", "snr_high", "reverb_probability", "bandlimit_probability",
            "num_rooms",
        )
    }  # fmt: skip
    plans = plan_utterances(
        speakers[:num_train], speaker_ids[:num_train], "train", 0,
        babble_track_duration=track_duration, seed=seed, **plan_options,
    ) + plan_utterances(
        speakers[num_train:num_speakers], speaker_ids[num_train:], "test", num_train,
        babble_track_duration=track_duration, seed=seed, **plan_options,
    )  # fmt: skip

    with _worker_map(num_workers) as run:
        rirs = run(_simulate_room, room_tasks, "Simulating rooms")
        tracks = run(_noise_track, noise_tasks, "Synthesising noise")
        for index, rir in enumerate(rirs[num_rooms:]):
            _write_wav(folder / "rir" / f"room_{index + 1:03d}.wav", to_pcm16(rir, level_db=0.0))
        augmentation_tracks = iter(tracks[BABBLE_TRACKS:])
        for kind, folder_name in augmentation_kinds:
            for index in range(num_files):
                # Peak-normalised: AddNoise rescales each noise to the SNR it draws.
                pcm = to_pcm16(next(augmentation_tracks), level_db=0.0)
                _write_wav(folder / folder_name / f"{kind}_{index + 1:03d}.wav", pcm)
        tasks = [
            _RenderTask(
                plan,
                rirs[plan.room] if plan.room >= 0 else None,
                _babble_stretch(tracks[plan.babble_track], plan) if plan.noise == "babble" else None,
                _audio_path(folder, plan),
            )
            for plan in plans
        ]
        texts = run(_render, tasks, "Synthesising utterances")

    rows = [_metadata_row(plan, text, rooms, folder) for plan, text in zip(plans, texts)]
    write_csv(rows, folder / "metadata.csv", METADATA_FIELDS)
    test_utterances: Dict[str, List[str]] = {}
    for plan in plans:
        if plan.split == "test":
            test_utterances.setdefault(plan.utt_id.split("/")[0], []).append(f"{plan.utt_id}.wav")
    write_trials(make_trials(test_utterances, options["num_test_trials"], seed), folder / "test_trials.txt")
    logger.info(
        "Synthetic corpus: %d utterances (%.1f h) of %d speakers in %s",
        len(plans),
        sum(plan.duration for plan in plans) / 3600,
        num_speakers,
        folder,
    )


def _audio_path(folder: Path, plan: UtterancePlan) -> Path:
    """Where the utterance of ``plan`` is written under the corpus ``folder``."""
    return folder / "audio" / plan.split / f"{plan.utt_id}.wav"


def _babble_stretch(track: np.ndarray, plan: UtterancePlan) -> np.ndarray:
    """The stretch of a babble track that ``plan`` uses as its noise."""
    start = int(round(plan.babble_offset * SAMPLE_RATE))
    return track[start : start + int(round(plan.duration * SAMPLE_RATE))]
