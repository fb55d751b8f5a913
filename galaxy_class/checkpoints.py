"""Checkpoints of a training stage and early stopping, as rules over the epochs its log has committed.

After each epoch the stage's whole training state (weights, optimizer, random generators) is saved under
backup/<stage>/, then the epoch's row is added to history_<stage>.csv; both writes replace files atomically,
and the row commits the epoch. On a restart the rows alone tell which epochs are done, which one was the
best, and whether early stopping had already ended the stage: nothing that matters lives only in a process.
"""

from pathlib import Path

import keras
import numpy as np

from galaxy_class.errors import GalaxyClassError
from galaxy_class.runs import atomic, read_csv, write_csv


class StageCheckpoint(keras.callbacks.Callback):
    """After each epoch: save the training state, commit the epoch's row to the log, stop early when due."""

    def __init__(self, folder, log, patience):
        super().__init__()
        self.folder, self.log, self.patience = Path(folder), Path(log), patience

    def on_train_begin(self, logs=None):
        self.rows = read_csv(self.log)
        _keep_states(self.folder, self.rows)  # drop what a kill left behind

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        save_state(self.model, self.folder / f"epoch-{len(self.rows)}.npz")
        write_csv(self.log, self.rows)  # the commit: a kill before this replays the epoch
        _keep_states(self.folder, self.rows)
        if early_stopped(self.rows, self.patience):
            self.model.stop_training = True


def early_stopped(rows, patience):
    """Whether Keras' EarlyStopping on val_loss would have stopped after these epochs, counting its patience
    over all of them, however many processes ran them."""
    best, wait = None, 0
    for epoch, row in enumerate(rows):
        wait += 1
        if _improves(row["val_loss"], best):
            best, wait = row["val_loss"], 0
        elif wait >= patience and epoch > 0:
            return True
    return False


def best_epoch(rows):
    """How many epochs had run when Keras' ModelCheckpoint(save_best_only) last saved; None for no epochs."""
    best, count = None, None
    for epoch, row in enumerate(rows):
        if _improves(row["val_loss"], best):
            best, count = row["val_loss"], epoch + 1
    return count


def best_stage(rows):
    """Of the stages in `rows` (stage name: its logged epochs, in training order), the one whose best epoch had
    the lowest validation loss; a later stage wins a tie, and a NaN loss never wins."""
    losses = {stage: stage_rows[best_epoch(stage_rows) - 1]["val_loss"] for stage, stage_rows in rows.items()
              if stage_rows}
    return min(reversed(losses), key=lambda stage: np.nan_to_num(losses[stage], nan=np.inf), default=None)


def _improves(loss, best):
    """Keras' rule: the first epoch always improves (even a NaN loss), later ones only by being lower."""
    return best is None or loss < best


def stage_over(rows, epochs, patience):
    """Whether a stage with these epochs logged has nothing left to run."""
    return len(rows) >= epochs or early_stopped(rows, patience)


def resume_stage(model, folder, log, rows):
    """Load the state after the last committed epoch of a stage that goes on."""
    load_state(model, state_file(folder, len(rows), log))


def end_stage(model, folder, log, rows, averaged=False):
    """Load the stage's last state (seeds included) and then its best weights, or with `averaged` the best
    epoch's moving average of them: the same after a fit or a kill."""
    if not rows:
        return
    load_state(model, state_file(folder, len(rows), log), parts=("weights", "seeds"))
    best = best_epoch(rows)
    if best != len(rows) or averaged:
        load_state(model, state_file(folder, best, log), parts=("weights", "optimizer") if averaged else ("weights",))
    if averaged:
        optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # mixed precision wraps it
        for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average,
                                     strict=True):
            variable.assign(average)


def _state_variables(model):
    """The variables that make up a training state: weights, the random generators' seeds, the optimizer's."""
    weights = model.weights
    ids = {id(w) for w in weights}
    return {"weights": weights, "seeds": [v for v in model.variables if id(v) not in ids],
            "optimizer": model.optimizer.variables if getattr(model, "optimizer", None) else []}


def save_state(model, path):
    """Everything needed to go on training `model` as if never stopped, written atomically."""
    arrays = {f"{part}{i}": np.asarray(v) for part, variables in _state_variables(model).items()
              for i, v in enumerate(variables)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic(lambda p: np.savez(p, **arrays), path)


def load_state(model, path, parts=("weights", "seeds", "optimizer")):
    """Assign the `parts` of a state saved by `save_state` to `model`'s variables."""
    with np.load(path) as saved:
        for part in parts:
            variables = _state_variables(model)[part]
            if sum(k.startswith(part) for k in saved.files) != len(variables):
                raise GalaxyClassError(f"{path}: a saved training state of another model; retrain with "
                                       f"overwrite=True or --overwrite")
            for i, v in enumerate(variables):
                v.assign(saved[f"{part}{i}"])


def state_file(folder, epochs, log):
    """The saved state after `epochs` epochs of a stage, which its log says must exist."""
    path = Path(folder) / f"epoch-{epochs}.npz"
    if not path.exists():
        raise GalaxyClassError(f"{path}: missing, so the {epochs} epochs in {log} cannot be continued (a run "
                               f"from an earlier version?); retrain with overwrite=True or --overwrite")
    return path


def _keep_states(folder, rows):
    """Delete the saved states no longer needed: all but the last committed epoch's and the best one's."""
    keep = {f"epoch-{n}.npz" for n in (len(rows), best_epoch(rows)) if n}
    for path in Path(folder).glob("*"):
        if path.name not in keep:
            path.unlink()
