"""The run folder: what a training run writes, how each file is read and written atomically, loading a
finished run, and comparing a run's settings with the ones asked for.

    config.json        every setting (config.Config), written when the run starts: its presence marks a run
    split.npz          the train/val/test indices
    history_stage1.csv, history_stage2.csv   one committed row per finished epoch
    backup/            training states while the run is unfinished (checkpoints.py) and resumes.json
    history.json, calibration.json, model.keras   written when training ends
    metrics.json       written last: its presence marks a finished run
    .lock              held by the one process that trains into the folder

Reading a run needs no Keras; only loading its model does.
"""

import contextlib
import csv
import dataclasses
import json
import os
import shutil
import socket
import time
from pathlib import Path

from galaxy_class.config import PRETRAINED_BATCHNORM, Config
from galaxy_class.data import load_split
from galaxy_class.errors import GalaxyClassError

STAGES = ("stage1", "stage2")
# Everything a run writes besides backup/ (and the temporary names of these); --overwrite removes only those.
RUN_FILES = ["config.json", "split.npz", "model.keras", "history.json", "calibration.json", "metrics.json",
             *[f"history_{s}.csv" for s in STAGES]]
# What earlier versions kept beside backup/ in an unfinished run; --overwrite removes them too.
OLD_RUN_FILES = [f"{prefix}{s}.weights.h5" for s in STAGES for prefix in ("", "best_")]
LOCK = ".lock"
# Settings derived from the data when a run starts, not chosen by the user.
DERIVED = ("class_names", "input_shape", "data_path", "cutout", "dtype_policy", "integrity")
# Settings that change how fast a run goes, not what it computes.
SPEED_ONLY = ("cache",)


def run_state(run_dir):
    """'new', 'unfinished' or 'finished' (metrics.json is written last)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").exists():
        return "finished"
    return "unfinished" if (run_dir / "config.json").exists() else "new"


def run_config(run_dir):
    """The settings of a trained run folder; GalaxyClassError if `run_dir` is not one."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise GalaxyClassError(f"{run_dir}: no such run folder; use the trained model that ships in "
                               f"models/mobilenet_gz1, or train one with `galaxy-class train --model mobilenet "
                               f"--data sample --out {run_dir}`")
    if not run_dir.is_dir():
        raise GalaxyClassError(f"{run_dir}: is a file, not a run folder (or an exported .tflite file)")
    if not (run_dir / "model.keras").is_file() or not (run_dir / "config.json").is_file():
        raise GalaxyClassError(f"{run_dir}: not a finished training run (no model.keras and config.json)")
    return Config.load(run_dir / "config.json")


def load_run(run_dir):
    """The model, settings and split of a trained run folder."""
    import keras

    run_dir = Path(run_dir)
    config = run_config(run_dir)
    try:
        model = keras.saving.load_model(run_dir / "model.keras")
    except Exception as e:  # Keras raises many kinds for a damaged file
        raise GalaxyClassError(f"{run_dir / 'model.keras'}: cannot load the model ({e})") from None
    return model, config, load_split(run_dir / "split.npz")


@contextlib.contextmanager
def locked(run_dir):
    """Hold `run_dir` for this process while the block runs: an OS lock on its .lock file, which the OS releases
    however the process ends, and which says who holds it; another process gets a GalaxyClassError naming that
    holder. A folder made here that holds nothing else afterwards is removed again."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise GalaxyClassError(f"{run_dir}: exists and is not a folder")
    made = not run_dir.exists()
    path = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise GalaxyClassError(f"{run_dir}: cannot write in it ({e.strerror})") from None
    try:
        with f:
            if not _try_lock(f):
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise GalaxyClassError(f"{run_dir}: in use by {holder}; wait until it ends, or choose another "
                                       f"folder")
            _note(f, f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            try:
                yield
            finally:
                _note(f, "")  # released: no stale holder is named later
    finally:
        if made and run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [LOCK]:
            path.unlink(missing_ok=True)
            run_dir.rmdir()


def _note(f, holder):
    f.seek(0)
    f.truncate()
    f.write(holder + "\n" if holder else "")
    f.flush()


def _try_lock(f):
    """Lock the open file `f` for this process without waiting; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: a lock on the file's first byte, whatever it holds
        import msvcrt

        f.seek(0)
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def settings_differences(saved, requested):
    """The chosen settings in which two configs differ, as "name: saved -> requested" strings."""
    saved, requested = saved.with_model_defaults(), requested.with_model_defaults()
    moot = () if {saved.model, requested.model} & set(PRETRAINED_BATCHNORM) else ("fine_tune_batchnorm",)
    return [f"{f}: {getattr(saved, f)!r} -> {getattr(requested, f)!r}"
            for f in (f.name for f in dataclasses.fields(Config)) if f not in DERIVED + SPEED_ONLY + moot
            and getattr(saved, f) != getattr(requested, f)]


