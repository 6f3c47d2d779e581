"""The attack table of issue 14: bad inputs of every kind against the CLI and the library.

Each case runs a command the way a careful user would misuse it and is
classified by what came back:

- ``works``: an input that should work did (exit 0, a finite score);
- ``clear error``: refused with a message naming the file, key or line (no traceback);
- ``crash/traceback``: an exception escaped, or the refusal does not name its cause;
- ``silent wrong``: an input that must be refused gave an answer (exit 0);
- ``hang``: no answer within ``--timeout`` seconds.

Categories: bad audio (both a Base-type and a Large-type tiny random WavLM),
bad model folders, bad trial lists and corpora, bad configuration (the
training recipe, which must stop before data preparation), kills at chosen
points (``embed``, ``export``, the verification recipe) followed by a rerun,
two processes on one output, and a full disk (a small tmpfs; needs root,
skipped otherwise). Everything runs on tiny random models built here, offline,
in a few minutes on two CPU cores.

Usage
-----
    HF_HUB_OFFLINE=1 python benchmarks/attack_table.py            # the table
    HF_HUB_OFFLINE=1 python benchmarks/attack_table.py --details  # and one line per case

Authors
 * lap-speechbrain contributors 2026
"""

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ("works", "clear error", "crash/traceback", "silent wrong", "hang")
TINY_WAVLM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                  num_buckets=32, max_bucket_distance=64)
BACKEND = dict(lap_channels=16, num_heads=4, embedding_dim=8)
SPEAKERS = ["a", "b", "c"]


class Payload:
    """An arbitrary pickled object in place of a state dict: weights-only loading must refuse it."""


class Timeout(BaseException):
    """Raised by the alarm: the case did not answer in time."""


class Table:
    """Outcomes per category, and one line per case."""

    def __init__(self):
        self.counts: Dict[str, Counter] = defaultdict(Counter)
        self.lines: List[str] = []

    def add(self, category: str, case: str, outcome: str, note: str = "") -> None:
        self.counts[category][outcome] += 1
        self.lines.append(f"{category} | {case} | {outcome} | {note[:160]}")
        print(f"  {outcome:15s} {case}: {note[:120]}", flush=True)

    def markdown(self) -> str:
        rows = ["| category | cases tried | " + " | ".join(OUTCOMES) + " |",
                "|---|---:|" + "---:|" * len(OUTCOMES)]
        for category, counts in self.counts.items():
            rows.append(f"| {category} | {sum(counts.values())} | "
                        + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
        return "\n".join(rows)


# The package's error types: a recipe (a SpeechBrain-style script) stops with
# one of these as its last line, after Python's traceback; any other exception
# type (KeyError, TypeError, RuntimeError, ...) is a crash.
DOCUMENTED_ERRORS = ("ValueError", "FileNotFoundError", "OSError", "TrialListError", "NonFiniteError", "AudioError",
                     "ExportError", "ModelConfigError", "CheckpointError", "MissingAudioError", "FolderInUseError",
                     "NoSpaceLeftError")


def classify(expect_ok: bool, rc: Optional[int], out: str, err: str, names: str,
             script: bool = False) -> Tuple[str, str]:
    """The outcome of one run (rc None: timed out) and a note.

    With ``script`` (a recipe), a traceback that ends in one of
    :data:`DOCUMENTED_ERRORS` whose message names ``names`` is a clear error.
    """
    if script and not err.strip():
        err = out  # SpeechBrain's excepthook logs a recipe's traceback to stdout
    message = (err.strip().splitlines() or [""])[-1]
    if rc is None:
        return "hang", "no answer"
    if "Traceback (most recent call last)" in err:
        final = message.split(":")[0].rsplit(".", 1)[-1]
        if not (script and final in DOCUMENTED_ERRORS and names in message):
            return "crash/traceback", message
    if rc == 0:
        if "nan" in out.lower() and "score" in out:
            return "silent wrong", out.strip()
        return ("works", out.strip().splitlines()[-1] if out.strip() else "") if expect_ok else \
            ("silent wrong", "exit 0: " + out.strip()[-100:])
    if names and names not in err:
        return "crash/traceback", f"error does not name {names!r}: {message}"
    return "clear error", ("refused a valid input: " if expect_ok else "") + message


def in_process(
    function: Callable[[], Optional[int]], timeout: float, library: bool = False
) -> Tuple[Optional[int], str, str]:
    """Runs ``function`` capturing its output; an escaping exception is printed as a traceback.

    With ``library``, the documented error types of a library function
    (``ValueError`` and ``OSError`` and their subclasses) are its clear
    errors: their message is printed without a traceback. Anything else
    (``KeyError``, ``TypeError``, ``RuntimeError``...) counts as a crash.
    """
    out, err = io.StringIO(), io.StringIO()

    def alarm(*_):
        raise Timeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(math.ceil(timeout)))
    rc: Optional[int]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result = function()
                rc = result if isinstance(result, int) else 0  # main() returns its exit status
            except SystemExit as error:  # argparse usage errors
                rc = int(error.code or 0)
            except Timeout:
                rc = None
            except (ValueError, OSError) as error:
                if not library:
                    raise
                print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
                rc = 1
            except Exception:  # noqa: BLE001 - a traceback is what the table counts
                traceback.print_exc()
                rc = 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return rc, out.getvalue(), err.getvalue()


