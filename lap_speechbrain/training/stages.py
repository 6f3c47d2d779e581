"""Runs the training stages in order, each from the previous stage's selected model.

Each stage (a section of the yaml, named in ``stages``) has its own
checkpoint folder ``<save_folder>/<stage>/``. When a stage finishes, the
checkpoint with the best validation EER is recorded in
``<save_folder>/<stage>/stage_done.json`` (written atomically); a recorded
stage is never run again, so re-running the same command after a crash
continues in the right stage. The next stage starts from the recorded
checkpoint. At the end the selected model of the last stage run is exported
to ``<save_folder>/model/``.

Authors
 * lap-speechbrain contributors 2026
"""

import gc
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from lap_speechbrain.brain import SpeakerBrain
from lap_speechbrain.data.pipelines import train_dataset, utterance_id, valid_dataset
from lap_speechbrain.fileio import atomic_write, atomic_write_json
from lap_speechbrain.scoring import Trials, read_trials
from lap_speechbrain.training.checkpoints import AtomicCheckpointer

logger = logging.getLogger(__name__)

DONE_FILE = "stage_done.json"
EXPORT_FOLDER = "model"
STAGE_KEYS = (
    "ssl_frozen", "epochs", "crop_seconds", "batch_size", "grad_accumulation_factor",
    "weight_decay", "speed_perturb_prob", "augment", "margin_loss", "compute_cost",
    "margin_schedule", "lr_schedule", "epoch_counter",
    "ssl_layerdrop", "ssl_mask_time_prob", "ssl_mask_time_length",
)


def check_stages(hparams: Mapping) -> List[str]:
    """Validates ``stages`` / ``run_stages`` and each stage section; returns the stages to run.

    Raises
    ------
    ValueError
        Naming the unknown stage or the missing key.
    """
    order = list(hparams["stages"])
    run = list(hparams["run_stages"])
    unknown = [name for name in run if name not in order]
    if unknown or not run:
        raise ValueError(f"run_stages={run}: expected a non-empty subset of stages={order}")
    if run != [name for name in order if name in run]:
        raise ValueError(f"run_stages={run} must follow the order of stages={order}")
    for name in order:
        section = hparams.get(name)
        if not isinstance(section, Mapping):
            raise ValueError(f"stage {name!r} is listed in stages but the yaml has no section {name!r}")
        missing = [key for key in STAGE_KEYS if key not in section]
        if missing:
            raise ValueError(f"yaml section {name!r} lacks {missing}")
    return run


def stage_record(save_folder: Path, name: str) -> Optional[dict]:
    """The record of a finished stage, or None if it has not finished."""
    path = Path(save_folder) / name / DONE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def trials_by_id(path: str) -> Trials:
    """Reads a trial list and names its utterances by manifest ID (no extension)."""
    trials = read_trials(path)
    return Trials(
        labels=trials.labels,
        enrol=[utterance_id(p) for p in trials.enrol],
        test=[utterance_id(p) for p in trials.test],
        path=trials.path,
    )


def load_selected(checkpoint: Path, embedding_model: torch.nn.Module, classifier: torch.nn.Module) -> None:
    """Loads a previous stage's selected model.

    The classifier may differ in class count (speed perturbation turned off or
    on): the rows of the classes both have (the original-speed speakers first,
    then each speed) are copied; the others keep their fresh initialisation.
    """
    state = torch.load(checkpoint / "embedding_model.ckpt", map_location="cpu", weights_only=True)
    embedding_model.load_state_dict(state)
    weight = torch.load(checkpoint / "classifier.ckpt", map_location="cpu", weights_only=True)["weight"]
    rows = min(weight.shape[0], classifier.weight.shape[0])
    with torch.no_grad():
        classifier.weight[:rows] = weight[:rows].to(classifier.weight.device)