def clear_run(run_dir):
    """Remove what a run wrote (and only that), so the folder can hold a new run."""
    run_dir = Path(run_dir)
    for name in [*RUN_FILES, *OLD_RUN_FILES]:
        (run_dir / name).unlink(missing_ok=True)
        temporary(run_dir / name).unlink(missing_ok=True)
    remove_backup(run_dir)


def remove_backup(run_dir):
    """Remove the training states, which a finished run no longer needs."""
    shutil.rmtree(Path(run_dir) / "backup", ignore_errors=True)


def history_path(run_dir, stage):
    return Path(run_dir) / f"history_{stage}.csv"


def note_start(run_dir, epochs_done, resuming):
    """Record where a resumed run started again, unless the last call stopped there on purpose (stop_after);
    True if it did."""
    notes = _read_notes(run_dir)
    resumed = resuming and notes["paused_at_epoch"] != epochs_done
    if resumed:
        notes["resumed_at_epochs"].append(epochs_done)
    _write_notes(run_dir, {**notes, "paused_at_epoch": None})
    return resumed


def note_pause(run_dir, epochs_done):
    """Record that the run stopped here on purpose, so that going on from here is no resume."""
    notes = _read_notes(run_dir)
    _write_notes(run_dir, {**notes, "paused_at_epoch": epochs_done})


def _read_notes(run_dir):
    path = Path(run_dir) / "backup" / "resumes.json"
    return json.loads(path.read_text()) if path.exists() else {"resumed_at_epochs": [], "paused_at_epoch": None}


def _write_notes(run_dir, notes):
    path = Path(run_dir) / "backup" / "resumes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(notes, path)


def read_history(run_dir):
    """Both stages' per-epoch metrics, one list per metric, the epoch where fine-tuning began, and the
    epochs after which a killed or interrupted run was resumed."""
    rows = {s: read_csv(history_path(run_dir, s)) for s in STAGES}
    all_rows = rows["stage1"] + rows["stage2"]
    keys = [k for k in (all_rows[0] if all_rows else {}) if k != "epoch"]
    return {
        "epochs_stage1": len(rows["stage1"]),
        "epochs_stage2": len(rows["stage2"]),
        "fine_tune_start_epoch": len(rows["stage1"]),
        "resumed_at_epochs": _read_notes(run_dir)["resumed_at_epochs"],
        **{k: [r[k] for r in all_rows] for k in keys},
    }


def read_csv(path):
    """The logged epochs' metrics, one dict of floats per epoch (the learning rate left out)."""
    if not Path(path).exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in r.items() if k not in ("epoch", "learning_rate")} for r in csv.DictReader(f)]


def write_csv(path, rows):
    """The log as Keras' CSVLogger writes it, epoch first; replaced atomically."""
    keys = sorted(rows[0])

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", *keys])
            writer.writerows([epoch, *(row[k] for k in keys)] for epoch, row in enumerate(rows))

    atomic(write, path)


def temporary(path):
    """Where `atomic` writes `path` first (the same suffix, so savers that check it accept it)."""
    path = Path(path)
    return path.with_name(path.name.replace(".", ".tmp.", 1))


def write_json(data, path):
    atomic(lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"), path)


def atomic(save, path):
    """Write through `save(tmp)` then rename, so a kill never leaves a half-written file that looks done."""
    tmp = temporary(path)
    save(str(tmp))
    os.replace(tmp, path)