def subprocess_run(argv: Sequence[str], timeout: float, cwd: Path = REPO) -> Tuple[Optional[int], str, str]:
    """Runs a command; rc None when it had to be killed after ``timeout`` seconds."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as error:
        return None, str(error.stdout or ""), str(error.stderr or "")
    return done.returncode, done.stdout, done.stderr


def cli(*argv: str) -> List[str]:
    return [sys.executable, "-m", "lap_speechbrain.cli", *argv]


# ---------------------------------------------------------------- models


def build_model(root: Path, kind: str, seed: int = 0) -> Path:
    """A training output folder of a tiny random model (Base- or Large-type WavLM); returns it."""
    import torch
    from speechbrain.integrations.huggingface.wavlm import WavLM

    from lap_speechbrain.demo.random_ssl import save_random_wavlm
    from lap_speechbrain.export.folder import export_model
    from lap_speechbrain.lobes import SSLSpeakerEncoder
    from lap_speechbrain.nnet import SubCenterClassifier

    large = kind == "large"
    ssl_folder = save_random_wavlm(root / f"wavlm_{kind}", seed=seed, do_stable_layer_norm=large,
                                   feat_extract_norm="layer" if large else "group", **TINY_WAVLM)
    torch.manual_seed(seed)
    encoder = SSLSpeakerEncoder(WavLM(ssl_folder, save_path=str(root / "cache")), frozen=True, **BACKEND).eval()
    output = root / f"train_{kind}"
    (output / "save").mkdir(parents=True)
    export_model(output / "model", encoder.ssl_model.model.config.to_dict(), encoder.backend_config,
                 encoder.state_dict(), SubCenterClassifier(8, len(SPEAKERS)).state_dict(), SPEAKERS, 0.3)
    return output


# ---------------------------------------------------------------- audio


def tone(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    signal_ = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    return np.repeat(signal_[:, None], channels, axis=1).astype(np.float32)


def audio_cases(folder: Path) -> List[Tuple[str, Path, bool, str]]:
    """(case, path, should work, the name the error must contain) for every bad-audio case."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: List[Tuple[str, Path, bool, str]] = []

    def add(name: str, file: str, ok: bool, writer: Optional[Callable[[Path], object]]) -> None:
        path = folder / file
        if writer is not None:
            writer(path)
        cases.append((name, path, ok, "" if ok else path.name))

    add("missing file", "missing.wav", False, None)
    add("empty file", "empty.wav", False, lambda p: p.write_bytes(b""))
    add("header only", "header.wav", False, lambda p: sf.write(p, np.zeros((0, 1), np.float32), 16000))

    def truncated(path: Path) -> None:
        sf.write(path, tone(1.0), 16000, subtype="PCM_16")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    add("truncated (half the data)", "truncated.wav", True, truncated)
    add("text file named .wav", "text.wav", False, lambda p: p.write_text("not audio at all\n" * 20))
    add("1 sample", "one.wav", False, lambda p: sf.write(p, np.zeros(1, np.float32), 16000))
    add("399 samples", "s399.wav", False, lambda p: sf.write(p, tone(399 / 16000), 16000))
    add("400 samples", "s400.wav", True, lambda p: sf.write(p, tone(400 / 16000), 16000))
    add("silence 1 s", "silence.wav", True, lambda p: sf.write(p, np.zeros(16000, np.float32), 16000))
    for label, value in (("NaN", np.nan), ("+inf", np.inf), ("-inf", -np.inf)):
        def bad(path: Path, value=value) -> None:
            samples = tone(1.0)
            samples[5000] = value
            sf.write(path, samples, 16000, subtype="FLOAT")
        add(f"{label} sample", f"bad_{label.strip('+-')}{'m' if label.startswith('-') else ''}.wav", False, bad)
    add("clipping (float +-8)", "clip_float.wav", True, lambda p: sf.write(p, np.clip(tone(1.0) * 40, -8, 8), 16000,
                                                                         subtype="FLOAT"))
    add("clipping (int16 full scale)", "clip_int.wav", True,
        lambda p: sf.write(p, np.sign(tone(1.0)), 16000, subtype="PCM_16"))
    for rate in (8000, 22050, 48000):
        add(f"{rate} Hz", f"rate_{rate}.wav", True, lambda p, rate=rate: sf.write(p, tone(1.0, rate), rate))
    add("stereo", "stereo.wav", True, lambda p: sf.write(p, tone(1.0, channels=2), 16000))
    add("6 channels", "six.wav", True, lambda p: sf.write(p, tone(1.0, channels=6), 16000))
    for subtype in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW"):
        add(f"wav {subtype}", f"sub_{subtype}.wav", True,
            lambda p, subtype=subtype: sf.write(p, tone(1.0), 16000, subtype=subtype))
    add("flac", "audio.flac", True, lambda p: sf.write(p, tone(1.0), 16000, format="FLAC"))
    for name, fmt, subtype in (("ogg vorbis", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")):
        path = folder / f"audio.{fmt.lower()}"
        try:
            sf.write(path, tone(1.0), 16000, format=fmt, subtype=subtype)
            add(name, path.name, True, None)
        except (sf.LibsndfileError, ValueError, TypeError):  # this libsndfile cannot write it
            add(f"{name} (garbage: no encoder here)", path.name, False,
                lambda p: p.write_bytes(b"\xff\xfb\x90\x00" + bytes(2000)))
    add("m4a (no decoder here)", "audio.m4a", False,
        lambda p: p.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(4000)))
    add("20-minute file", "long.wav", True, lambda p: sf.write(p, tone(1200.0), 16000, subtype="PCM_16"))
    add("unicode path", "spëaker_話者.wav", True, lambda p: sf.write(p, tone(1.0), 16000))
    add("space in path", "my file.wav", True, lambda p: sf.write(p, tone(1.0), 16000))
    add("leading dash path", "-dash.wav", True, lambda p: sf.write(p, tone(1.0), 16000))
    return cases


def run_audio(table: Table, models: Dict[str, Path], work: Path, timeout: float) -> None:
    from lap_speechbrain.cli import main

    cases = audio_cases(work / "audio")
    good = work / "good.wav"
    sf.write(good, tone(1.5, seed=3), 16000)
    for kind, model in models.items():
        print(f"bad audio, {kind}-type WavLM", flush=True)
        for name, path, ok, names in cases:
            # A leading dash needs "--" before the paths, as with every command-line tool.
            argv = ["verify", "--model", str(model), "--", str(good), str(path)] if path.name.startswith("-") \
                else ["verify", str(good), str(path), "--model", str(model)]
            started = time.monotonic()
            rc, out, err = in_process(lambda: main(argv), timeout)
            outcome, note = classify(ok, rc, out, err, names)
            table.add("bad audio", f"{kind}: {name}", outcome, f"{time.monotonic() - started:.0f} s; {note}")
        # The batch entry point: a folder with one NaN file among good ones.
        batch = work / f"batch_{kind}"
        batch.mkdir()
        shutil.copyfile(good, batch / "good.wav")
        shutil.copyfile(work / "audio" / "bad_NaN.wav", batch / "bad_NaN.wav")
        rc, out, err = in_process(lambda: main(["embed", str(batch), "--model", str(model),
                                                "--out", str(batch / "e.pt")]), timeout)
        outcome = classify(False, rc, out, err, "bad_NaN.wav")
        if (batch / "e.pt").exists():
            outcome = ("silent wrong", "embeddings file written")
        table.add("bad audio", f"{kind}: embed folder with a NaN file", *outcome)


# ---------------------------------------------------------------- model folders


def run_model_folders(table: Table, models: Dict[str, Path], work: Path, timeout: float) -> None:
    import torch

    from lap_speechbrain.cli import main
    from lap_speechbrain.export.folder import fill_template

    print("bad model folders", flush=True)
    good = work / "good.wav"
    source = models["large"] / "model"
    other = models["base"] / "model"

    def copy(name: str) -> Path:
        folder = work / "models" / name
        shutil.copytree(source, folder)
        return folder

    def edit(name: str, values: dict) -> Path:
        folder = copy(name)
        text = (folder / "hyperparams.yaml").read_text()
        (folder / "hyperparams.yaml").write_text(fill_template(text, values))
        return folder

    def strip_record(name: str) -> Path:
        folder = copy(name)
        lines = (folder / "hyperparams.yaml").read_text().splitlines(keepends=True)
        start = next(i for i, line in enumerate(lines) if line.startswith("trained_with:"))
        end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
        kept = [line for line in lines[:start] + lines[end:] if "trained_with" not in line]
        (folder / "hyperparams.yaml").write_text("".join(kept))
        (folder / "trained_with.ckpt").unlink()
        return folder

    def with_file(name: str, file: str, write: Callable[[Path], object]) -> Path:
        folder = copy(name)
        write(folder / file)
        return folder

    (work / "models").mkdir()
    (work / "models" / "empty").mkdir()
    (work / "models" / "a_file").write_text("x")
    (work / "models" / "run_without_model" / "save").mkdir(parents=True)
    cases: List[Tuple[str, Path, bool, str]] = [
        ("missing folder", work / "models" / "nope", False, "nope"),
        ("a file, not a folder", work / "models" / "a_file", False, "a_file"),
        ("empty folder", work / "models" / "empty", False, "empty"),
        ("training output without model/", work / "models" / "run_without_model", False, "run_without_model"),
        ("folder of audio", work / "audio", False, "audio"),
        ("hyperparams.yaml garbage", with_file("yaml_garbage", "hyperparams.yaml",
                                               lambda p: p.write_text(": : [\n")), False, "hyperparams.yaml"),
        ("hyperparams.yaml cut in half", with_file("yaml_half", "hyperparams.yaml",
                                                   lambda p: p.write_text(p.read_text()[:1500])), False, ""),
        ("embedding_model.ckpt missing", with_file("no_ckpt", "embedding_model.ckpt", os.remove), False,
         "embedding_model.ckpt"),
        ("embedding_model.ckpt truncated", with_file("half_ckpt", "embedding_model.ckpt",
                                                     lambda p: p.write_bytes(p.read_bytes()[:1000])), False,
         "embedding_model.ckpt"),
        ("embedding_model.ckpt of another model type", with_file(
            "other_ckpt", "embedding_model.ckpt",
            lambda p: shutil.copyfile(other / "embedding_model.ckpt", p)), False, ""),
        ("classifier.ckpt of other classes", with_file(
            "other_classes", "classifier.ckpt",
            lambda p: torch.save({"weight": torch.zeros(12, 8)}, p)), False, ""),
        ("label_encoder.ckpt missing", with_file("no_labels", "label_encoder.ckpt", os.remove), False,
         "label_encoder.ckpt"),
        ("pickled object as checkpoint", with_file("pickle", "classifier.ckpt",
                                                   lambda p: torch.save(Payload(), p)), False, ""),
        ("yaml edited: layer_pooling", edit("pooling", {"layer_pooling": "mean"}), False, "layer_pooling"),
        ("yaml edited: min_audio_samples 0", edit("min0", {"min_audio_samples": 0}), False, "min_audio_samples"),
        ("yaml edited: lap_channels", edit("channels", {"lap_channels": 32}), False, ""),
        ("yaml edited: embedding_dim", edit("embdim", {"embedding_dim": 16}), False, ""),
        ("trained_with.ckpt missing", with_file("no_record", "trained_with.ckpt", os.remove), False,
         "trained_with.ckpt"),
        ("trained_with.ckpt garbage", with_file("bad_record", "trained_with.ckpt",
                                                lambda p: p.write_text("{")), False, "trained_with.ckpt"),
        ("exported before the record (old folder)", strip_record("old"), True, ""),
        ("hub id, offline and not cached", Path("nobody/no-such-model"), False, "nobody/no-such-model"),
    ]
    for name, folder, ok, names in cases:
        rc, out, err = in_process(lambda: main(["verify", str(good), str(good), "--model", str(folder)]), timeout)
        table.add("bad model folders", name, *classify(ok, rc, out, err, names))


# ---------------------------------------------------------------- trial lists and corpora


def run_trials_and_corpora(table: Table, work: Path, timeout: float) -> None:
    import functools

    import torch

    from lap_speechbrain.data.custom import prepare_custom_corpus
    from lap_speechbrain.inference import load_audio
    from lap_speechbrain.scoring import run_verification

    print("bad trial lists and corpora", flush=True)
    corpus = work / "corpus"
    files = []
    for speaker in range(4):
        for index in range(3):
            relative = f"id{speaker}/v/{index}.wav"
            (corpus / relative).parent.mkdir(parents=True, exist_ok=True)
            sf.write(corpus / relative, tone(1.2, seed=10 * speaker + index) * (1 + speaker), 16000)
            files.append(relative)

    def embed(wavs: "torch.Tensor", wav_lens: "torch.Tensor") -> "torch.Tensor":
        return torch.stack([torch.log(torch.stft(w, 64, window=torch.hann_window(64), return_complex=True)
                                      .abs().mean(dim=1)[1:17] + 1e-3) for w in wavs])

    load = functools.partial(load_audio, target_sample_rate=16000)
    a, b, c, d = files[0], files[1], files[3], files[6]
    good = f"1 {a} {b}\n0 {a} {c}\n1 {c} {files[4]}\n0 {b} {d}\n"
    nan = corpus / "id3" / "v" / "nan.wav"
    samples = tone(1.0)
    samples[10] = np.nan
    sf.write(nan, samples, 16000, subtype="FLOAT")
    cases: List[Tuple[str, str, bool, str]] = [
        ("good list", good, True, ""),
        ("malformed line (2 fields)", good + f"1 {a}\n", False, "line 5"),
        ("label 2", good + f"2 {a} {d}\n", False, "line 5"),
        ("label 'yes'", good + f"yes {a} {d}\n", False, "line 5"),
        ("UTF-8 BOM", "\ufeff" + good, True, ""),
        ("CRLF line ends", good.replace("\n", "\r\n"), True, ""),
        ("tabs", good.replace(" ", "\t"), True, ""),
        ("duplicate trial, same label", good + f"1 {b} {a}\n", True, ""),
        ("duplicate trial, other label", good + f"0 {a} {b}\n", False, "line 5"),
        ("path traversal ../", good + f"1 ../{a} {b}\n", False, "line 5"),
        ("absolute path", good + f"1 /etc/passwd {b}\n", False, "line 5"),
        ("all target", f"1 {a} {b}\n1 {c} {files[4]}\n", False, "trials.txt"),
        ("all non-target", f"0 {a} {c}\n0 {b} {d}\n", False, "trials.txt"),
        ("empty list", "", False, "trials.txt"),
        ("same utterance twice in a trial", good + f"1 {a} {a}\n", False, "line 5"),
        ("utterance missing on disk", good + f"0 {a} id9/v/0.wav\n", False, "id9/v/0.wav"),
        ("NaN audio in the corpus", good + f"0 {a} id3/v/nan.wav\n", False, "nan.wav"),
    ]
    for index, (name, text, ok, names) in enumerate(cases):
        trials = work / f"lists/{index}/trials.txt"
        trials.parent.mkdir(parents=True)
        trials.write_bytes(text.encode("utf-8"))

        def score(trials=trials, index=index) -> None:
            results = run_verification(embed, load, "m", {"O": trials}, corpus, work / f"ver/{index}")
            print(f"score EER {results}")

        rc, out, err = in_process(score, timeout, library=True)
        table.add("bad trial lists", name, *classify(ok, rc, out, err, names))
    rc, out, err = in_process(lambda: run_verification(embed, load, "m", {"O": work / "no_such_list.txt"}, corpus,
                                                       work / "ver/missing"), timeout, library=True)
    table.add("bad trial lists", "trial list file missing", *classify(False, rc, out, err, "no_such_list.txt"))

    def corpus_case(name: str, build: Callable[[Path], object], ok: bool, names: str) -> None:
        root = work / "corpora" / name.replace(" ", "_")
        root.mkdir(parents=True)
        build(root)
        rc, out, err = in_process(lambda: prepare_custom_corpus(root, work / "prepared" / root.name,
                                                                num_valid_speakers=2, num_valid_trials=4,
                                                                min_duration=0.5, num_workers=1), timeout,
                                  library=True)
        table.add("bad corpora", name, *classify(ok, rc, out, err, names))

    def speakers(root: Path, count: int = 4, seconds: float = 1.0) -> None:
        for speaker in range(count):
            (root / f"spk{speaker}").mkdir()
            for index in range(2):
                sf.write(root / f"spk{speaker}" / f"{index}.wav", tone(seconds, seed=speaker * 7 + index), 16000)

    def loop(root: Path) -> None:
        speakers(root)
        os.symlink("..", root / "spk0" / "loop")

    def text_files(root: Path) -> None:
        speakers(root)
        (root / "spk1" / "notes.wav").write_text("not audio")

    corpus_case("good corpus", speakers, True, "")
    corpus_case("empty folder", lambda root: None, False, "")
    corpus_case("symlink loop", loop, True, "")
    corpus_case("one speaker", lambda root: speakers(root, 1), False, "")
    corpus_case("all files too short", lambda root: speakers(root, 3, 0.2), False, "")
    corpus_case("a text file named .wav", text_files, True, "")
    rc, out, err = in_process(lambda: prepare_custom_corpus(work / "corpora" / "nope", work / "prepared" / "nope",
                                                            num_valid_speakers=2, num_valid_trials=4), timeout,
                              library=True)
    table.add("bad corpora", "missing folder", *classify(False, rc, out, err, "nope"))


# ---------------------------------------------------------------- configuration


def run_configuration(table: Table, work: Path, timeout: float) -> None:
    print("bad configuration (training recipe; must stop before data preparation)", flush=True)
    cases = [
        ("misspelled stage key --frozen={epoch: 1}", ["--frozen={epoch: 1}"], "epoch"),
        ("unknown --run_stages entry", ["--run_stages=[frozen, jiont]"], "jiont"),
        ("unknown top-level override", ["--num_worker=2"], "num_worker"),
        ("epochs: 0", ["--frozen={epochs: 0}"], "epochs"),
        ("negative batch size", ["--joint={batch_size: -4}"], "batch_size"),
        ("--data_prep=custom with the demo yaml", ["--data_prep=custom"], "musan_folder"),
        ("probability 1.5", ["--joint={speed_perturb_prob: 1.5}"], "speed_perturb_prob"),
    ]
    for index, (name, overrides, names) in enumerate(cases):
        output = work / "config" / str(index)
        data = work / "config_data" / str(index)
        rc, out, err = subprocess_run([sys.executable, "recipes/train_speaker_embeddings.py", "hparams/demo.yaml",
                                       f"--output_folder={output}", f"--data_folder={data}", *overrides], timeout)
        outcome = classify(False, rc, out, err, names, script=True)
        if data.exists():
            outcome = ("silent wrong" if outcome[0] != "hang" else "hang", "data preparation started: " + outcome[1])
        table.add("bad configuration", name, *outcome)


# ---------------------------------------------------------------- kills, two processes, full disk


def leftovers(folder: Path) -> List[str]:
    """Hidden temporaries (not the lock file) under ``folder`` and next to it."""
    found = [p for p in folder.rglob(".*") if p.name != ".lock"] if folder.is_dir() else []
    found += [p for p in folder.parent.glob(f".{folder.name}.*")]
    return sorted(str(p) for p in found)


def kill_after(argv: Sequence[str], seconds: float) -> None:
    """Starts ``argv`` and SIGKILLs it after ``seconds`` (if still running)."""
    process = subprocess.Popen(list(argv), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()


def run_kills(table: Table, models: Dict[str, Path], work: Path, timeout: float, delays: Sequence[float]) -> None:
    import torch

    print("kills at chosen points, then a rerun", flush=True)
    model = models["large"]
    folder = work / "kill_audio"
    folder.mkdir()
    for index in range(24):
        sf.write(folder / f"{index}.wav", tone(1.0 + index % 5, seed=index), 16000)
    reference = work / "kill_reference.pt"
    rc, _, err = subprocess_run(cli("embed", str(folder), "--model", str(model), "--out", str(reference)), timeout)
    expected = torch.load(reference, weights_only=True)["embeddings"]
    for delay in delays:
        out = work / "kills" / f"embed_{delay}" / "e.pt"
        out.parent.mkdir(parents=True)
        kill_after(cli("embed", str(folder), "--model", str(model), "--out", str(out)), delay)
        rc, stdout, err = subprocess_run(cli("embed", str(folder), "--model", str(model), "--out", str(out)), timeout)
        outcome = classify(True, rc, stdout, err, "")
        if outcome[0] == "works":
            same = torch.allclose(torch.load(out, weights_only=True)["embeddings"], expected, atol=1e-5)
            left = leftovers(out.parent)
            if not same or left:
                outcome = ("silent wrong", f"same embeddings: {same}; left: {left}")
        table.add("kills", f"embed killed after {delay} s, rerun", *outcome)
    for delay in delays:
        out = work / "kills" / f"export_{delay}" / "exported"
        out.parent.mkdir(parents=True)
        kill_after(cli("export", str(model), str(out)), delay)
        rc, stdout, err = subprocess_run(cli("export", str(model), str(out), "--overwrite"), timeout)
        outcome = classify(True, rc, stdout, err, "")
        left = leftovers(out)
        if outcome[0] == "works":
            rc2, out2, err2 = subprocess_run(cli("verify", str(folder / "0.wav"), str(folder / "1.wav"),
                                                 "--model", str(out)), timeout)
            if rc2 != 0 or left:
                outcome = ("silent wrong", f"verify rc {rc2}; left: {left}")
        table.add("kills", f"export killed after {delay} s, rerun --overwrite", *outcome)
    trials = work / "kill_trials.txt"
    trials.write_text("1 0.wav 5.wav\n0 0.wav 1.wav\n1 1.wav 6.wav\n0 2.wav 3.wav\n")
    clean = work / "kills" / "verification_clean"
    recipe = [sys.executable, "recipes/speaker_verification.py", "hparams/verification.yaml",
              f"--model={model}", f"--data_folder={folder}", "--num_workers=0",
              f"--trial_lists={{O: {trials}, E: null, H: null}}"]
    subprocess_run(recipe + [f"--output_folder={clean}"], timeout)
    expected_results = json.loads((clean / "results.json").read_text()) if (clean / "results.json").exists() else None
    for delay in delays:
        output = work / "kills" / f"verification_{delay}"
        kill_after(recipe + [f"--output_folder={output}"], delay)
        rc, stdout, err = subprocess_run(recipe + [f"--output_folder={output}"], timeout)
        outcome = classify(True, rc, stdout, err, "", script=True)
        if outcome[0] == "works":
            results = json.loads((output / "results.json").read_text())
            left = leftovers(output)
            if results != expected_results or left:
                outcome = ("silent wrong", f"results equal: {results == expected_results}; left: {left}")
        table.add("kills", f"verification recipe killed after {delay} s, rerun", *outcome)


def run_two_processes(table: Table, models: Dict[str, Path], work: Path, timeout: float) -> None:
    import torch

    print("two processes on one output", flush=True)
    model = models["large"]
    folder = work / "kill_audio"
    trials = work / "kill_trials.txt"
    output = work / "two" / "verification"
    recipe = [sys.executable, "recipes/speaker_verification.py", "hparams/verification.yaml",
              f"--model={model}", f"--data_folder={folder}", "--num_workers=0", f"--output_folder={output}",
              f"--trial_lists={{O: {trials}, E: null, H: null}}"]
    first = subprocess.Popen(recipe, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)
    rc, out, err = subprocess_run(recipe, timeout)
    first_out, first_err = first.communicate(timeout=timeout)
    outcome = classify(False, rc, out, err, "in use by another run", script=True)
    if first.returncode != 0:
        outcome = ("crash/traceback", "the first run failed: " + first_err.strip()[-120:])
    table.add("two processes", "two verification runs, one output folder", *outcome)

    out_file = work / "two" / "e.pt"
    runs = [subprocess.Popen(cli("embed", str(folder), "--model", str(model), "--out", str(out_file)), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [run.communicate(timeout=timeout) for run in runs]
    ok = all(run.returncode == 0 for run in runs)
    whole = ok and torch.load(out_file, weights_only=True)["embeddings"].shape[0] == 24
    table.add("two processes", "two embeds, one --out file",
              "works" if whole and not leftovers(out_file.parent) else "crash/traceback",
              f"rc {[run.returncode for run in runs]}; {results[0][1].strip()[-80:]}")

    exported = work / "two" / "exported"
    runs = [subprocess.Popen(cli("export", str(model), str(exported), "--overwrite"), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [run.communicate(timeout=timeout) for run in runs]
    rc, out, err = subprocess_run(cli("verify", str(folder / "0.wav"), str(folder / "1.wav"), "--model",
                                      str(exported)), timeout)
    codes = [run.returncode for run in runs]
    outcome = classify(True, rc, out, err, "")
    if outcome[0] == "works" and (not all(code in (0, 1) for code in codes) or leftovers(exported)):
        outcome = ("crash/traceback", f"export rc {codes}: {[r[1].strip()[-80:] for r in results]}")
    table.add("two processes", f"two exports, one folder (rc {codes})", *outcome)


def run_full_disk(table: Table, models: Dict[str, Path], work: Path, timeout: float) -> None:
    print("full disk (tmpfs)", flush=True)
    disk = work / "full"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    if not mounted:
        print("  skipped: cannot mount a tmpfs (needs root)")
        return
    try:
        model = models["large"]
        folder = work / "kill_audio"
        (disk / "filler").write_bytes(bytes(80 * 1024))
        rc, out, err = subprocess_run(cli("export", str(model), str(disk / "exported")), timeout)
        outcome = classify(False, rc, out, err, "space")
        table.add("full disk", "export onto a full disk", *outcome[:1],
                  outcome[1] + (f"; left: {leftovers(disk / 'exported')}" if leftovers(disk / "exported") else ""))
        big = work / "many"
        big.mkdir()
        for index in range(400):
            shutil.copyfile(folder / "0.wav", big / f"{index}.wav")
        rc, out, err = subprocess_run(cli("embed", str(big), "--model", str(model), "--out",
                                          str(disk / "e.pt")), timeout)
        table.add("full disk", "embed --out onto a full disk", *classify(False, rc, out, err, "space"))
        trials = work / "kill_trials.txt"
        rc, out, err = subprocess_run(
            [sys.executable, "recipes/speaker_verification.py", "hparams/verification.yaml", f"--model={model}",
             f"--data_folder={folder}", "--num_workers=0", f"--output_folder={disk / 'verification'}",
             f"--trial_lists={{O: {trials}, E: null, H: null}}"], timeout)
        table.add("full disk", "verification output on a full disk",
                  *classify(False, rc, out, err, "space", script=True))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a case counts as a hang")
    parser.add_argument("--kill-delays", type=float, nargs="+", default=[4.0, 7.0, 10.0],
                        help="seconds after start at which the kill cases kill")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=["audio", "models", "trials", "config", "kills", "two", "disk"])
    parser.add_argument("--details", action="store_true", help="print one line per case after the table")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    selected = set(args.only or ["audio", "models", "trials", "config", "kills", "two", "disk"])
    table = Table()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="attack_table_") as tmp:
        work = Path(tmp)
        models = {kind: build_model(work, kind) for kind in ("base", "large")}
        sf.write(work / "good.wav", tone(1.5, seed=3), 16000)
        if "audio" in selected:
            run_audio(table, models, work, args.timeout)
        if "models" in selected:
            (work / "audio").mkdir(exist_ok=True)
            run_model_folders(table, models, work, args.timeout)
        if "trials" in selected:
            run_trials_and_corpora(table, work, args.timeout)
        if "config" in selected:
            run_configuration(table, work, args.timeout)
        if selected & {"kills", "two", "disk"}:
            if "kills" in selected:
                run_kills(table, models, work, args.timeout, args.kill_delays)
            else:
                (work / "kill_audio").mkdir()
                for index in range(24):
                    sf.write(work / "kill_audio" / f"{index}.wav", tone(1.0 + index % 5, seed=index), 16000)
                (work / "kill_trials.txt").write_text("1 0.wav 5.wav\n0 0.wav 1.wav\n1 1.wav 6.wav\n0 2.wav 3.wav\n")
            if "two" in selected:
                run_two_processes(table, models, work, args.timeout)
            if "disk" in selected:
                run_full_disk(table, models, work, args.timeout)
    print()
    print(table.markdown())
    print(f"\n{sum(sum(c.values()) for c in table.counts.values())} cases in {time.monotonic() - start:.0f} s")
    if args.details:
        print("\ncategory | case | outcome | note")
        print("\n".join(table.lines))


if __name__ == "__main__":
    main()
