"""Crash-safe checkpoints and files: nothing half-written is ever picked up.

SpeechBrain 1.1's ``Checkpointer`` writes ``CKPT.yaml`` first and the parameter
files after it, straight into the final ``CKPT+...`` folder, and deletes old
checkpoints with ``shutil.rmtree``. A SIGKILL during either leaves a folder that
looks like a valid checkpoint but lacks files, and ``recover_if_possible``
would then pick it and fail. :class:`AtomicCheckpointer` writes every
checkpoint into a hidden staging folder and renames it into place only when
complete, and renames a checkpoint out of sight before deleting it.

Authors
 * lap-speechbrain contributors 2026
"""

import logging
import os
import shutil
from pathlib import Path

from speechbrain.utils.checkpoints import Checkpoint, Checkpointer, ckpt_recency
from speechbrain.utils.distributed import (
    ddp_barrier,
    if_main_process,
    main_process_only,
)

from lap_speechbrain.fileio import reporting_full_disk

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging+"
TRASH_PREFIX = ".trash+"


class AtomicCheckpointer(Checkpointer):
    """A ``Checkpointer`` whose checkpoints appear and disappear atomically.

    Same arguments and behaviour as SpeechBrain's ``Checkpointer``; leftovers of
    an interrupted save or delete (hidden staging/trash folders) are removed
    when it is constructed.

    Example
    -------
    >>> import torch
    >>> folder = str(getfixture("tmpdir"))
    >>> model = torch.nn.Linear(2, 2)
    >>> checkpointer = AtomicCheckpointer(folder, {"model": model})
    >>> checkpoint = checkpointer.save_checkpoint(meta={"EER": 0.1})
    >>> checkpoint.path.name.startswith("CKPT+"), sorted(p.name for p in checkpoint.path.iterdir())
    (True, ['CKPT.yaml', 'model.ckpt'])
    """

    def __init__(self, checkpoints_dir, *args, **kwargs):
        super().__init__(checkpoints_dir, *args, **kwargs)
        if if_main_process():
            for leftover in Path(self.checkpoints_dir).glob(".*+CKPT+*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def _new_checkpoint_dirpath(self):
        final = super()._new_checkpoint_dirpath()
        return final.with_name(STAGING_PREFIX + final.name)

    def _custom_checkpoint_dirpath(self, name):
        final = super()._custom_checkpoint_dirpath(name)
        return final.with_name(STAGING_PREFIX + final.name)

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Saves into a staging folder, then renames it to ``CKPT+...``.

        Arguments and return value as ``Checkpointer.save_checkpoint``; a full
        disk raises :class:`~lap_speechbrain.fileio.NoSpaceLeftError` naming
        the checkpoint folder, and the staging folder is removed.
        """
        try:
            with reporting_full_disk(self.checkpoints_dir):
                staged = super().save_checkpoint(
                    meta=meta, end_of_epoch=end_of_epoch, name=name, verbosity=logging.DEBUG
                )
        except BaseException:
            # A failed save (a full disk) gives its space back at once.
            if if_main_process():
                for leftover in Path(self.checkpoints_dir).glob(STAGING_PREFIX + "CKPT+*"):
                    shutil.rmtree(leftover, ignore_errors=True)
            raise
        ddp_barrier()  # every process has written its files into the staging folder
        if staged is None:
            return None
        final = staged.path.with_name(staged.path.name[len(STAGING_PREFIX):])
        if final.exists():  # a custom name saved twice: replace the old one
            self._delete_checkpoint(Checkpoint(final, {}, {}))
        os.rename(staged.path, final)
        kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {kind} checkpoint in {final}")
        paramfiles = {key: final / path.name for key, path in staged.paramfiles.items()}
        return Checkpoint(final, staged.meta, paramfiles)

    def delete_checkpoints(
        self,
        *,
        num_to_keep=1,
        min_keys=None,
        max_keys=None,
        importance_keys=(ckpt_recency,),
        ckpt_predicate=None,
        verbosity=logging.INFO,
    ):
        """As ``Checkpointer.delete_checkpoints``, but deletes through :meth:`_delete_checkpoint`.

        SpeechBrain's version calls ``Checkpointer._delete_checkpoint`` on the
        base class, which would bypass the rename-first deletion below.
        """
        if num_to_keep < 0:
            raise ValueError(f"num_to_keep={num_to_keep}; must be >= 0")
        orders = [{"min_key": key} for key in min_keys or []]
        orders += [{"max_key": key} for key in max_keys or []]
        orders += [{"importance_key": key} for key in importance_keys]
        candidates, protected = set(), set()
        for order in orders:
            candidates.update(self.find_checkpoints(ckpt_predicate=ckpt_predicate, **order))
            protected.update(
                self.find_checkpoints(
                    ckpt_predicate=ckpt_predicate, max_num_checkpoints=num_to_keep, **order
                )
            )
        ddp_barrier()  # no process may be saving while the main process deletes
        for checkpoint in candidates - protected:
            self._delete_checkpoint(checkpoint, verbosity=verbosity)
        ddp_barrier()

    @staticmethod
    @main_process_only
    def _delete_checkpoint(checkpoint, verbosity=logging.INFO):
        """Renames the checkpoint out of sight first, so a killed delete leaves no half checkpoint."""
        path = Path(checkpoint.path)
        trash = path.with_name(TRASH_PREFIX + path.name)
        os.rename(path, trash)
        shutil.rmtree(trash)
        logger.log(verbosity, f"Deleted checkpoint in {path}")
