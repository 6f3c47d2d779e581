#!/usr/bin/env python3
"""Recipe: trains LAP speaker embeddings on all hidden states of an SSL model (WavLM).

The stages of ``hparams/lap_wavlm.yaml`` (docs/lap_spec.md section 5) run in order:
``frozen`` (WavLM frozen; LAP, pooling and classifier train), ``joint`` (all
parameters) and ``lmft`` (large-margin fine-tuning, optional), each starting
from the previous stage's checkpoint with the best validation EER. Data
preparation (VoxCeleb or a custom corpus, MUSAN/RIR CSVs) runs on the main
process. Killed at any moment, the same command resumes where it stopped.
The trained model ends up in ``<output_folder>/model/``, a folder that
``EncoderClassifier.from_hparams`` loads (the format ``lap-speechbrain export`` writes).

This file holds everything that reads the yaml: the ``Brain`` of one stage,
``dataio_prep`` and the stage loop. Copy it to change any of them;
``lap_speechbrain`` provides the modules and the bookkeeping (stage records,
resume, class rows, atomic checkpoints) with explicit arguments.

To run (one process, or N GPUs):
    python recipes/train_speaker_embeddings.py hparams/lap_wavlm.yaml \\
        --data_folder=/data/voxceleb --musan_folder=/data/musan --rir_folder=/data/RIRS_NOISES
    torchrun --nproc_per_node=4 recipes/train_speaker_embeddings.py hparams/lap_wavlm.yaml ...
    # WavLM Base+: the same yaml with --ssl_hub=microsoft/wavlm-base-plus
    #     --output_folder=results/lap_wavlm_base_plus/1986

Authors
 * lap-speechbrain contributors 2026
"""

import functools
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import if_main_process, run_on_main
from torch.nn.parallel import DistributedDataParallel

from lap_speechbrain.data import (
    prepare_custom_corpus,
    prepare_noise_csvs,
    prepare_voxceleb,
)
from lap_speechbrain.data.pipelines import train_dataset, utterance_id, valid_dataset
from lap_speechbrain.demo.finish import mfcc_baseline_results, verify_examples
from lap_speechbrain.demo.synthetic import prepare_synthetic_corpus
from lap_speechbrain.export.folder import (
    check_destination,
    export_model,
    export_training_output,
)
from lap_speechbrain.fileio import (
    FolderLock,
    remove_stale_temporaries,
    reporting_full_disk,
)
from lap_speechbrain.inference import load_audio, load_encoder
from lap_speechbrain.known_warnings import filter_known_warnings
from lap_speechbrain.nnet.sync_batchnorm import convert_sync_batchnorm
from lap_speechbrain.scoring import (
    Trials,
    compute_eer,
    cosine_scores,
    encoder_embedding_fn,
    markdown_table,
    model_fingerprint,
    read_trials,
    run_verification,
)
from lap_speechbrain.training.checkpoints import AtomicCheckpointer
from lap_speechbrain.training.progress import described_progress_bars
from lap_speechbrain.training.settings import check_override_keys
from lap_speechbrain.training.stages import (
    DONE_FILE,
    check_stage_order,
    class_labels,
    finished_records,
    load_selected,
    speaker_names,
    stage_classes,
    stage_record,
    start_record,
    write_stage_record,
)

logger = logging.getLogger(__name__)