def run_stage(
    name: str,
    hparams: Mapping,
    run_opts: Mapping,
    data: Mapping[str, str],
    label_encoder: CategoricalEncoder,
    wav_augment: Optional[torch.nn.Module],
    init_from: Optional[Path],
) -> dict:
    """Trains one stage to its last epoch and records its selected checkpoint.

    Arguments
    ---------
    name : str
        The stage (a yaml section).
    hparams : mapping
        The loaded yaml.
    run_opts : mapping
        SpeechBrain run options.
    data : mapping
        ``"train"`` and ``"valid"`` manifests and ``"valid_trials"``.
    label_encoder : CategoricalEncoder
        Training speakers -> 0..N-1.
    wav_augment : torch.nn.Module or None
        Batch corruption, used when the stage has ``augment: True``.
    init_from : Path or None
        Selected checkpoint of the previous stage (None: the pre-trained SSL
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
    speed_on = stage["speed_perturb_prob"] > 0
    num_speakers = len(label_encoder)
    num_classes = num_speakers * (1 + len(hparams["speed_factors"]) if speed_on else 1)
    embedding_model = hparams["embedding_model"]
    classifier = hparams["classifier"](out_neurons=num_classes)
    if init_from is not None:
        load_selected(init_from, embedding_model, classifier)
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
            "lr_schedule": stage["lr_schedule"],
            "margin_schedule": stage["margin_schedule"],
            "epoch_counter": stage["epoch_counter"],
        },
    )
    brain = SpeakerBrain(
        modules={"embedding_model": embedding_model, "classifier": classifier},
        opt_class=hparams["opt_class"],
        hparams={**hparams, **stage, "stage_name": name, "wav_augment": wav_augment},
        run_opts=run_opts,
        checkpointer=checkpointer,
        valid_trials=trials_by_id(data["valid_trials"]),
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
        brain.valid_trials.utterances,
        sample_rate=hparams["sample_rate"],
        max_seconds=hparams["valid_max_seconds"],
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
    stage["lr_schedule"].set_total_steps(steps_per_epoch * stage["epochs"])

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
        "epochs": stage["epochs"],
        "crop_seconds": stage["crop_seconds"],
        "batch_size": stage["batch_size"],
        "grad_accumulation_factor": brain.grad_accumulation_factor,
        "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "peak_lr": stage["lr_schedule"].peak_lr,
        "final_lr": stage["lr_schedule"].final_lr,
        "warmup_fraction": stage["lr_schedule"].warmup_fraction,
        "weight_decay": stage["weight_decay"],
        "final_margin": stage["margin_schedule"].final_margin,
        "top_k": stage["margin_loss"].top_k,
        "top_k_penalty": stage["margin_schedule"].final_top_k_penalty,
        "speed_perturb_prob": stage["speed_perturb_prob"],
        "augment": stage["augment"],
        "precision": brain.precision,
    }
    if if_main_process():
        atomic_write_json(folder / DONE_FILE, record)
    ddp_barrier()
    # Free the stage's DDP wrappers (and their gradient hooks) before the next
    # stage wraps the same modules with a different set of trainable parameters.
    del brain
    gc.collect()
    return record


def write_trained_model(hparams: Mapping, records: List[dict], label_encoder_path: str) -> Path:
    """Writes the trained model as ``<save_folder>/model/`` (atomically).

    Files: ``embedding_model.ckpt`` and ``classifier.ckpt`` (state dicts of the
    last record's selected checkpoint), ``label_encoder.txt``,
    ``ssl_config.json`` (the SSL model's HF config), ``backend_config.json``
    (the encoder's backend arguments) and ``training_summary.json``.

    Returns
    -------
    Path
        The export folder.
    """
    target = Path(hparams["save_folder"]) / EXPORT_FOLDER
    checkpoint = Path(records[-1]["checkpoint"])
    ssl_config = hparams["embedding_model"].ssl_model.model.config.to_dict()
    backend_config = hparams["embedding_model"].backend_config

    def write(folder: Path) -> None:
        folder.mkdir()
        for name in ("embedding_model.ckpt", "classifier.ckpt"):
            shutil.copyfile(checkpoint / name, folder / name)
        shutil.copyfile(label_encoder_path, folder / "label_encoder.txt")
        (folder / "ssl_config.json").write_text(json.dumps(ssl_config, indent=2) + "\n")
        (folder / "backend_config.json").write_text(json.dumps(backend_config, indent=2) + "\n")
        summary = {"ssl_hub": str(hparams["ssl_hub"]), "stages": records}
        (folder / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    atomic_write(target, write)
    logger.info("Wrote the trained model of stage %s to %s", records[-1]["stage"], target)
    return target


def run_stages(
    hparams: Mapping,
    run_opts: Mapping,
    data: Mapping[str, str],
    label_encoder_path: str,
    wav_augment: Optional[torch.nn.Module] = None,
) -> Path:
    """Runs ``run_stages`` in order (skipping finished ones) and exports the result.

    Arguments
    ---------
    hparams : mapping
        The loaded yaml.
    run_opts : mapping
        SpeechBrain run options.
    data : mapping
        ``"train"`` and ``"valid"`` manifests and ``"valid_trials"``.
    label_encoder_path : str
        ``label_encoder.txt`` of the training speakers.
    wav_augment : torch.nn.Module, optional
        Batch corruption for stages with ``augment: True``.

    Returns
    -------
    Path
        The export folder ``<save_folder>/model``.
    """
    run = check_stages(hparams)
    order = list(hparams["stages"])
    save_folder = Path(hparams["save_folder"])
    label_encoder = CategoricalEncoder()
    label_encoder.load(label_encoder_path)
    label_encoder.expect_len(len(label_encoder))  # the file is the whole mapping
    records: Dict[str, dict] = {}
    for name in run:
        record = stage_record(save_folder, name)
        if record is not None:
            logger.info("Stage %s already finished (EER %.4f); not running it again", name, record["valid_EER"])
            records[name] = record
            continue
        position = order.index(name)
        init_from = None
        if position > 0:
            previous = order[position - 1]
            previous_record = records.get(previous) or stage_record(save_folder, previous)
            if previous_record is None:
                raise RuntimeError(
                    f"stage {name!r} starts from the selected model of stage {previous!r}, which has "
                    f"not finished: add {previous!r} to run_stages"
                )
            init_from = Path(previous_record["checkpoint"])
        records[name] = run_stage(name, hparams, run_opts, data, label_encoder, wav_augment, init_from)
    done = [stage_record(save_folder, name) for name in order[: order.index(run[-1]) + 1]]
    done = [record for record in done if record is not None]
    target = save_folder / EXPORT_FOLDER
    if if_main_process():
        write_trained_model(hparams, done, label_encoder_path)
    ddp_barrier()
    return target
