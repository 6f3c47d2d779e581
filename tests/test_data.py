"""lap_speechbrain.data on tiny audio trees made here: manifests, VoxCeleb, custom corpora, pipelines, noise CSVs."""

import codecs
import csv
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import speaker_voice, write_audio
from speechbrain.dataio.encoder import CategoricalEncoder

from lap_speechbrain.data.audio import read_audio
from lap_speechbrain.data.custom import make_trials, prepare_custom_corpus
from lap_speechbrain.data.manifest import (
    folder_fingerprint,
    read_csv,
    scan_audio,
    speaker_encoder,
    write_csv,
)
from lap_speechbrain.data.noise import prepare_noise_csvs
from lap_speechbrain.data.pipelines import change_speed, read_crop, train_dataset, valid_dataset
from lap_speechbrain.data.trials import TrialListError, read_trials
from lap_speechbrain.data.voxceleb import (
    MissingDecoderError,
    convert_m4a_to_wav,
    find_ffmpeg,
    prepare_voxceleb,
)

RATE = 16000
TEST_SPEAKERS = ("id10270", "id10271")
DEV_SPEAKERS = ("id10001", "id10002", "id10003", "id10004", "id10005")
VIDEOS = ("vidA", "vidB")
UTTS = ("00001", "00002")


def write_wav(path: Path, seconds: float, seed: int, channels: int = 1) -> Path:
    """A 16-bit voice of one of 8 speakers; each file differs through the seed."""
    audio = speaker_voice(seed % 8, seconds, np.random.default_rng(seed), RATE)
    if channels > 1:
        audio = np.stack([audio * (c + 1) / channels for c in range(channels)], axis=1)
    return write_audio(path, audio, RATE, subtype="PCM_16")


def make_tree(root: Path, speakers, seconds: float = 1.2, ext: str = ".wav") -> Path:
    seed = 0
    for speaker in speakers:
        for video in VIDEOS:
            for utt in UTTS:
                write_wav(root / speaker / video / f"{utt}{ext}", seconds, seed)
                seed += 1
    return root


