"""Tests of lap_speechbrain.export: exported folders, their guard and marker, model cards, Hub upload.

Training output folders are built as training writes them
(test_inference.write_training_output); the import of reference-layout
checkpoints is tested in test_export_reference.py.
"""

import inspect
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import write_voices
from huggingface_hub import ModelCard
from speechbrain.inference.speaker import EncoderClassifier
from test_inference import (
    BACKEND,
    SPEAKERS,
    THRESHOLD,
    batch,
    snapshot,
    write_training_output,
)
from test_fileio import kill_mid_write

from lap_speechbrain.export.folder import (
    EXPORT_MARKER,
    RECORD_FILE,
    ExportError,
    export_model,
    export_training_output,
    fill_template,
    read_marker,
)
from lap_speechbrain.export.hub import push_to_hub
from lap_speechbrain.export.standalone import GENERATED_FILES, HPARAMS_FILE, foreign_class_call
from lap_speechbrain.inference import LAPSpeakerRecognition
from lap_speechbrain.inference.modules import ModelConfigError
from lap_speechbrain.nnet import SubCenterClassifier
from lap_speechbrain.training.checkpoints import AtomicCheckpointer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_training_output_copy_keeps_the_model_and_threshold(training_output, tmp_path):
    source = training_output / "model"
    # Issue 15.5: the threshold lives in the model folder, not in training_summary.json.
    (source / "training_summary.json").unlink()
    marker = json.loads((source / EXPORT_MARKER).read_text())
    del marker["files"]["training_summary.json"]
    (source / EXPORT_MARKER).write_text(json.dumps(marker))
    copy = export_training_output(training_output, tmp_path / "copy")
    assert LAPSpeakerRecognition.from_hparams(source=str(copy)).threshold == THRESHOLD
    for name in ("embedding_model.ckpt", "classifier.ckpt", "label_encoder.ckpt", "hyperparams.yaml"):
        assert (copy / name).read_bytes() == (source / name).read_bytes(), name
    copied = read_marker(copy)
    assert copied["source"]["path"] == str(source.resolve())
    assert copied["source"]["fingerprint"] == copied["fingerprint"]  # same model files
    assert copied["card"]["datasets"] == ["voxceleb"]  # the run's card settings are kept
    # The model folder itself is accepted too, and --threshold replaces the stored one.
    again = export_training_output(source, tmp_path / "again", threshold=0.5)
    assert LAPSpeakerRecognition.from_hparams(source=str(again)).threshold == 0.5
    assert "0.5000 (set at export)" in (again / "README.md").read_text()
    assert read_marker(again)["fingerprint"] != copied["fingerprint"]


