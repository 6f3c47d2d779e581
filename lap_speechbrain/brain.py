"""The ``Brain`` of one training stage of the LAP speaker-embedding model.

One :class:`SpeakerBrain` trains one stage (frozen, joint or large-margin
fine-tuning, docs/lap_spec.md section 5); :mod:`lap_speechbrain.training.stages`
runs the stages in order. The stage's settings (epochs, LR and margin
schedules, weight decay, augmentation) are merged into ``hparams``, so
``self.hparams`` always describes the current stage.

What it adds to ``speechbrain.Brain``:

- the optimiser holds only the parameters that train in this stage (in stage 1
  LAP, ASTP and the classifier; the frozen WavLM is left out);
- the LR schedule and the margin schedule advance once per *optimiser* step
  (so gradient accumulation, SpeechBrain's ``grad_accumulation_factor``, does
  not speed them up);
- validation embeds the utterances of a held-out trial list and the epoch's
  checkpoint is kept or dropped by its EER.

Training precision is SpeechBrain's (``--precision bf16/fp16``); the
classifier and the margin loss compute in fp32 whatever the autocast.

Authors
 * lap-speechbrain contributors 2026
"""

import time
from typing import Dict

import speechbrain as sb
import torch
from torch.nn.parallel import DistributedDataParallel

from lap_speechbrain.nnet.sync_batchnorm import convert_sync_batchnorm
from lap_speechbrain.scoring import Trials, compute_eer, cosine_scores


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP/DataParallel wrapper (itself otherwise)."""
    if isinstance(module, (DistributedDataParallel, torch.nn.DataParallel)):
        return module.module
    return module


class SpeakerBrain(sb.Brain):
    """Trains the speaker encoder and classifier for one stage.

    Modules: ``embedding_model`` (:class:`lap_speechbrain.lobes.SSLSpeakerEncoder`)
    and ``classifier`` (:class:`lap_speechbrain.nnet.SubCenterClassifier`).
    ``hparams`` must hold the stage's ``stage_name``, ``epoch_counter``,
    ``lr_schedule`` (:class:`~lap_speechbrain.nnet.schedulers.WarmupCosineScheduler`),
    ``margin_schedule`` (:class:`~lap_speechbrain.nnet.MarginScheduler`),
    ``compute_cost`` (``LogSoftmaxWrapper`` around the stage's margin loss),
    ``weight_decay``, ``augment`` and ``wav_augment`` (a batch corruption
    module, or None), ``train_logger``, ``use_tensorboard`` and
    ``tensorboard_logger`` (a ``TensorboardLogger`` factory).

    Arguments
    ---------
    valid_trials : Trials
        Held-out validation trials; their utterance IDs are the paths without
        extension, as in the validation manifest.
    *args, **kwargs
        ``speechbrain.Brain`` arguments.
    """

    def __init__(self, *args, valid_trials: Trials, **kwargs):
        super().__init__(*args, **kwargs)
        self.valid_trials = valid_trials
        self.valid_embeddings: Dict[str, torch.Tensor] = {}
        self.train_stats: Dict[str, float] = {}
        self.tensorboard = None

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
        """One optimiser over the parameters that train in this stage, LR from the schedule."""
        parameters = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(parameters, weight_decay=self.hparams.weight_decay)
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.hparams.lr_schedule.apply(self.optimizer)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

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

    def on_fit_start(self):
        """SpeechBrain's start (DDP wrap, optimiser, recovery), then the LR of the restored step."""
        super().on_fit_start()
        self.hparams.lr_schedule.apply(self.optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Advances the LR and margin schedules after each optimiser step."""
        if should_step:
            self.hparams.lr_schedule(self.optimizer)
            self.hparams.margin_schedule.step()

    def on_stage_start(self, stage, epoch=None):
        """Resets the epoch's counters."""
        if stage == sb.Stage.TRAIN:
            self.epoch_start = time.time()
            self.train_correct = 0
            self.train_count = 0
        else:
            self.valid_embeddings = {}

    def validation_eer(self):
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