@pytest.fixture
def vox1(tmp_path) -> Path:
    """VoxCeleb1 layout with a corrupt, an empty and a too-short file among the dev speakers."""
    root = make_tree(tmp_path / "vox1", TEST_SPEAKERS + DEV_SPEAKERS)
    (root / "id10001" / "vidA" / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    (root / "id10002" / "vidA" / "empty.wav").write_bytes(b"")
    write_wav(root / "id10003" / "vidA" / "short.wav", 0.2, seed=99)
    return root


def write_o_list(path: Path, speakers=TEST_SPEAKERS) -> Path:
    a, b = speakers
    lines = [
        f"1 {a}/vidA/00001.wav {a}/vidB/00002.wav",
        f"0 {a}/vidA/00001.wav {b}/vidA/00001.wav",
        f"1 {b}/vidA/00002.wav {b}/vidB/00001.wav",
        f"0 {b}/vidB/00002.wav {a}/vidB/00001.wav",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def speakers_in(csv_path) -> set:
    return {row["spk_id"] for row in read_csv(csv_path)}


# --------------------------------------------------------------------------- manifests


def test_scan_audio_rows_and_skip_warnings(vox1, caplog):
    with caplog.at_level(logging.WARNING, logger="lap_speechbrain.data.manifest"):
        rows = scan_audio(vox1, min_duration=0.5, num_workers=2, desc="")
    good = len(TEST_SPEAKERS + DEV_SPEAKERS) * len(VIDEOS) * len(UTTS)
    assert len(rows) == good
    row = rows[0]
    assert list(row) == ["ID", "duration", "wav", "spk_id"]
    assert row["ID"] == "id10001/vidA/00001" and row["spk_id"] == "id10001"
    assert Path(row["wav"]).is_absolute() and Path(row["wav"]) == vox1 / "id10001/vidA/00001.wav"
    assert row["duration"] == pytest.approx(1.2)
    assert [r["ID"] for r in rows] == sorted(r["ID"] for r in rows)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping")]
    assert len(skipped) == 3
    assert any("corrupt.wav" in m and "unreadable" in m for m in skipped)
    assert any("empty.wav" in m for m in skipped)
    assert any("short.wav" in m and "too short" in m for m in skipped)
    assert any(f"Skipped 3 of {good + 3}" in r.getMessage() for r in caplog.records)


def test_scan_audio_ignores_hidden_and_stray_files(tmp_path, caplog):
    root = make_tree(tmp_path / "corpus", ["a", "b"])
    write_wav(root / "a" / "vidA" / ".00003.wav.tmp.wav", 0.5, seed=1)  # left by an interrupted write
    write_wav(root / "a" / "vidA" / "._00001.wav", 0.5, seed=2)  # macOS metadata
    write_wav(root / "no_speaker_folder.wav", 0.5, seed=3)
    with caplog.at_level(logging.WARNING):
        rows = scan_audio(root, desc="")
    assert len(rows) == 2 * len(VIDEOS) * len(UTTS)
    assert any("no_speaker_folder.wav" in r.getMessage() for r in caplog.records)


def test_scan_audio_missing_root_and_speaker(tmp_path, vox1):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_audio(tmp_path / "nowhere", desc="")
    with pytest.raises(FileNotFoundError, match="id19999"):
        scan_audio(vox1, speakers=["id10001", "id19999"], desc="")


def test_symlink_loops_end_and_each_real_file_is_listed_once(tmp_path, caplog):
    root = make_tree(tmp_path / "corpus", ["a", "b", "c"])
    (root / "a" / "vidA" / "up").symlink_to("..")  # back to the speaker folder
    (root / "a" / "vidA" / "root").symlink_to("../..")  # back to the corpus root
    (root / "b" / "vidB" / "self").symlink_to(".")  # 40 nested copies before ELOOP
    (root / "c" / "vidA" / "x").symlink_to("..")  # two links: 2^40 paths before the fix
    (root / "c" / "vidA" / "y").symlink_to("..")
    (root / "b" / "alias").symlink_to("vidA")  # a second link to one folder
    (root / "b" / "vidA" / "again.wav").symlink_to(root / "b" / "vidA" / "00001.wav")
    (root / "c" / "vidB" / "borrowed.wav").symlink_to(root / "a" / "vidB" / "00001.wav")  # another speaker's
    make_tree(tmp_path / "elsewhere", ["d"])  # a speaker folder linked from outside, with loops of its own
    (root / "d").symlink_to(tmp_path / "elsewhere" / "d")
    (tmp_path / "elsewhere" / "d" / "vidA" / "self").symlink_to(".")
    (tmp_path / "elsewhere" / "d" / "vidB" / "up").symlink_to("..")
    result = {}

    def scan():
        result["fingerprint"] = folder_fingerprint(root)
        result["rows"] = scan_audio(root, desc="")

    with caplog.at_level(logging.WARNING):
        worker = threading.Thread(target=scan, daemon=True)
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive(), "scanning a tree with symlink loops did not finish"
    rows = result["rows"]
    assert len(rows) == 4 * len(VIDEOS) * len(UTTS)
    assert len({os.path.realpath(row["wav"]) for row in rows}) == len(rows)
    assert {row["ID"] for row in rows} == {f"{s}/{v}/{u}" for s in "abcd" for v in VIDEOS for u in UTTS}
    messages = " ".join(r.getMessage() for r in caplog.records)
    for link in ("a/vidA/up", "a/vidA/root", "b/vidB/self", "c/vidA/x", "b/alias", "d/vidA/self", "d/vidB/up"):
        assert f"Not following {root / link}" in messages
    assert "counted once" in messages and "again.wav" in messages and "borrowed.wav" in messages


def test_scan_refuses_names_the_recipe_cannot_use(tmp_path):
    root = make_tree(tmp_path / "corpus", ["a", "b"])
    write_wav(root / "my speaker" / "vidA" / "00001.wav", 1.2, seed=1)
    write_wav(root / "a" / "vidA" / "take\t2.wav", 1.2, seed=2)
    write_wav(root / "a" / "vidA" / "cost$5.wav", 1.2, seed=3)
    write_wav(root / "a" / "vidA" / "00001.flac", 1.2, seed=4)  # the ID of 00001.wav
    latin1 = write_wav(root / "b" / "vidA" / "cafe.wav", 1.2, seed=5)
    os.rename(os.fsencode(latin1), os.fsencode(latin1.parent) + b"/caf\xe9.wav")
    outside = write_wav(tmp_path / "elsewhere" / "shared.wav", 1.2, seed=6)
    (root / "a" / "vidB" / "shared.wav").symlink_to(outside)
    (root / "b" / "vidB" / "shared.wav").symlink_to(outside)  # one file, two labels
    listing = tmp_path / "save" / "unusable_files.txt"
    with pytest.raises(ValueError, match="6 file") as error:
        scan_audio(root, desc="", listing=listing)
    lines = listing.read_text().splitlines()
    assert len(lines) == 6
    for name, reason in [
        ("my speaker/vidA/00001.wav", "white space"),
        ("take\t2.wav", "white space"),
        ("cost$5.wav", "'$5.wav'"),
        ("a/vidA/00001", "only the extension differs"),
        ("caf\\xe9.wav", "not valid UTF-8"),
        ("b/vidB/shared.wav", "two speaker folders"),
    ]:
        assert any(name in line and reason in line for line in lines), (name, lines)
        assert name.split("/")[-1] in str(error.value)
    with pytest.raises(ValueError, match="unusable_files.txt"):
        prepare_custom_corpus(root, tmp_path / "save", num_valid_speakers=2, num_valid_trials=4)


def test_write_csv_atomic_round_trip(tmp_path):
    rows = [{"ID": "s/v/u", "duration": 2.25, "wav": "/x/s/v/u.wav", "spk_id": "s"}]
    path = tmp_path / "out" / "m.csv"
    write_csv(rows, path)
    assert path.read_text().splitlines()[0] == "ID,duration,wav,spk_id"
    assert read_csv(path) == rows
    assert os.listdir(path.parent) == ["m.csv"]  # no temporary file left behind
    # A failing write leaves the previous file intact.
    with pytest.raises(ValueError):
        write_csv([{"ID": "a", "unexpected": 1}], path)
    assert read_csv(path) == rows and os.listdir(path.parent) == ["m.csv"]
    with pytest.raises(ValueError, match="spk_id"):
        write_csv([{"ID": "a", "duration": 1}], tmp_path / "bad.csv", fieldnames=("ID", "duration"))
        read_csv(tmp_path / "bad.csv")


def test_speaker_encoder_is_deterministic(tmp_path):
    first = speaker_encoder(["id3", "id1", "id2", "id1"], tmp_path / "a" / "label_encoder.txt")
    second = speaker_encoder(["id2", "id3", "id1"], tmp_path / "b" / "label_encoder.txt")
    assert first.lab2ind == second.lab2ind == {"id1": 0, "id2": 1, "id3": 2}
    loaded = CategoricalEncoder()
    loaded.load(tmp_path / "a" / "label_encoder.txt")
    assert loaded.lab2ind == first.lab2ind
    assert (tmp_path / "a" / "label_encoder.txt").read_bytes() == (tmp_path / "b" / "label_encoder.txt").read_bytes()


# --------------------------------------------------------------------------- trial lists

GOOD_TRIALS = ["1 a/v/1.wav a/v/2.wav", "0 a/v/1.wav b/v/1.wav", "1 b/v/1.wav b/v/2.wav", "0 a/v/2.wav b/v/2.wav"]


def test_trial_lists_from_other_editors_read_the_same(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(GOOD_TRIALS) + "\n")
    expected = list(read_trials(plain))
    variants = {
        "bom.txt": codecs.BOM_UTF8 + "\n".join(GOOD_TRIALS).encode(),
        "crlf.txt": "\r\n".join(GOOD_TRIALS).encode() + b"\r\n",
        "tabs.txt": "\n".join(line.replace(" ", "\t") for line in GOOD_TRIALS).encode(),
    }
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
        assert list(read_trials(tmp_path / name)) == expected, name


@pytest.mark.parametrize(
    "extra, message",
    [
        ("1 a/v/1.wav a/v/1.wav", "line 5: compares a/v/1.wav with itself"),
        ("0 a/v/2.wav a/v/1.wav", "line 5: the pair of line 1 again, with the other label"),
        ("0 ../x/v/1.wav a/v/1.wav", r"line 5: '../x/v/1.wav' leaves the audio folder"),
        ("0 a/v/1.wav a/../../etc/x.wav", r"line 5: 'a/../../etc/x.wav' leaves the audio folder"),
        ("0 /etc/x.wav a/v/1.wav", "line 5: '/etc/x.wav' is an absolute path"),
        ("0 a/v/1.wav C:\\data\\x.wav", "line 5: .*is an absolute path"),
    ],
)
def test_trial_list_lines_that_would_mislead_are_refused(tmp_path, extra, message):
    path = tmp_path / "trials.txt"
    path.write_text("\n".join(GOOD_TRIALS + [extra]) + "\n")
    with pytest.raises(TrialListError, match=f"trials.txt, {message}"):
        read_trials(path)


def test_trial_lists_of_one_class_or_not_utf8_are_refused(tmp_path):
    for label in ("0", "1"):
        path = tmp_path / f"only_{label}.txt"
        path.write_text("".join(line + "\n" for line in GOOD_TRIALS if line.startswith(label)))
        with pytest.raises(TrialListError, match=f"only_{label}.txt has only label {label} .2 trials."):
            read_trials(path)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(("\n".join(GOOD_TRIALS) + "\n0 a/v/caf\xe9.wav b/v/1.wav\n").encode("latin-1"))
    with pytest.raises(TrialListError, match="latin1.txt, line 5: not UTF-8"):
        read_trials(latin1)


def test_repeated_trials_are_counted_with_a_warning(tmp_path, caplog):
    path = tmp_path / "trials.txt"
    path.write_text("\n".join(GOOD_TRIALS + ["1 a/v/2.wav a/v/1.wav", GOOD_TRIALS[1]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="lap_speechbrain.data.trials"):
        trials = read_trials(path)
    assert len(trials) == len(GOOD_TRIALS) + 2
    assert any("2 trial(s) repeat" in r.getMessage() and "line 5 repeats line 1" in r.getMessage()
               for r in caplog.records)


# --------------------------------------------------------------------------- VoxCeleb


def test_voxceleb1_excludes_test_speakers(tmp_path, vox1, caplog):
    o_list = write_o_list(tmp_path / "veri_test2.txt")
    with caplog.at_level(logging.WARNING):
        out = prepare_voxceleb(
            tmp_path / "save", vox1_folder=vox1, trial_lists=[o_list], train_sets=["vox1"],
            num_valid_speakers=2, num_valid_trials=8, num_workers=2,
        )
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping")]
    assert len(skipped) == 3 and any("short.wav" in m and "too short" in m for m in skipped)
    train, valid = speakers_in(out["train"]), speakers_in(out["valid"])
    assert train | valid == set(DEV_SPEAKERS) and not train & valid and len(valid) == 2
    assert not (train | valid) & set(TEST_SPEAKERS)
    assert speakers_in(out["test"]) == set(TEST_SPEAKERS)
    assert list(read_trials(out["trials"]["veri_test2.txt"])) == list(read_trials(o_list))
    encoder = CategoricalEncoder()
    encoder.load(out["label_encoder"])
    assert encoder.lab2ind == {spk: i for i, spk in enumerate(sorted(train))}
    # Bad files of the dev speakers were skipped, not listed.
    assert not any("corrupt" in row["ID"] or "short" in row["ID"] for row in read_csv(out["train"]))
    valid_ids = {row["ID"] for row in read_csv(out["valid"])}
    for label, enrol, test in list(read_trials(out["valid_trials"])):
        assert enrol.endswith(".wav") and enrol[:-4] in valid_ids and test[:-4] in valid_ids
        assert (enrol.split("/")[0] == test.split("/")[0]) == bool(label)


def test_voxceleb_trial_list_errors(tmp_path, vox1):
    bad = tmp_path / "bad_list.txt"
    bad.write_text(
        "1 id10270/vidA/00001.wav id10270/vidA/09999.wav\n0 id10271/vidA/00001.wav id10270/vidZ/00001.wav\n"
    )
    with pytest.raises(FileNotFoundError) as error:
        prepare_voxceleb(tmp_path / "s1", vox1_folder=vox1, trial_lists=[bad], train_sets=["vox1"],
                         num_valid_speakers=2, num_valid_trials=4)
    assert "2 utterance(s)" in str(error.value)
    assert "id10270/vidA/09999.wav" in str(error.value) and "id10270/vidZ/00001.wav" in str(error.value)
    # A trial speaker without a folder: the error names the folder.
    write_o_list(bad, speakers=("id10270", "id10999"))
    with pytest.raises(FileNotFoundError, match="id10999"):
        prepare_voxceleb(tmp_path / "s2", vox1_folder=vox1, trial_lists=[bad], train_sets=["vox1"],
                         num_valid_speakers=2, num_valid_trials=4)
    with pytest.raises(FileNotFoundError, match="list_test_hard2.txt"):
        prepare_voxceleb(tmp_path / "s3", vox1_folder=vox1, trial_lists=["list_test_hard2.txt"])
    bad.write_text("1 only-two-fields.wav\n")
    with pytest.raises(ValueError, match="line 1"):
        list(read_trials(bad))
    with pytest.raises(FileNotFoundError, match="no_vox1_here"):
        prepare_voxceleb(tmp_path / "s4", vox1_folder=tmp_path / "no_vox1_here")


def test_voxceleb1_with_whole_corpus_trials_refuses_to_train(tmp_path, vox1):
    everyone = tmp_path / "list_test_all2.txt"
    speakers = TEST_SPEAKERS + DEV_SPEAKERS
    everyone.write_text("".join(
        f"0 {a}/vidA/00001.wav {b}/vidA/00001.wav\n1 {a}/vidA/00001.wav {a}/vidB/00001.wav\n"
        for a, b in zip(speakers, speakers[1:])
    ))
    with pytest.raises(ValueError, match="none is left to train on"):
        prepare_voxceleb(tmp_path / "s", vox1_folder=vox1, trial_lists=[everyone], train_sets=["vox1"],
                         num_valid_speakers=2, num_valid_trials=4)


def test_voxceleb_test_set_selection_trains_on_every_speaker(tmp_path, vox1):
    o_list = write_o_list(tmp_path / "veri_test2.txt")
    vox2 = make_tree(tmp_path / "vox2", ["id00012", "id00015", "id00017"])
    kwargs = dict(vox1_folder=vox1, vox2_folder=vox2, trial_lists=[o_list], train_sets=["vox2"],
                  num_valid_speakers=2, num_valid_trials=8, valid_trial_list=o_list)
    out = prepare_voxceleb(tmp_path / "save", **kwargs)
    assert speakers_in(out["train"]) == {"id00012", "id00015", "id00017"}  # nobody held out
    assert speakers_in(out["valid"]) == set(TEST_SPEAKERS)
    assert list(read_trials(out["valid_trials"])) == list(read_trials(o_list))
    valid_ids = {row["ID"] for row in read_csv(out["valid"])}
    assert {u[:-4] for u in read_trials(o_list).utterances} <= valid_ids
    encoder = CategoricalEncoder()
    encoder.load(out["label_encoder"])
    assert len(encoder) == 3
    # Training on VoxCeleb1 instead: the list's speakers stay out of training, no other is held out.
    out = prepare_voxceleb(tmp_path / "save1", **{**kwargs, "train_sets": ["vox1"], "trial_lists": []})
    assert speakers_in(out["train"]) == set(DEV_SPEAKERS) and "test" not in out
    # An edited list is a new input: prepared again.
    write_o_list(o_list, speakers=TEST_SPEAKERS[::-1])
    out = prepare_voxceleb(tmp_path / "save", **kwargs)
    assert list(read_trials(out["valid_trials"])) == list(read_trials(o_list))
    with pytest.raises(ValueError, match="valid_trial_list refers to VoxCeleb1"):
        prepare_voxceleb(tmp_path / "s", vox2_folder=vox2, valid_trial_list=o_list)


def test_voxceleb_idempotent(tmp_path, vox1):
    o_list = write_o_list(tmp_path / "veri_test2.txt")
    kwargs = dict(vox1_folder=vox1, trial_lists=[o_list], train_sets=["vox1"],
                  num_valid_speakers=2, num_valid_trials=8)
    out = prepare_voxceleb(tmp_path / "save", **kwargs)
    files = [out["train"], out["valid"], out["valid_trials"], out["label_encoder"], out["test"],
             out["trials"]["veri_test2.txt"]]
    mtimes = {f: os.stat(f).st_mtime_ns for f in files}
    assert prepare_voxceleb(tmp_path / "save", **kwargs) == out
    assert {f: os.stat(f).st_mtime_ns for f in files} == mtimes
    # A new utterance changes the input: the manifests are written again and include it.
    write_wav(vox1 / "id10004" / "vidC" / "00001.wav", 1.2, seed=50)
    out = prepare_voxceleb(tmp_path / "save", **kwargs)
    ids = {row["ID"] for row in read_csv(out["train"]) + read_csv(out["valid"])}
    assert "id10004/vidC/00001" in ids
    # Changed options too.
    before = os.stat(out["valid_trials"]).st_mtime_ns
    prepare_voxceleb(tmp_path / "save", **{**kwargs, "num_valid_trials": 6})
    assert os.stat(out["valid_trials"]).st_mtime_ns != before
    assert len(list(read_trials(out["valid_trials"]))) == 6


FAKE_FFMPEG = """#!{python}
# Stands in for ffmpeg (stdlib only, to start fast): writes 1.5 s of 16-bit mono wav,
# and fails like ffmpeg on inputs named bad*.
import sys, wave
args = sys.argv[1:]
source, target, rate = args[args.index("-i") + 1], args[-1], int(args[args.index("-ar") + 1])
if "/bad" in source:
    sys.stderr.write(source + ": Invalid data found when processing input\\n")
    sys.exit(1)
with wave.open(target, "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(rate)
    out.writeframes(b"\\x10\\x00" * int(1.5 * rate))
"""


@pytest.fixture
def vox2_m4a(tmp_path) -> Path:
    root = tmp_path / "vox2" / "dev" / "aac"
    for speaker in ("id00012", "id00015", "id00017"):
        for video in VIDEOS:
            for utt in UTTS:
                path = root / speaker / video / f"{utt}.m4a"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"\x00\x00\x00\x18ftypM4A ")  # content is only read by ffmpeg
    return root


def test_m4a_without_decoder_says_what_to_install(tmp_path, vox2_m4a, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes the import fail
    with pytest.raises(MissingDecoderError, match="apt-get install ffmpeg"):
        find_ffmpeg()
    with pytest.raises(MissingDecoderError, match="pip install imageio-ffmpeg"):
        prepare_voxceleb(tmp_path / "save", vox2_folder=vox2_m4a, num_valid_speakers=2, num_valid_trials=4)
    with pytest.raises(MissingDecoderError, match="/no/such/ffmpeg"):
        find_ffmpeg("/no/such/ffmpeg")


def test_m4a_conversion_through_ffmpeg(tmp_path, vox2_m4a, monkeypatch, caplog):
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    fake = bin_folder / "ffmpeg"
    fake.write_text(FAKE_FFMPEG.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    (vox2_m4a / "id00012" / "vidA" / "bad.m4a").write_bytes(b"not aac")
    with caplog.at_level(logging.WARNING):
        out = prepare_voxceleb(tmp_path / "save", vox2_folder=vox2_m4a, num_valid_speakers=2,
                               num_valid_trials=4, num_workers=2)
    assert any("bad.m4a" in r.getMessage() and "Invalid data" in r.getMessage() for r in caplog.records)
    rows = read_csv(out["train"]) + read_csv(out["valid"])
    assert len(rows) == 3 * len(VIDEOS) * len(UTTS)
    assert all(Path(r["wav"]).parents[2] == tmp_path / "save" / "vox2_wav" for r in rows)
    assert soundfile.info(rows[0]["wav"]).samplerate == RATE and rows[0]["duration"] == 1.5
    assert "test" not in out  # no VoxCeleb1, no trial lists
    # Converted files are kept: a second conversion has nothing to do and needs no ffmpeg.
    monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
    (vox2_m4a / "id00012" / "vidA" / "bad.m4a").unlink()
    assert convert_m4a_to_wav(vox2_m4a, tmp_path / "save" / "vox2_wav") == tmp_path / "save" / "vox2_wav"


# --------------------------------------------------------------------------- custom corpus


def test_custom_corpus_split_and_trials(tmp_path):
    data = tmp_path / "corpus"
    speakers = [f"spk{i:02d}" for i in range(8)]
    make_tree(data, speakers[:4], ext=".wav")
    make_tree(data, speakers[4:], ext=".flac")
    write_wav(data / "spk00" / "deeper" / "nest" / "x.wav", 1.2, seed=7)  # any depth is fine
    out = prepare_custom_corpus(data, tmp_path / "save", num_valid_speakers=3, num_valid_trials=20, seed=3)
    train, valid = speakers_in(out["train"]), speakers_in(out["valid"])
    assert len(valid) == 3 and not train & valid and train | valid == set(speakers)
    assert "spk00/deeper/nest/x" in {r["ID"] for r in read_csv(out["train"]) + read_csv(out["valid"])}
    trials = list(read_trials(out["valid_trials"]))
    assert len(trials) == 20 and sum(label for label, _, _ in trials) == 10
    assert len({frozenset((e, t)) for _, e, t in trials}) == 20
    for label, enrol, test in trials:
        assert (data / enrol).is_file() and (data / test).is_file()  # relative to data_folder, with extension
        assert {enrol.split("/")[0], test.split("/")[0]} <= valid
        assert (enrol.split("/")[0] == test.split("/")[0]) == bool(label) and enrol != test
    assert CategoricalEncoder.from_saved(out["label_encoder"]).lab2ind == {
        spk: i for i, spk in enumerate(sorted(train))
    }
    # Same seed, same everything (a fresh folder); another seed, other held-out speakers.
    again = prepare_custom_corpus(data, tmp_path / "again", num_valid_speakers=3, num_valid_trials=20, seed=3)
    for key in ("train", "valid", "valid_trials"):
        assert Path(again[key]).read_text() == Path(out[key]).read_text()
    other = prepare_custom_corpus(data, tmp_path / "other", num_valid_speakers=3, num_valid_trials=20, seed=4)
    assert speakers_in(other["valid"]) != valid
    # Idempotent.
    mtimes = [os.stat(p).st_mtime_ns for p in out.values()]
    prepare_custom_corpus(data, tmp_path / "save", num_valid_speakers=3, num_valid_trials=20, seed=3)
    assert [os.stat(p).st_mtime_ns for p in out.values()] == mtimes


def test_custom_corpus_with_its_own_validation_list(tmp_path):
    data = make_tree(tmp_path / "corpus", ["a", "b", "c", "d"])
    own = tmp_path / "my_trials.txt"
    own.write_text("1 a/vidA/00001.wav a/vidB/00002.wav\n0 a/vidA/00001.wav b/vidA/00001.wav\n")
    out = prepare_custom_corpus(data, tmp_path / "save", valid_trial_list=own)
    assert speakers_in(out["train"]) == {"c", "d"} and speakers_in(out["valid"]) == {"a", "b"}
    assert list(read_trials(out["valid_trials"])) == list(read_trials(own))
    own.write_text("1 a/vidA/00001.wav a/vidA/00009.wav\n0 a/vidA/00001.wav b/vidA/00001.wav\n")
    with pytest.raises(FileNotFoundError, match="a/vidA/00009.wav"):
        prepare_custom_corpus(data, tmp_path / "save", valid_trial_list=own)
    own.write_text("1 a/vidA/00001.wav a/vidB/00002.wav\n0 c/vidA/00001.wav d/vidA/00001.wav\n"
                   "0 a/vidA/00001.wav b/vidA/00001.wav\n")
    with pytest.raises(ValueError, match="names every speaker"):
        prepare_custom_corpus(data, tmp_path / "save", valid_trial_list=own)
    with pytest.raises(ValueError, match="or a valid_trial_list"):
        prepare_custom_corpus(data, tmp_path / "save")


def test_custom_corpus_bad_requests(tmp_path):
    data = make_tree(tmp_path / "corpus", ["a", "b", "c"])
    with pytest.raises(ValueError, match="num_valid_speakers=3"):
        prepare_custom_corpus(data, tmp_path / "s", num_valid_speakers=3, num_valid_trials=4)
    with pytest.raises(ValueError, match="cannot draw 100 target"):
        prepare_custom_corpus(data, tmp_path / "s", num_valid_speakers=2, num_valid_trials=200)
    with pytest.raises(ValueError, match="inside the input folder"):
        prepare_custom_corpus(data, data / "prepared", num_valid_speakers=2, num_valid_trials=4)
    with pytest.raises(FileNotFoundError, match="missing_corpus"):
        prepare_custom_corpus(tmp_path / "missing_corpus", tmp_path / "s", 2, 4)
    # Exactly every possible pair: each speaker's 4 utterances give 6 target pairs.
    utts = {s: [f"{s}/{i}" for i in range(4)] for s in "ab"}
    trials = make_trials(utts, 24, seed=0)
    assert sorted(label for label, _, _ in trials) == [0] * 12 + [1] * 12
    assert len({frozenset((e, t)) for _, e, t in trials}) == 24


# --------------------------------------------------------------------------- training and validation pipelines


PIPELINE_SPEAKERS = ["spk_b", "spk_a", "spk_c"]


@pytest.fixture
def manifest(tmp_path):
    """Three speakers with two files each; every file is a ramp so crops reveal their offset."""
    rows = []
    for speaker in PIPELINE_SPEAKERS:
        for index, seconds in enumerate((0.3, 1.2)):
            path = tmp_path / speaker / f"{index}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            samples = int(16000 * seconds)
            soundfile.write(path, (np.arange(samples) / samples * 0.9).astype(np.float32), 16000, subtype="FLOAT")
            rows.append({"ID": f"{speaker}/{index}", "duration": seconds, "wav": str(path), "spk_id": speaker})
    path = write_csv(rows, tmp_path / "train.csv")
    return path, speaker_encoder(PIPELINE_SPEAKERS), rows


def test_crops_read_a_contiguous_segment_and_wrap_pad_short_files(manifest):
    _, _, rows = manifest
    long_file, short_file = rows[1], rows[0]
    crop = read_crop(long_file["wav"], 8000, 16000).numpy()
    step = 0.9 / (1.2 * 16000)
    assert crop.shape == (8000,)
    np.testing.assert_allclose(np.diff(crop), step, rtol=1e-3)  # one contiguous piece of the ramp
    short = read_crop(short_file["wav"], 8000, 16000).numpy()
    whole, _ = soundfile.read(short_file["wav"], dtype="float32")
    np.testing.assert_array_equal(short, np.resize(whole, 8000))


def tone(seconds: float, rate: int, frequency: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def peak_frequency(signal: torch.Tensor, rate: int) -> float:
    return float(torch.fft.rfft(signal).abs().argmax()) * rate / len(signal)


def test_other_rates_and_channels_are_read_as_inference_reads_them(tmp_path, monkeypatch):
    from lap_speechbrain.inference.audio import load_audio

    left = tone(3.0, 44100)
    stereo = tmp_path / "spk_x" / "stereo_44k.wav"
    stereo.parent.mkdir()
    soundfile.write(stereo, np.stack([left, -0.5 * left], axis=1), 44100, subtype="FLOAT")
    # The whole file: what inference loads (channels averaged, then resampled; the
    # cached resampler differs from torchaudio.functional.resample by float rounding).
    torch.testing.assert_close(read_audio(stereo, 16000), load_audio(stereo), rtol=0, atol=1e-4)
    assert read_audio(stereo, 16000).abs().max() == pytest.approx(0.5 * (1 - 0.5) / 2, rel=0.02)  # mean, not channel 0
    # A 0.5 s crop decodes 0.5 s of the 44.1 kHz file, not the file.
    frames_read = []
    original_read = soundfile.SoundFile.read
    monkeypatch.setattr(soundfile.SoundFile, "read",
                        lambda self, frames=-1, **kw: frames_read.append(frames) or original_read(self, frames, **kw))
    crop = read_crop(str(stereo), 8000, 16000)
    assert frames_read == [22050] and crop.shape == (8000,)
    assert peak_frequency(crop, 16000) == pytest.approx(440, abs=4)
    monkeypatch.undo()
    # The datasets take such files: 8 kHz mono and 44.1 kHz stereo next to 16 kHz.
    narrow = tmp_path / "spk_y" / "mono_8k.flac"
    narrow.parent.mkdir()
    soundfile.write(narrow, tone(1.0, 8000), 8000)
    rows = [{"ID": "spk_x/stereo_44k", "duration": 3.0, "wav": str(stereo), "spk_id": "spk_x"},
            {"ID": "spk_y/mono_8k", "duration": 1.0, "wav": str(narrow), "spk_id": "spk_y"}]
    path = write_csv(rows, tmp_path / "mixed.csv")
    items = list(train_dataset(path, speaker_encoder(["spk_x", "spk_y"]), crop_seconds=2.0, sample_rate=16000))
    assert [tuple(item["sig"].shape) for item in items] == [(32000,), (32000,)]
    valid = {item["id"]: item["sig"] for item in valid_dataset(path, ["spk_x/stereo_44k", "spk_y/mono_8k"], 16000, 2.0)}
    assert valid["spk_y/mono_8k"].shape == (16000,) and valid["spk_x/stereo_44k"].shape == (32000,)


def test_non_finite_audio_is_refused_naming_the_file(tmp_path):
    broken = tone(1.0, 16000)
    broken[100] = np.nan
    path = tmp_path / "nan.wav"
    soundfile.write(path, broken, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav: 1 of 16000 samples are NaN or infinite"):
        read_crop(str(path), 16000, 16000)  # the whole file: the crop holds the NaN


def test_speed_perturbation_moves_labels_to_one_class_per_speed(manifest):
    path, encoder, rows = manifest
    num_speakers = len(PIPELINE_SPEAKERS)
    plain = train_dataset(path, encoder, crop_seconds=0.5, sample_rate=16000, speed_factors=(0.9, 1.1), speed_prob=0.0)
    for item, row in zip(plain, rows):
        assert int(item["spk_id_encoded"]) == encoder.encode_label(row["spk_id"])
        assert item["sig"].shape == (8000,)

    perturbed = train_dataset(path, encoder, crop_seconds=0.5, sample_rate=16000, speed_factors=(0.9, 1.1), speed_prob=1.0)
    offsets = set()
    for _ in range(8):
        for item, row in zip(perturbed, rows):
            label = encoder.encode_label(row["spk_id"])
            offset = int(item["spk_id_encoded"]) - label
            assert offset in (num_speakers, 2 * num_speakers)
            assert item["sig"].shape == (8000,)
            offsets.add(offset)
    assert offsets == {num_speakers, 2 * num_speakers}


def test_speed_perturbation_changes_duration_and_pitch():
    tone = torch.sin(2 * torch.pi * 200 * torch.arange(16000) / 16000)
    faster = change_speed(tone, 1.1, 16000)
    slower = change_speed(tone, 0.9, 16000)
    assert abs(len(faster) - 16000 / 1.1) <= 1 and abs(len(slower) - 16000 / 0.9) <= 1
    peak = torch.fft.rfft(faster).abs().argmax() * 16000 / len(faster)
    assert abs(float(peak) - 220) < 3


def test_valid_dataset_names_missing_trial_utterances(manifest):
    path, _, _ = manifest
    dataset = valid_dataset(path, ["spk_a/1", "spk_b/0"], sample_rate=16000, max_seconds=1.0)
    items = {item["id"]: item["sig"] for item in dataset}
    assert sorted(items) == ["spk_a/1", "spk_b/0"] and items["spk_a/1"].shape == (16000,)
    with pytest.raises(ValueError, match="spk_z/0"):
        valid_dataset(path, ["spk_z/0"], sample_rate=16000)


# --------------------------------------------------------------------------- noise CSVs


def test_noise_csvs_feed_speechbrain_augment(tmp_path, caplog):
    from speechbrain.augment.time_domain import AddNoise

    from lap_speechbrain.augment import ConvolveRIR

    musan = tmp_path / "musan"
    write_wav(musan / "noise" / "free-sound" / "noise-0001.wav", 1.0, seed=1)
    write_wav(musan / "noise" / "sound-bible" / "noise-0002.wav", 0.8, seed=2)
    write_wav(musan / "music" / "jamendo" / "music-0001.wav", 1.5, seed=3)
    write_wav(musan / "speech" / "librivox" / "speech-0001.wav", 1.1, seed=4)
    (musan / "speech" / "librivox" / "speech-broken.wav").write_bytes(b"")
    rirs = tmp_path / "RIRS_NOISES"
    write_wav(rirs / "real_rirs_isotropic_noises" / "RVB2014_type1_rir_largeroom1_near_angla.wav", 0.3, 5,
              channels=8)
    write_wav(rirs / "real_rirs_isotropic_noises" / "RVB2014_type1_noise_largeroom1_1.wav", 1.0, 6, channels=8)
    write_wav(rirs / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav", 0.2, seed=7)
    soundfile.write(rirs / "simulated_rirs" / "smallroom" / "Room001" / "Room001-8k.wav", np.zeros(800), 8000)
    mine = write_wav(tmp_path / "my_noises" / "fan.flac", 1.0, seed=8).parent

    with caplog.at_level(logging.WARNING):
        csvs = prepare_noise_csvs(tmp_path / "save", musan_folder=musan, rir_folder=rirs)
    assert set(csvs) == {"noise", "music", "babble", "rir"}
    assert any("speech-broken.wav" in r.getMessage() for r in caplog.records)
    assert any("Room001-8k.wav" in r.getMessage() and "8000 Hz" in r.getMessage() for r in caplog.records)
    for path in csvs.values():
        with open(path, newline="") as file:
            assert next(csv.reader(file)) == ["ID", "duration", "wav", "wav_format", "wav_opts"]
    assert {r["ID"] for r in read_csv(csvs["noise"], ("ID",))} == {
        "free-sound/noise-0001", "sound-bible/noise-0002"
    }
    assert len(read_csv(csvs["babble"], ("ID",))) == 1
    rirs_rows = read_csv(csvs["rir"], ("ID",))
    assert {r["ID"] for r in rirs_rows} == {
        "real_rirs_isotropic_noises/RVB2014_type1_rir_largeroom1_near_angla",
        "simulated_rirs/smallroom/Room001/Room001-00001",
    }
    # Multi-channel RIRs are listed as they are (lap_speechbrain.augment reads a random channel).
    channels = {row["ID"]: soundfile.info(row["wav"]).channels for row in rirs_rows}
    assert channels["real_rirs_isotropic_noises/RVB2014_type1_rir_largeroom1_near_angla"] == 8

    torch.manual_seed(0)
    speech = torch.randn(2, 12000) * 0.1
    lengths = torch.ones(2)
    for kind in ("noise", "music", "babble"):
        noisy = AddNoise(csv_file=csvs[kind], snr_low=5, snr_high=5, pad_noise=True)(speech, lengths)
        assert noisy.shape == speech.shape and not torch.allclose(noisy, speech)
    reverberant = ConvolveRIR(csv_file=csvs["rir"])(speech, lengths)
    assert reverberant.shape == speech.shape and not torch.allclose(reverberant, speech)

    own = prepare_noise_csvs(tmp_path / "own", noise_folders={"noise": mine})
    row = read_csv(own["noise"], ("ID",))[0]
    assert row["ID"] == "fan" and row["wav_format"] == "flac"
    assert AddNoise(csv_file=own["noise"], pad_noise=True)(speech, lengths).shape == speech.shape
    mtime = os.stat(own["noise"]).st_mtime_ns
    assert prepare_noise_csvs(tmp_path / "own", noise_folders={"noise": mine}) == own
    assert os.stat(own["noise"]).st_mtime_ns == mtime

    with pytest.raises(ValueError, match="'hum'"):
        prepare_noise_csvs(tmp_path / "x", noise_folders={"hum": mine})
    with pytest.raises(FileNotFoundError, match="MUSAN sub-folder 'music'"):
        (musan / "music" / "jamendo" / "music-0001.wav").unlink()
        for folder in (musan / "music" / "jamendo", musan / "music"):
            folder.rmdir()
        prepare_noise_csvs(tmp_path / "y", musan_folder=musan)


# --------------------------------------------------------------------------- command line


def test_prepare_data_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "prepare_data", Path(__file__).parents[1] / "recipes" / "prepare_data.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    data = make_tree(tmp_path / "corpus", ["a", "b", "c", "d"])
    out = cli.main(["custom", "--data_folder", str(data), "--save_folder", str(tmp_path / "save"),
                    "--num_valid_speakers", "2", "--num_valid_trials", "6", "--min_duration", "0.5"])
    assert '"valid_trials"' in capsys.readouterr().out
    assert len(list(read_trials(out["valid_trials"]))) == 6
    noise = cli.main(["noise", "--save_folder", str(tmp_path / "noise"), "--noise_folders", f"rir={data / 'a'}"])
    assert set(noise) == {"rir"}
    with pytest.raises(SystemExit):
        cli.main(["noise", "--save_folder", "x", "--noise_folders", "no-equals-sign"])
    own = tmp_path / "own_trials.txt"
    own.write_text("1 a/vidA/00001.wav a/vidB/00001.wav\n0 a/vidA/00001.wav b/vidA/00001.wav\n")
    out = cli.main(["custom", "--data_folder", str(data), "--save_folder", str(tmp_path / "own"),
                    "--valid_trial_list", str(own)])
    assert list(read_trials(out["valid_trials"])) == list(read_trials(own))

