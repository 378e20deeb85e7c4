"""Trainer checkpoints that resume exactly and are never half written; shared by `KDTrainer` and `CoTDPOTrainer`.

Exact resume. On a mid-epoch resume, transformers restores the checkpoint's RNG states only *after* the first
`get_batch_samples` (`_run_epoch`'s `rng_to_sync`), and the sampling trainers draw there: the first resumed samples
came from the fresh trainer's RNG, and every later draw was shifted. Here every draw made while a batch is prepared
is a pure function of (`args.seed`, optimizer step, micro-batch index, process index): `sampling_rng` runs the
sampling under torch, Python and NumPy RNGs forked and seeded from those keys, so it neither reads nor advances the
RNG of the training step, and no RNG state has to be carried; `shared_uniform` is a draw every process agrees on
(GKD's `lmbda` coin). The data order is transformers' seedable sampler's, and the loss-time RNG (dropout) is the one
transformers restores. State a trainer really keeps (TSD-KD's entropy-gap history) is `resume_state` /
`load_resume_state`: written per process into each checkpoint, read back before training resumes.

Complete checkpoints. `checkpoint-N` is written inside a staging folder `.checkpoint-N.partial/` and renamed into
place once every process has written its part, so a crash leaves no `checkpoint-N` half there. A save that fails
removes the staging folder; a full disk raises an `OSError` (ENOSPC) that says so and names the checkpoint. Resume
(`train(resume_from_checkpoint=True)`, [`last_complete_checkpoint`]) takes the newest `checkpoint-N` whose
`trainer_state.json` reads, and skips any other with a warning.
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil

import numpy as np
import torch
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


# --- derived seeds ---------------------------------------------------------------------------------------------------


def derived_seed(seed: int, *keys) -> int:
    """A 63-bit seed that is a pure function of `seed` and `keys` (ints and strings)."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@contextlib.contextmanager
def forked_rng(seed: int, device: torch.device | None = None):
    """Run the block under the torch CPU, `device`, Python `random` and NumPy RNGs seeded with `seed`, and restore
    them afterwards: the block neither depends on nor advances the RNG of the code around it."""
    devices, device_type = [], "cuda"
    if device is not None and device.type not in ("cpu", "meta"):
        device_type = device.type
        devices = [device.index if device.index is not None else 0]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            getattr(torch, device_type).manual_seed(seed)  # the current device: the process's own under accelerate
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# --- which checkpoint ------------------------------------------------------------------------------------------------


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the checkpoint folder `path` cannot be resumed from (no readable `trainer_state.json`), or None."""
    state = os.path.join(path, TRAINER_STATE_NAME)
    if not os.path.isfile(state):
        return f"it has no {TRAINER_STATE_NAME}: its save was cut short"
    try:
        with open(state) as f:
            json.load(f)
    except (OSError, ValueError) as error:
        return f"its {TRAINER_STATE_NAME} does not read ({error}): its save was cut short"
    return None


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` under `folder` that is complete, or None; incomplete newer ones are skipped with a
    warning naming them."""
    if not os.path.isdir(folder):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(folder)
             if (m := _CHECKPOINT.fullmatch(name)) and os.path.isdir(os.path.join(folder, name))]
    for _, name in sorted(found, reverse=True):
        path = os.path.join(folder, name)
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping the checkpoint %s: %s. Delete it once you no longer need it.", path, problem)
    return None


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder `Trainer.train` resumes from: `True` means the newest complete one under `output_dir`;
    a named folder must be complete. Raises a `ValueError` naming the folder otherwise."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        path = last_complete_checkpoint(output_dir)
        if path is None:
            raise ValueError(f"resume_from_checkpoint=True found no complete checkpoint (a {PREFIX_CHECKPOINT_DIR}-N "
                             f"folder with a {TRAINER_STATE_NAME}) in {output_dir}; train without resuming.")
        return path
    problem = checkpoint_problem(resume_from_checkpoint)
    if problem is not None:
        raise ValueError(f"cannot resume from {resume_from_checkpoint}: {problem}. Resume from an older checkpoint "
                         "(resume_from_checkpoint=True picks the newest complete one).")
    return str(resume_from_checkpoint)