def strip_record(folder):
    """Makes ``folder`` look exported before trained_with.ckpt existed (yaml, record and marker)."""
    lines = (folder / "hyperparams.yaml").read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("trained_with:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith(" "))
    kept = [line for line in lines[:start] + lines[end:] if "trained_with" not in line]
    (folder / "hyperparams.yaml").write_text("".join(kept))
    (folder / RECORD_FILE).unlink()
    marker = json.loads((folder / EXPORT_MARKER).read_text())
    del marker["files"][RECORD_FILE]
    (folder / EXPORT_MARKER).write_text(json.dumps(marker))


def test_loading_refuses_a_yaml_edited_away_from_the_weights(exported, tmp_path):
    """Issue 14: an edited layer_pooling or min_audio_samples loaded a model it was not trained as."""
    record = json.loads((exported / RECORD_FILE).read_text())
    assert record["backend"] == {**record["backend"], **BACKEND}
    assert record["settings"] == {"sample_rate": 16000, "min_audio_samples": 400}
    LAPSpeakerRecognition.from_hparams(source=str(exported))  # unedited: loads
    hyperparams = exported / "hyperparams.yaml"
    original = hyperparams.read_text()
    edits = {
        "layer_pooling": ("mean", r"layer_pooling: trained with 'max', hyperparams.yaml has 'mean'"),
        "min_audio_samples": (0, r"min_audio_samples: trained with 400, hyperparams.yaml has 0"),
        "lap_dropout": (0.3, r"lap_dropout: trained with 0.1, hyperparams.yaml has 0.3"),
    }
    for key, (value, message) in edits.items():
        hyperparams.write_text(fill_template(original, {key: value}))
        for load in (LAPSpeakerRecognition.from_hparams, EncoderClassifier.from_hparams):
            with pytest.raises(ModelConfigError, match=message):
                load(source=str(exported))
    assert original.count("    layer_norm_eps: 1.0e-05\n") == 1
    hyperparams.write_text(original.replace("    layer_norm_eps: 1.0e-05\n", "    layer_norm_eps: 0.001\n"))
    with pytest.raises(ModelConfigError, match=r"ssl_config \(SHA-256\): trained with '[0-9a-f]{64}'"):
        LAPSpeakerRecognition.from_hparams(source=str(exported))
    hyperparams.write_text(original)
    # An export is checked the same way before it lands; a killed earlier export's staging folder goes.
    orphan = kill_mid_write(tmp_path / "copy", "folder")
    LAPSpeakerRecognition.from_hparams(source=str(export_training_output(exported, tmp_path / "copy")))
    assert not orphan.exists()


def test_a_folder_exported_before_the_record_loads_with_a_warning_and_re_export_adds_it(
    exported, tmp_path, caplog
):
    strip_record(exported)
    with caplog.at_level("WARNING"):
        model = LAPSpeakerRecognition.from_hparams(source=str(exported))
    assert "has no trained_with record" in caplog.text and "lap-speechbrain export" in caplog.text
    wavs, lens = batch()
    old = model.encode_batch(wavs, lens)
    again = export_training_output(exported, tmp_path / "again")
    assert (again / RECORD_FILE).is_file()
    caplog.clear()
    with caplog.at_level("WARNING"):
        upgraded = LAPSpeakerRecognition.from_hparams(source=str(again))
    assert "has no trained_with record" not in caplog.text
    assert torch.equal(upgraded.encode_batch(wavs, lens), old)  # the same model
    hyperparams = again / "hyperparams.yaml"
    hyperparams.write_text(fill_template(hyperparams.read_text(), {"layer_pooling": "mean"}))
    with pytest.raises(ModelConfigError, match="layer_pooling: trained with 'max'"):
        LAPSpeakerRecognition.from_hparams(source=str(again))


def test_export_model_requires_a_threshold():
    assert inspect.signature(export_model).parameters["threshold"].default is inspect.Parameter.empty


def test_speed_perturbed_classes_get_their_labels(trained, tmp_path):
    encoder, _ = trained
    # The last stage trained with speed perturbation: 3 classes per speaker.
    output = write_training_output(tmp_path / "speed", encoder, SubCenterClassifier(8, 3 * len(SPEAKERS)))
    model = EncoderClassifier.from_hparams(source=str(output / "model"))
    assert model.mods.classifier.num_subcenters == 3
    labels = model.hparams.label_encoder
    assert len(labels) == 15 and labels.ind2lab[0] == SPEAKERS[0]
    assert labels.ind2lab[len(SPEAKERS) + 1] == f"{SPEAKERS[1]}@speed1"


def test_model_card_has_metadata_results_and_a_snippet_that_runs(training_output, tmp_path, monkeypatch):
    results = {"Vox1-O": {  # the scoring recipe's results.json
        "cosine": {"eer": 0.0123, "eer_threshold": 0.41, "min_dcf_0.01": 0.11, "min_dcf_0.05": 0.07},
        "asnorm": {"eer": 0.0101, "eer_threshold": 1.7, "min_dcf_0.01": 0.09, "min_dcf_0.05": 0.06}}}
    (training_output / "evaluation").mkdir()
    (training_output / "evaluation" / "results.json").write_text(json.dumps(results))
    (training_output / "results.json").write_text(json.dumps({"other": {"cosine": {"eer": 0.5}}}))
    folder = export_training_output(training_output, tmp_path / "carded", repo_id="lap-org/lap-wavlm-tiny")
    card = (folder / "README.md").read_text()
    data = ModelCard.load(folder / "README.md").data
    assert data.library_name == "speechbrain" and data.datasets == ["voxceleb"]
    found = {(r.dataset_name, r.metric_type, r.metric_name, r.metric_value) for r in data.eval_results}
    assert ("Vox1-O", "eer", "EER (%), cosine", 1.23) in found
    assert ("Vox1-O", "min_dcf", "minDCF (p=0.05), cosine", 0.07) in found
    assert not any(name == "other" for name, *_ in found)  # evaluation/results.json comes first
    assert "| trials | scoring | EER (%) | minDCF 0.01 | minDCF 0.05 |" in card
    assert "| Vox1-O | asnorm | 1.010 | 0.090 | 0.060 |" in card
    assert '"valid_threshold": 0.3125' in card  # the training summary
    snippets = re.findall(r"```python\n(.*?)```", card, re.S)
    assert "foreign_class(" in snippets[0] and "lap_speechbrain" not in snippets[0]  # the package-free route
    assert "`pip install speechbrain transformers`" in card
    assert "`pip install <lap-speechbrain checkout or wheel>`" in card  # no code_url given: no invented name
    assert "out_prob" in card and "not log posteriors" in card
    monkeypatch.chdir(tmp_path)
    first, second = write_voices(tmp_path)
    shutil.copy(second, tmp_path / "speaker2.wav")  # the snippets name two wav files
    embeddings = []
    for snippet in snippets:
        assert '"lap-org/lap-wavlm-tiny"' in snippet
        namespace = {}
        exec(compile(snippet.replace('"lap-org/lap-wavlm-tiny"', repr(str(folder))), "README.md", "exec"),
             namespace)
        assert namespace["embedding"].shape == (1, 1, 8)
        assert isinstance(bool(namespace["same_speaker"]), bool)
        embeddings.append(namespace["embedding"])
    assert torch.allclose(embeddings[0], embeddings[1], atol=1e-6)
    url = "https://example.org/lap-speechbrain.git"
    coded = export_training_output(training_output, tmp_path / "coded", code_url=url)
    assert f"`pip install git+{url}`" in (coded / "README.md").read_text()
    # Without any results.json the card has no results; without a stored threshold it says so.
    (training_output / "evaluation" / "results.json").unlink()
    (training_output / "results.json").unlink()
    plain = export_training_output(training_output, tmp_path / "plain")
    assert ModelCard.load(plain / "README.md").data.eval_results is None


def test_export_refuses_a_non_empty_folder_unless_it_is_an_earlier_export(training_output, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_training_output(training_output, target)
    with pytest.raises(ExportError, match=f"{target} is not empty and is not an earlier export"):
        export_training_output(training_output, target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    # A marker that is not a valid one does not count.
    (target / EXPORT_MARKER).write_text("{}")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_training_output(training_output, target, overwrite=True)
    # An earlier export is replaced.
    export_training_output(training_output, tmp_path / "earlier")
    (tmp_path / "earlier" / "stale.txt").write_text("left by hand")
    export_training_output(training_output, tmp_path / "earlier", overwrite=True)
    assert not (tmp_path / "earlier" / "stale.txt").exists()
    assert (tmp_path / "earlier" / "hyperparams.yaml").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_export_never_destroys_its_source_or_a_folder_it_did_not_make(training_output, tmp_path):
    """Issue 15.2: export onto the run, an ancestor of it, or a folder inside it."""
    parent = training_output.parent
    (parent / "unrelated.txt").write_text("keep me")
    before = snapshot(parent)
    model = training_output / "model"
    cases = {
        training_output: "contains its source",  # export RUN RUN --overwrite
        parent: "contains its source",  # export RUN PARENT --overwrite
        model: "is its source",  # training with export_folder=<output_folder>/model
        model / "inner": "lies inside its source",
    }
    for destination, message in cases.items():
        with pytest.raises(ExportError, match=message):
            export_training_output(training_output, destination, overwrite=True)
        assert snapshot(parent) == before, destination
    os.symlink(training_output, tmp_path / "link_to_run")  # the same folder under another name
    with pytest.raises(ExportError, match="contains its source"):
        export_training_output(training_output, tmp_path / "link_to_run", overwrite=True)
    # Training's own export only replaces an earlier export: never a user's folder named model/.
    shutil.rmtree(model)
    model.mkdir()
    (model / "my_notes.txt").write_text("mine")
    encoder_state = torch.load(training_output / "save" / "frozen" / "CKPT+1" / "embedding_model.ckpt",
                               weights_only=True)
    with pytest.raises(ExportError, match="not an earlier export"):
        export_model(model, {"model_type": "wavlm"}, BACKEND, encoder_state, {"weight": torch.zeros(5, 8)},
                     SPEAKERS, THRESHOLD, overwrite=True)
    assert (model / "my_notes.txt").read_text() == "mine"


class FakeApi:
    """Records the Hub calls instead of making them."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, [op.path_in_repo for op in operations]))


def test_push_uploads_only_the_exports_own_files(exported, tmp_path):
    own = sorted(read_marker(exported)["files"])
    assert EXPORT_MARKER not in own  # it records local paths: it stays here
    assert set(GENERATED_FILES) <= set(own)  # the code for loading without this package goes up too
    (exported / ".env").write_text("HF_TOKEN=secret")
    (exported / ".git").mkdir()
    (exported / ".git" / "config").write_text("[remote] url=https://user:pw@example.org")
    (exported / "notes.txt").write_text("private")
    (tmp_path / "elsewhere.txt").write_text("outside the export")
    os.symlink(tmp_path / "elsewhere.txt", exported / "linked.txt")
    assert [name for name, _ in push_to_hub(exported, "me/lap", dry_run=True)] == own
    api = FakeApi()
    push_to_hub(exported, "me/lap", private=True, api=api)
    assert api.calls[0][:2] == ("create_repo", "me/lap") and api.calls[0][2]["private"]
    assert api.calls[1] == ("create_commit", "me/lap", own)
    # An own file replaced by a link is refused, not followed.
    (exported / "classifier.ckpt").rename(tmp_path / "classifier.ckpt")
    os.symlink(tmp_path / "classifier.ckpt", exported / "classifier.ckpt")
    with pytest.raises(ValueError, match=r"\['classifier.ckpt'\] are links"):
        push_to_hub(exported, "me/lap", dry_run=True)
    # A tampered marker cannot name files outside the folder.
    marker = json.loads((exported / EXPORT_MARKER).read_text())
    marker["files"]["../elsewhere.txt"] = "0" * 64
    (exported / EXPORT_MARKER).write_text(json.dumps(marker))
    with pytest.raises(ValueError, match="not an exported model folder"):
        push_to_hub(exported, "me/lap", dry_run=True)


INSTALLED_CHECK = """
import sys
from pathlib import Path

import torch
import lap_speechbrain
from lap_speechbrain.cli import main
from lap_speechbrain.export.folder import export_model

assert Path(lap_speechbrain.__file__).is_relative_to(Path(sys.argv[1])), lap_speechbrain.__file__
parts = torch.load("parts.pt", weights_only=False)
export_model("run/model", parts["ssl_config"], parts["backend"], parts["embedding"], parts["classifier"],
             parts["labels"], 0.3125)
assert main(["export", "run", "exported"]) == 0
assert main(["verify", "a.wav", "a.wav", "--model", "exported"]) == 0
"""


WITHOUT_PACKAGE = """
import sys

import torch
from speechbrain.inference.interfaces import foreign_class

try:
    import lap_speechbrain
except ImportError:
    pass
else:
    raise AssertionError(f"lap_speechbrain is importable from {lap_speechbrain.__file__}")
source = sys.argv[1]
torch.set_num_threads(int(sys.argv[2]))  # the test's: the same numerics
model = LOAD
wavs, lengths = torch.load("batch.pt")
score, decision = model.verify_files("speaker1.wav", "speaker2.flac")
torch.save({"embeddings": model.encode_batch(wavs, lengths), "score": score, "decision": decision,
            "threshold": model.threshold}, "out.pt")
assert not any(name == "lap_speechbrain" or name.startswith("lap_speechbrain.") for name in sys.modules)
"""


def test_exported_folder_loads_without_the_package(exported, tmp_path):
    """Issue 12: SpeechBrain's foreign_class loads an export where lap_speechbrain cannot be imported."""
    copy = export_training_output(exported.parent, tmp_path / "copy", threshold=0.123)
    shadow = tmp_path / "shadow" / "lap_speechbrain"  # stands for "not installed" in front of the editable install
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('lap_speechbrain is not installed here')\n")
    work = tmp_path / "user"
    write_voices(work)
    wavs, lengths = batch()
    torch.save((wavs, lengths), work / "batch.pt")
    (work / "load.py").write_text(WITHOUT_PACKAGE.replace("LOAD", foreign_class_call("{source}").replace(
        '"{source}"', "source")))
    env = {**os.environ, "PYTHONPATH": str(shadow.parent), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "load.py", str(copy), str(torch.get_num_threads())], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(work / "out.pt", weights_only=True)
    model = LAPSpeakerRecognition.from_hparams(source=str(copy))
    assert torch.allclose(theirs["embeddings"], model.encode_batch(wavs, lengths), atol=1e-6)
    score, decision = model.verify_files(str(work / "speaker1.wav"), str(work / "speaker2.flac"))
    assert torch.allclose(theirs["score"], score, atol=1e-6) and bool(theirs["decision"]) == bool(decision)
    assert theirs["threshold"] == 0.123  # the generated yaml follows the copy's hyperparams.yaml
    assert not re.search(r"!\w+:lap_speechbrain", (copy / HPARAMS_FILE).read_text())


@pytest.mark.parametrize("aggregation, network", [
    (aggregation, network) for aggregation in ("lap", "superb") for network in ("astp", "ecapa-tdnn", "x-vector", "mhfa")
])
def test_every_backend_trains_in_both_stages_resumes_exports_and_loads(aggregation, network, make_encoder,
                                                                       tiny_wavlm_large, tmp_path):
    """The eight comparison systems: a step of stage 1 (frozen SSL model) and of stage 2 (joint); a
    checkpoint recovered into a freshly built system continues exactly as the original; the exported
    folder loads with EncoderClassifier and embeds as the trained encoder does.
    (tests/recipes/test_train_speaker_embeddings.py runs two of them through the whole recipe.)"""
    torch.manual_seed(0)
    encoder = make_encoder(tiny_wavlm_large, aggregation=aggregation, network=network, embedding_dim=None)
    reference_sizes = {"astp": 192, "ecapa-tdnn": 192, "x-vector": 512, "mhfa": 256}
    assert encoder.embedding_dim == reference_sizes[network]
    classifier = SubCenterClassifier(encoder.embedding_dim, len(SPEAKERS))
    wavs, lengths = 0.1 * torch.randn(4, 6000), torch.tensor([1.0, 1.0, 0.8, 0.6])
    targets = torch.arange(4)

    def train_step(encoder, classifier, optimizer):
        torch.manual_seed(1)  # the same dropout draws for the original and the resumed system
        optimizer.zero_grad()
        logits = 30 * classifier(encoder(wavs, lengths)).squeeze(1)
        F.cross_entropy(logits, targets).backward()
        optimizer.step()

    for frozen in (True, False):
        encoder.set_ssl_frozen(frozen)
        encoder.train()
        trainable = [p for p in (*encoder.parameters(), *classifier.parameters()) if p.requires_grad]
        before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
        optimizer = torch.optim.Adam(trainable, lr=1e-3)
        train_step(encoder, classifier, optimizer)
        changed = {name for name, p in encoder.named_parameters() if not torch.equal(p, before[name])}
        assert any(name.startswith("backend.") for name in changed)
        assert any(name.startswith("ssl_model.") for name in changed) is not frozen

    # Resume: a new system (other initial weights) recovers the checkpoint, and one more step of each agrees.
    AtomicCheckpointer(tmp_path / "save", {"encoder": encoder, "classifier": classifier,
                                           "optimizer": optimizer}).save_checkpoint()
    torch.manual_seed(2)
    resumed = make_encoder(tiny_wavlm_large, aggregation=aggregation, network=network, embedding_dim=None)
    resumed.set_ssl_frozen(False)
    resumed.train()
    resumed_classifier = SubCenterClassifier(resumed.embedding_dim, len(SPEAKERS))
    resumed_optimizer = torch.optim.Adam(
        [p for p in (*resumed.parameters(), *resumed_classifier.parameters()) if p.requires_grad], lr=1e-3)
    assert not all(torch.equal(value, encoder.state_dict()[key]) for key, value in resumed.state_dict().items())
    assert AtomicCheckpointer(tmp_path / "save", {"encoder": resumed, "classifier": resumed_classifier,
                                                  "optimizer": resumed_optimizer}).recover_if_possible()
    train_step(encoder, classifier, optimizer)
    train_step(resumed, resumed_classifier, resumed_optimizer)
    torch.testing.assert_close(resumed.state_dict(), encoder.state_dict(), rtol=1e-5, atol=1e-6)
    encoder.eval()
    assert encoder.backend_config["aggregation"] == aggregation and encoder.backend_config["network"] == network
    folder = export_model(tmp_path / "model", encoder.ssl_model.model.config.to_dict(), encoder.backend_config,
                          encoder.state_dict(), classifier.state_dict(), SPEAKERS, THRESHOLD)
    loaded = EncoderClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "loaded"))
    assert loaded.hparams.aggregation == aggregation and loaded.hparams.network == network
    with torch.no_grad():
        expected = encoder(wavs, lengths)
        embeddings = loaded.encode_batch(wavs, lengths)
    torch.testing.assert_close(embeddings, expected, rtol=1e-4, atol=1e-5)
    assert f"speaker network `{network}`" in (folder / "README.md").read_text()


def test_a_folder_exported_before_the_backend_keys_still_loads_as_lap_astp(exported, trained, tmp_path):
    """Folders exported before `aggregation` and `network` existed name neither: they are LAP + ASTP."""
    encoder, _ = trained
    old = tmp_path / "old"
    shutil.copytree(exported, old)
    text = (old / "hyperparams.yaml").read_text()
    lines = [line for line in text.splitlines(keepends=True)
             if not re.match(r"\s*(aggregation|network):", line)]
    assert len(lines) == len(text.splitlines()) - 4  # the two keys and their two references
    (old / "hyperparams.yaml").write_text("".join(lines))
    model = EncoderClassifier.from_hparams(source=str(old), savedir=str(tmp_path / "loaded"))
    assert model.mods.embedding_model.backend_config["network"] == "astp"
    wavs, lens = batch(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_batch(wavs, lens), encoder(wavs, lens), rtol=1e-4, atol=1e-5)


def test_a_full_disk_during_export_is_named_and_leaves_nothing(exported, tmp_path, monkeypatch):
    """Attack table (issue 14): a full disk surfaced as a raw OSError/RuntimeError without the destination."""
    import errno

    from lap_speechbrain.fileio import NoSpaceLeftError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lap_speechbrain.export.folder.shutil.copyfile", full)
    with pytest.raises(NoSpaceLeftError, match=rf"no space left on {re.escape(str(tmp_path / 'copy'))}"):
        export_training_output(exported, tmp_path / "copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["train_out"])