NOISE_KINDS = ("noise", "music", "babble", "rir")
# The trained model's folder inside output_folder; load_encoder(<output_folder>) looks there.
MODEL_FOLDER = "model"


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP/DataParallel wrapper (itself otherwise)."""
    if isinstance(module, (DistributedDataParallel, torch.nn.DataParallel)):
        return module.module
    return module


class SpeakerBrain(sb.Brain):
    """Trains the speaker encoder and classifier for one stage.

    Modules: ``embedding_model`` (:class:`lap_speechbrain.lobes.SSLSpeakerEncoder`)
    and ``classifier`` (:class:`lap_speechbrain.nnet.SubCenterClassifier`).
    ``hparams`` is the yaml with the stage's section merged in, so
    ``self.hparams`` describes the current stage: ``stage_name``,
    ``lr_schedule`` (a ``torch.optim.lr_scheduler`` factory taking the optimiser
    and the stage's optimiser steps), ``margin_schedule``, ``compute_cost`` (``LogSoftmaxWrapper``
    around the stage's margin loss), ``weight_decay``, ``augment`` and
    ``wav_augment`` (a batch corruption module, or None), ``train_logger``,
    ``use_tensorboard`` and ``tensorboard_logger``.

    What it adds to ``speechbrain.Brain``: the optimiser holds only the
    parameters that train in this stage (in stage 1 LAP, ASTP and the
    classifier); the LR and margin schedules advance once per *optimiser*
    step (gradient accumulation does not speed them up); validation embeds
    the utterances of a held-out trial list, and the epoch's checkpoint is
    kept or dropped by its EER. Precision is SpeechBrain's (``--precision``);
    the classifier and the margin loss compute in fp32 whatever the autocast.
    Its progress bars name the stage, the pass and the epoch ("frozen: train epoch 1").

    Arguments
    ---------
    valid_trials : Trials
        Held-out validation trials; their utterance IDs are manifest IDs.
    *args, **kwargs
        ``speechbrain.Brain`` arguments.

    Set ``optimizer_steps`` (the stage's optimiser steps: the length of the LR
    schedule, known once the training loader exists) before calling ``fit``.
    """

    def __init__(self, *args, valid_trials: Trials, **kwargs):
        super().__init__(*args, **kwargs)
        self.valid_trials = valid_trials
        self.optimizer_steps: Optional[int] = None
        self.valid_embeddings: Dict[str, torch.Tensor] = {}
        self.train_stats: Dict[str, float] = {}
        self.tensorboard = None
        self.bar_description = ""

    def fit(self, *args, **kwargs):
        """SpeechBrain's ``fit``, with the stage, pass and epoch named on its progress bars."""
        with described_progress_bars(lambda: self.bar_description):
            return super().fit(*args, **kwargs)

    def compute_forward(self, batch, stage):
        """Cosines to every class (training) or embeddings (validation).

        Returns
        -------
        torch.Tensor
            (B, 1, classes) cosines in training, (B, 1, E) embeddings otherwise.
        """
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        if stage == sb.Stage.TRAIN:
            if self.hparams.augment:
                wavs = self.hparams.wav_augment(wavs, wav_lens)
            embeddings = self.modules.embedding_model(wavs, wav_lens)
            return self.modules.classifier(embeddings)
        # Validation uses the bare module: no DDP collectives, and every
        # process embeds the same full validation set.
        return unwrap(self.modules.embedding_model)(wavs, wav_lens)

    def compute_objectives(self, predictions, batch, stage):
        """Margin softmax loss (training); stores embeddings (validation).

        Returns
        -------
        torch.Tensor
            The loss (a zero placeholder in validation, which has no labels).
        """
        if stage != sb.Stage.TRAIN:
            for uid, embedding in zip(batch.id, predictions.squeeze(1).float().cpu()):
                self.valid_embeddings[uid] = embedding
            return torch.zeros(())
        labels, _ = batch.spk_id_encoded
        loss = self.hparams.compute_cost(predictions, labels)
        with torch.no_grad():
            correct = predictions.squeeze(1).argmax(dim=-1) == labels.squeeze(1)
            self.train_correct += int(correct.sum())
            self.train_count += len(correct)
        return loss

    def init_optimizers(self):
        """One optimiser over the parameters that train in this stage, and its LR schedule."""
        parameters = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(parameters, weight_decay=self.hparams.weight_decay)
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.lr_scheduler = self.hparams.lr_schedule(self.optimizer, total_steps=self.optimizer_steps)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
            self.checkpointer.add_recoverable("lr_schedule", self.lr_scheduler)

    def _wrap_distributed(self):
        """DDP as in SpeechBrain, with every BatchNorm synchronised, as in the reference.

        ``convert_sync_batchnorm`` (ours) replaces torch's, which refuses CPU
        modules: the statistics span all processes under gloo on CPU as under
        NCCL, LAP's folded input BatchNorm included.
        """
        if not self.distributed_launch:
            super()._wrap_distributed()
            return
        for name, module in self.modules.items():
            if not any(p.requires_grad for p in module.parameters()):
                continue
            module = convert_sync_batchnorm(module)
            self.modules[name] = DistributedDataParallel(
                module,
                device_ids=[self.device] if self.device_type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters,
            )

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Advances the LR and margin schedules after each optimiser step."""
        if should_step:
            self.lr_scheduler.step()
            self.hparams.margin_schedule.step()

    def on_stage_start(self, stage, epoch=None):
        """Resets the epoch's counters and names the pass's progress bar."""
        self.bar_description = f"{self.hparams.stage_name}: {stage.name.lower()} epoch {epoch}"
        if stage == sb.Stage.TRAIN:
            self.epoch_start = time.time()
            self.train_correct = 0
            self.train_count = 0
        else:
            self.valid_embeddings = {}

    def validation_eer(self) -> Tuple[float, float]:
        """EER and threshold of cosine scores on the validation trials."""
        trials = self.valid_trials
        missing = {uid for uid in (*trials.enrol, *trials.test) if uid not in self.valid_embeddings}
        if missing:
            raise RuntimeError(
                f"no validation embedding for {len(missing)} trial utterances, e.g. {sorted(missing)[:3]}"
            )
        enrol = torch.stack([self.valid_embeddings[uid] for uid in trials.enrol])
        test = torch.stack([self.valid_embeddings[uid] for uid in trials.test])
        scores = cosine_scores(enrol, test).numpy()
        return compute_eer(scores, trials.labels)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the epoch and keeps the checkpoint if its validation EER is the best."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {
                "loss": stage_loss,
                "accuracy": self.train_correct / max(self.train_count, 1),
            }
            return
        if stage != sb.Stage.VALID:
            return
        eer, threshold = self.validation_eer()
        stats = dict(
            stats_meta={
                "stage": self.hparams.stage_name,
                "epoch": epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "margin": float(self.hparams.margin_schedule.loss_fn.margin),
                "epoch_time_s": round(time.time() - self.epoch_start, 1),
            },
            train_stats=self.train_stats,
            valid_stats={"EER": eer, "threshold": threshold},
        )
        self.hparams.train_logger.log_stats(**stats)
        if self.hparams.use_tensorboard:
            if self.tensorboard is None:
                self.tensorboard = self.hparams.tensorboard_logger()
            self.tensorboard.log_stats(**stats)
        self.checkpointer.save_and_keep_only(
            meta={"EER": eer, "threshold": threshold, "epoch": epoch},
            min_keys=["EER"],
            importance_keys=[],
        )


def dataio_prep(
    hparams: dict, stage: dict, data: Dict[str, str], label_encoder: CategoricalEncoder
) -> Tuple[DynamicItemDataset, DynamicItemDataset, Trials]:
    """Builds one stage's datasets from the prepared manifests.

    Training items are random ``crop_seconds`` crops, speed-perturbed with the
    stage's probability (each speed is a class of its own); validation items
    are the utterances of the validation trials, cut to ``valid_max_seconds``.

    Arguments
    ---------
    hparams : dict
        The loaded yaml.
    stage : dict
        The stage's section.
    data : dict
        ``"train"`` and ``"valid"`` manifests and ``"valid_trials"``.
    label_encoder : CategoricalEncoder
        Training speakers -> 0..N-1.

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
    valid_trials : Trials
        The validation trials, utterances named by manifest ID.
    """
    trials = read_trials(data["valid_trials"])
    valid_trials = Trials(
        labels=trials.labels,
        enrol=[utterance_id(path) for path in trials.enrol],
        test=[utterance_id(path) for path in trials.test],
        path=trials.path,
    )
    train_data = train_dataset(
        data["train"],
        label_encoder,
        crop_seconds=stage["crop_seconds"],
        sample_rate=hparams["sample_rate"],
        speed_factors=hparams["speed_factors"],
        speed_prob=stage["speed_perturb_prob"],
    )
    valid_data = valid_dataset(
        data["valid"],
        valid_trials.utterances,
        sample_rate=hparams["sample_rate"],
        max_seconds=hparams["valid_max_seconds"],
    )
    return train_data, valid_data, valid_trials


# ---------------------------------------------------------------- settings and data preparation

DATA_PREP_KEYS = {
    "synthetic": ("synthetic_corpus",),
    "voxceleb": (
        "vox1_folder", "vox2_folder", "test_trial_lists", "train_sets", "num_valid_speakers",
        "num_valid_trials", "prep_seed", "min_duration", "prep_workers",
        "musan_folder", "rir_folder", "noise_folders",
    ),
    "custom": (
        "num_valid_speakers", "num_valid_trials", "prep_seed", "min_duration", "prep_workers",
        "musan_folder", "rir_folder", "noise_folders",
    ),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Stage setting -> (test, what is expected), checked before any work.
STAGE_CHECKS = {
    "ssl_frozen": (lambda v: isinstance(v, bool), "True or False"),
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "crop_seconds": (lambda v: _is_number(v) and v > 0, "a number of seconds > 0"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "grad_accumulation_factor": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "speed_perturb_prob": (lambda v: _is_number(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    "augment": (lambda v: isinstance(v, bool), "True or False"),
    "ssl_layerdrop": (lambda v: _is_number(v) and 0 <= v < 1, "a probability in [0, 1)"),
    "ssl_mask_time_prob": (lambda v: _is_number(v) and 0 <= v < 1, "a probability in [0, 1)"),
    "ssl_mask_time_length": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
}
STAGE_OBJECTS = ("margin_loss", "compute_cost", "margin_schedule", "lr_schedule", "epoch_counter")


def check_overrides(hparams_file: str, overrides: str) -> None:
    """Fails on an override that names no key of the yaml, nested sections included.

    Runs before the yaml is loaded, so a misspelled setting stops the recipe
    before anything is built. Noise folders and trial lists take any name.
    """
    check_override_keys(
        Path(hparams_file).read_text(encoding="utf-8"), overrides,
        open_keys=("noise_folders", "trial_lists"), source=hparams_file,
    )


def check_settings(hparams: dict, hparams_file: str) -> List[str]:
    """Fails before any work on settings that cannot work; returns the stages to run.

    Checks that ``data_prep`` is known and its keys are in the yaml, that
    ``run_stages`` follows ``stages``, the type and range of every stage
    setting, and that stages which augment have noise to augment with.
    """
    kind = hparams["data_prep"]
    if kind not in DATA_PREP_KEYS:
        raise ValueError(f"data_prep={kind!r}; expected one of {sorted(DATA_PREP_KEYS)}")
    missing = [key for key in DATA_PREP_KEYS[kind] if key not in hparams]
    if missing:
        raise ValueError(
            f"data_prep={kind!r} needs the keys {missing}, which {hparams_file} lacks: use a yaml "
            "written for it (hparams/lap_wavlm.yaml for 'voxceleb' and 'custom', hparams/demo.yaml "
            "for 'synthetic')"
        )
    run = check_stage_order(hparams["stages"], hparams["run_stages"])
    for name in hparams["stages"]:
        section = hparams.get(name)
        if not isinstance(section, dict):
            raise ValueError(f"stage {name!r} is listed in stages but {hparams_file} has no section {name!r}")
        lacking = [key for key in (*STAGE_CHECKS, *STAGE_OBJECTS) if key not in section]
        if lacking:
            raise ValueError(f"{hparams_file}: section {name!r} lacks {lacking}")
        for key, (valid, expected) in STAGE_CHECKS.items():
            if not valid(section[key]):
                raise ValueError(f"{name}: {key}={section[key]!r}; expected {expected}")
    if not isinstance(hparams["keep_speed_classes"], bool):
        raise ValueError(f"keep_speed_classes={hparams['keep_speed_classes']!r}; expected True or False")
    if hparams["verify_examples"] and not (hparams["evaluation"] and hparams["export_folder"]):
        raise ValueError("verify_examples needs an evaluation section (its first trial list) and export_folder")
    if hparams["export_folder"]:
        # Refused now, not after training: an export_folder that is, holds or lies in the model it copies.
        check_destination(hparams["export_folder"], [Path(hparams["output_folder"]) / MODEL_FOLDER], overwrite=True)
    augmenting = [name for name in run if hparams[name]["augment"]]
    if kind != "synthetic" and augmenting and not has_noise(hparams):
        raise ValueError(
            f"stages {augmenting} use augmentation (augment: True) but musan_folder, rir_folder and "
            "noise_folders are all unset: pass --musan_folder=... --rir_folder=..., or turn it off "
            f"with e.g. --{augmenting[0]}=\"{{augment: False}}\""
        )
    return run


def has_noise(hparams: dict) -> bool:
    """Whether the yaml names noise or RIR folders (the synthetic corpus brings its own)."""
    return bool(hparams["musan_folder"] or hparams["rir_folder"] or hparams["noise_folders"])


def prepare_data(hparams: dict) -> dict:
    """Writes the training/validation manifests and trials; returns their paths."""
    if hparams["data_prep"] == "synthetic":
        return prepare_synthetic_corpus(hparams["data_folder"], **hparams["synthetic_corpus"])
    common = dict(
        save_folder=hparams["save_folder"],
        num_valid_speakers=hparams["num_valid_speakers"],
        num_valid_trials=hparams["num_valid_trials"],
        seed=hparams["prep_seed"],
        min_duration=hparams["min_duration"],
        num_workers=hparams["prep_workers"],
        valid_trial_list=hparams["valid_trial_list"],
    )
    if hparams["data_prep"] == "voxceleb":
        return prepare_voxceleb(
            vox1_folder=hparams["vox1_folder"],
            vox2_folder=hparams["vox2_folder"],
            trial_lists=hparams["test_trial_lists"],
            train_sets=hparams["train_sets"],
            **common,
        )
    return prepare_custom_corpus(data_folder=hparams["data_folder"], **common)


def prepare_noise(hparams: dict) -> dict:
    """Writes the noise/RIR CSVs of the folders the yaml names ({} if none)."""
    if not has_noise(hparams):
        return {}
    return prepare_noise_csvs(
        Path(hparams["save_folder"]) / "noise",
        musan_folder=hparams["musan_folder"],
        rir_folder=hparams["rir_folder"],
        noise_folders=hparams["noise_folders"],
        sample_rate=hparams["sample_rate"],
    )


def make_augmentation(hparams: dict, noise_csvs: dict):
    """One-corruption-per-utterance augmentation over the prepared kinds (None if none)."""
    corruptions = {
        kind: build(csv_file=noise_csvs[kind])
        for kind, build in hparams["corruptions"].items()
        if kind in noise_csvs
    }
    if not corruptions:
        return None
    combinations = {
        name: parts
        for name, parts in hparams["wav_augment"].keywords.get("combinations", {}).items()
        if all(part in corruptions for part in parts)
    }
    return hparams["wav_augment"](corruptions=corruptions, combinations=combinations)


def remove_leftovers(hparams: dict) -> None:
    """Removes the hidden temporaries that a killed run left (model folders, stage records)."""
    output = Path(hparams["output_folder"])
    removed = remove_stale_temporaries(output, [MODEL_FOLDER])
    for name in hparams["stages"]:
        removed += remove_stale_temporaries(Path(hparams["save_folder"]) / name, [DONE_FILE])
    if hparams["export_folder"]:
        export = Path(hparams["export_folder"])
        removed += remove_stale_temporaries(export.parent, [export.name])
    for path in removed:
        logger.info("Removed %s, left by an interrupted run", path)


# ---------------------------------------------------------------- the stages


def run_stage(
    name: str,
    hparams: dict,
    run_opts: dict,
    data: Dict[str, str],
    label_encoder: CategoricalEncoder,
    wav_augment: Optional[torch.nn.Module],
    start: Optional[dict],
) -> dict:
    """Trains one stage to its last epoch and records its selected checkpoint.

    Arguments
    ---------
    name : str
        The stage (a yaml section).
    hparams : dict
        The loaded yaml.
    run_opts : dict
        SpeechBrain run options.
    data : dict
        ``"train"`` and ``"valid"`` manifests and ``"valid_trials"``.
    label_encoder : CategoricalEncoder
        Training speakers -> 0..N-1.
    wav_augment : torch.nn.Module or None
        Batch corruption, used when the stage has ``augment: True``.
    start : dict or None
        Record of the stage this one starts from (None: the pre-trained SSL
        model and a new backend).

    Returns
    -------
    dict
        The stage's record (also written to ``<save_folder>/<stage>/stage_done.json``).
    """
    stage = hparams[name]
    if stage["augment"] and wav_augment is None:
        raise ValueError(
            f"stage {name!r} has augment: True but no noise/RIR CSVs were prepared: set musan_folder "
            f"and/or rir_folder (or noise_folders), or pass --{name}='{{augment: False}}'"
        )
    num_classes = stage_classes(
        num_speakers=len(label_encoder),
        num_speeds=len(hparams["speed_factors"]),
        speed_perturb=stage["speed_perturb_prob"] > 0,
        previous_classes=None if start is None else start["classes"],
        keep_previous_classes=hparams["keep_speed_classes"],
    )
    embedding_model = hparams["embedding_model"]
    classifier = hparams["classifier"](input_size=embedding_model.embedding_dim, out_neurons=num_classes)
    if start is not None:
        load_selected(start["checkpoint"], embedding_model, classifier)
    embedding_model.set_ssl_frozen(stage["ssl_frozen"])
    embedding_model.set_ssl_regularization(
        stage["ssl_layerdrop"], stage["ssl_mask_time_prob"], stage["ssl_mask_time_length"]
    )

    folder = Path(hparams["save_folder"]) / name
    checkpointer = AtomicCheckpointer(
        folder,
        recoverables={
            "embedding_model": embedding_model,
            "classifier": classifier,
            "margin_schedule": stage["margin_schedule"],
            "epoch_counter": stage["epoch_counter"],
        },
    )
    train_data, valid_data, valid_trials = dataio_prep(hparams, stage, data, label_encoder)
    brain = SpeakerBrain(
        modules={"embedding_model": embedding_model, "classifier": classifier},
        opt_class=hparams["opt_class"],
        hparams={**hparams, **stage, "stage_name": name, "wav_augment": wav_augment},
        run_opts=run_opts,
        checkpointer=checkpointer,
        valid_trials=valid_trials,
    )
    train_loader = brain.make_dataloader(
        train_data,
        stage=sb.Stage.TRAIN,
        batch_size=stage["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=hparams["num_workers"],
    )
    valid_loader = brain.make_dataloader(
        valid_data,
        stage=sb.Stage.VALID,
        ckpt_prefix=None,
        batch_size=hparams["valid_batch_size"],
        num_workers=hparams["num_workers"],
    )
    if len(train_loader) == 0:
        raise ValueError(
            f"stage {name!r}: {data['train']} has fewer utterances than batch_size={stage['batch_size']}"
        )
    # SpeechBrain steps the optimiser every grad_accumulation_factor batches.
    steps_per_epoch = max(1, len(train_loader) // brain.grad_accumulation_factor)
    stage["margin_schedule"].set_steps_per_epoch(steps_per_epoch)
    brain.optimizer_steps = steps_per_epoch * stage["epochs"]

    logger.info("Stage %s: %d classes, %d optimiser steps per epoch", name, num_classes, steps_per_epoch)
    brain.fit(stage["epoch_counter"], train_loader, valid_loader)

    selected = checkpointer.find_checkpoint(min_key="EER")
    if selected is None:
        raise RuntimeError(f"stage {name!r} finished without a validated checkpoint in {folder}")
    record = {
        "stage": name,
        "checkpoint": str(selected.path),
        "selected_epoch": selected.meta["epoch"],
        "valid_EER": selected.meta["EER"],
        "valid_threshold": selected.meta["threshold"],
        "classes": num_classes,
        "ssl_frozen": stage["ssl_frozen"],
        "ssl_layerdrop": stage["ssl_layerdrop"],
        "ssl_mask_time_prob": stage["ssl_mask_time_prob"],
        "epochs": stage["epochs"],
        "crop_seconds": stage["crop_seconds"],
        "batch_size": stage["batch_size"],
        "grad_accumulation_factor": brain.grad_accumulation_factor,
        "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        **stage["lr_schedule"].keywords,  # peak_lr, final_lr, warmup_fraction
        "weight_decay": stage["weight_decay"],
        "final_margin": stage["margin_schedule"].final_margin,
        "top_k": stage["margin_loss"].top_k,
        "top_k_penalty": stage["margin_schedule"].final_top_k_penalty,
        "speed_perturb_prob": stage["speed_perturb_prob"],
        "augment": stage["augment"],
        "precision": brain.precision,
    }
    run_on_main(write_stage_record, args=[folder, record])
    # Free the stage's DDP wrappers (and their gradient hooks) before the next
    # stage wraps the same modules with a different set of trainable parameters.
    del brain
    gc.collect()
    return record


def run_stages(
    hparams: dict, run_opts: dict, data: Dict[str, str], wav_augment: Optional[torch.nn.Module]
) -> Tuple[List[dict], List[str]]:
    """Runs ``run_stages`` in order, skipping the finished ones.

    Returns
    -------
    records : list of dict
        The records of every finished stage up to the last one of ``run_stages``.
    speakers : list of str
        The training speakers in label order.
    """
    run = check_stage_order(hparams["stages"], hparams["run_stages"])
    save_folder = Path(hparams["save_folder"])
    label_encoder = CategoricalEncoder()
    label_encoder.load(data["label_encoder"])
    label_encoder.expect_len(len(label_encoder))  # the file is the whole mapping
    for name in run:
        record = stage_record(save_folder / name)
        if record is not None:
            logger.info("Stage %s already finished (EER %.4f); not running it again", name, record["valid_EER"])
            continue
        start = start_record(save_folder, hparams["stages"], name)
        run_stage(name, hparams, run_opts, data, label_encoder, wav_augment, start)
    return finished_records(save_folder, hparams["stages"], run[-1]), speaker_names(label_encoder)


def save_model(out_dir: Path, hparams: dict, records: List[dict], speakers: List[str]) -> Path:
    """Writes the selected model of the last stage as a model folder (``export_model``'s format).

    Arguments
    ---------
    out_dir : Path
        The folder to (re)write.
    hparams : dict
        The loaded yaml.
    records : list of dict
        The finished stages' records; the last one's checkpoint is the model.
    speakers : list of str
        The training speakers in label order.

    Returns
    -------
    Path
        ``out_dir``.
    """
    last = records[-1]
    checkpoint = Path(last["checkpoint"])
    embedding_model = hparams["embedding_model"]
    with reporting_full_disk(out_dir):
        return export_model(
            out_dir,
            ssl_config=embedding_model.ssl_model.model.config.to_dict(),
            backend_config=embedding_model.backend_config,
            embedding_state=torch.load(checkpoint / "embedding_model.ckpt", map_location="cpu", weights_only=True),
            classifier_state=torch.load(checkpoint / "classifier.ckpt", map_location="cpu", weights_only=True),
            labels=class_labels(speakers, last["classes"]),
            threshold=last["valid_threshold"],
            training_summary={"ssl_hub": str(hparams["ssl_hub"]), "stages": records},
            origin=(
                "trained with lap-speechbrain's recipe `recipes/train_speaker_embeddings.py` "
                f"(output folder `{Path(hparams['output_folder']).name}`)"
            ),
            datasets=hparams["model_card_datasets"],
            code_url=hparams["model_card_code_url"],
            overwrite=True,
        )


def finish(hparams: dict, run_opts: dict) -> None:
    """The optional steps after training: evaluate, compare, export, verify, summarise.

    Runs on every process: under torchrun all of them share the evaluation's
    embedding work; the rest happens on the main process only.
    """
    model_folder = Path(hparams["output_folder"]) / MODEL_FOLDER
    outputs = {"training log": hparams["train_log"], "trained model": str(model_folder)}
    evaluation = hparams["evaluation"]
    if evaluation:
        # The section's keys are run_verification's keyword arguments, as in
        # hparams/verification.yaml, plus where a hub model would be fetched to.
        settings = dict(evaluation)
        device = run_opts.get("device") or "cpu"
        encoder = load_encoder(hparams["output_folder"], savedir=settings.pop("pretrained_savedir"), device=device)
        results = run_verification(
            encoder_embedding_fn(encoder),
            functools.partial(load_audio, target_sample_rate=settings["sample_rate"]),
            cache_key=model_fingerprint(encoder),
            model=hparams["output_folder"],
            device=device,
            **settings,
        )
    if not if_main_process():
        return
    if evaluation:
        print(markdown_table(results, evaluation["p_targets"]))
        outputs["evaluation"] = f"{evaluation['output_folder']}/results.md"
        if hparams["mfcc_baseline"]:
            baseline = mfcc_baseline_results(
                evaluation["trial_lists"], evaluation["data_folder"], evaluation["p_targets"]
            )
            print("Same trials, no training:")
            print(markdown_table(baseline, evaluation["p_targets"]))
    if hparams["export_folder"]:
        results_file = Path(evaluation["output_folder"]) / "results.json" if evaluation else None
        # A copy of the trained model folder with the results in its card;
        # overwrite replaces only an earlier export, never another folder.
        export_training_output(hparams["output_folder"], hparams["export_folder"], results=results_file, overwrite=True)
        outputs["exported model"] = hparams["export_folder"]
    if hparams["verify_examples"]:
        trial_list = next(iter(evaluation["trial_lists"].values()))
        for label, enrol, test, score, same in verify_examples(
            hparams["export_folder"], trial_list, evaluation["data_folder"], hparams["verify_examples"]
        ):
            truth = "same speaker" if label else "different speakers"
            decided = "same speaker" if same else "different speakers"
            verdict = "right" if same == bool(label) else "wrong"
            print(f"verify_files {enrol} {test}: score {score:.3f}, decided {decided}: {verdict} ({truth})")
    print("Outputs:")
    for name, path in outputs.items():
        print(f"  {name}: {path}")


if __name__ == "__main__":
    filter_known_warnings()
    # A log.txt that cannot be written (a full disk) must not bury the run's own error
    # under "--- Logging error ---" tracebacks; the console still shows every record.
    logging.raiseExceptions = False
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    check_overrides(hparams_file, overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    check_settings(hparams, hparams_file)
    # One run per output folder: a second one stops here. Held until the process ends.
    lock = FolderLock(hparams["output_folder"]).acquire() if if_main_process() else None
    run_on_main(remove_leftovers, args=[hparams])
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    data = run_on_main(prepare_data, args=[hparams])
    if hparams["data_prep"] == "synthetic":  # the corpus brings its own noise and RIRs
        noise_csvs = {kind: data[kind] for kind in NOISE_KINDS if kind in data}
    else:
        noise_csvs = run_on_main(prepare_noise, args=[hparams])
    records, speakers = run_stages(hparams, run_opts, data, make_augmentation(hparams, noise_csvs))
    run_on_main(save_model, args=[Path(hparams["output_folder"]) / MODEL_FOLDER, hparams, records, speakers])
    finish(hparams, run_opts)