def _resume_state_path(checkpoint: str, process_index: int) -> str:
    return os.path.join(checkpoint, f"resume_state_{process_index}.json")


def _publish(staged: str, final: str) -> None:
    """Move the complete checkpoint `staged` to `final`, replacing an older folder of that name."""
    old = None
    if os.path.exists(final):
        old = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    os.rmdir(os.path.dirname(staged))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the trainer side ------------------------------------------------------------------------------------------------


class ResumableTrainerMixin:
    """Exact resume and complete-or-absent checkpoints for a `transformers.Trainer` subclass (put it first in the
    bases). Subclasses sample inside `sampling_rng`, draw shared coins with `shared_uniform`, and override
    `resume_state` / `load_resume_state` for state they keep between steps."""

    _micro_batch = 0  # the micro-batch being prepared within the optimizer step
    _staging_dir: str | None = None

    # --- draws -----------------------------------------------------------------------------------------------------

    def draw_seed(self, name: str, per_process: bool = True) -> int:
        """The seed of draw `name` for the micro-batch being prepared: a function of (`args.seed`, optimizer step,
        micro-batch, and the process index when `per_process`)."""
        keys = (name, self.state.global_step, self._micro_batch)
        return derived_seed(self.args.seed, *keys, *((self.accelerator.process_index,) if per_process else ()))

    def shared_uniform(self, name: str) -> float:
        """A uniform draw in [0, 1) that every process makes alike for this micro-batch."""
        return random.Random(self.draw_seed(name, per_process=False)).random()

    @contextlib.contextmanager
    def sampling_rng(self, micro_batch: int):
        """Prepare micro-batch `micro_batch` of the current optimizer step under RNGs seeded for it alone."""
        self._micro_batch = micro_batch
        try:
            with forked_rng(self.draw_seed("sampling"), self.accelerator.device):
                yield
        finally:
            self._micro_batch = 0

    # --- state kept between steps ----------------------------------------------------------------------------------

    def resume_state(self) -> dict:
        """This process's state that the next steps depend on besides weights, optimizer and RNG (JSON-serialisable);
        saved with every checkpoint."""
        return {}

    def load_resume_state(self, state: dict) -> None:
        """Restore what `resume_state` returned."""

    def _load_resume_state(self, checkpoint: str) -> None:
        path = _resume_state_path(checkpoint, self.accelerator.process_index)
        if os.path.isfile(path):
            with open(path) as f:
                self.load_resume_state(json.load(f))
        elif self.resume_state():
            logger.warning("%s has no %s: this trainer's sampler state starts afresh.", checkpoint,
                           os.path.basename(path))

    # --- save and resume -------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        resume_from_checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if resume_from_checkpoint is not None:
            self._load_resume_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def _get_output_dir(self, trial) -> str:
        """The staging folder while a checkpoint is written, so `Trainer._save_checkpoint` writes `checkpoint-N`
        inside it."""
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging = os.path.join(run_dir, name), os.path.join(run_dir, f".{name}.partial")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a crashed save
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
            self._save_resume_state(os.path.join(staging, name))
            self._name_published_best(os.path.join(staging, name), run_dir)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"the disk is full: the checkpoint {final} was not saved (its partial "
                              f"copy {staging} was removed). Free space or lower save_total_limit, then resume "
                              "from the last complete checkpoint", final) from error
            raise
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            _publish(os.path.join(staging, name), final)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _save_resume_state(self, checkpoint: str) -> None:
        state = self.resume_state()
        if state:
            with open(_resume_state_path(checkpoint, self.accelerator.process_index), "w") as f:
                json.dump(state, f)

    def _name_published_best(self, checkpoint: str, run_dir: str) -> None:
        """Point `best_model_checkpoint` at the published folder, not the staging one `Trainer._save_checkpoint`
        found it in, and save the corrected trainer state with the checkpoint."""
        best = self.state.best_model_checkpoint
        if best and os.path.dirname(best) == os.path.dirname(checkpoint):
            self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            if self.args.should_save:
                self.state.save_to_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
