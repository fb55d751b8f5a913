"""Knowledge distillation: a trained run (the teacher) lends its probabilities to a new run's training images.

The student learns from `(1 - weight) * one-hot label + weight * teacher probabilities`: the teacher's
calibrated 8-view mean, which says how much an image also looks like the other classes. The teacher must
have been trained on exactly the student's split, or its probabilities would carry what it learnt from the
student's validation and test galaxies into the student.
"""

from pathlib import Path

import numpy as np

from galaxy_class.data import load_split
from galaxy_class.errors import GalaxyClassError
from galaxy_class.predict import graph_mode, predict_file
from galaxy_class.runs import load_run, run_config


def check_teacher(teacher_dir, class_names, split, weight):
    """GalaxyClassError unless `teacher_dir` is a finished run with these classes and exactly this split, and
    `weight` a share."""
    if not 0 < weight <= 1:
        raise GalaxyClassError(f"teacher weight {weight}: must be more than 0 and at most 1")
    teacher_dir = Path(teacher_dir)
    config = run_config(teacher_dir)
    if list(config.class_names) != list(class_names):
        raise GalaxyClassError(f"{teacher_dir}: the teacher's classes {config.class_names} are not this run's "
                               f"{list(class_names)}")
    theirs = load_split(teacher_dir / "split.npz")
    if any(not np.array_equal(np.sort(theirs[part]), np.sort(split[part])) for part in split):
        raise GalaxyClassError(f"{teacher_dir}: the teacher was trained on another split (another data file or "
                               f"seed); its probabilities would leak its validation and test galaxies into "
                               f"this run")


def teacher_targets(teacher_dir, g, split, weight):
    """Soft targets (images in the file, K) float32: rows of the training images filled, the rest zero."""
    model, config, _ = load_run(teacher_dir)
    probs, labels = predict_file(graph_mode(model), g, split["train"], tta=True)
    num_classes = len(config.class_names)
    targets = np.zeros((len(g.labels), num_classes), np.float32)
    targets[split["train"]] = (1 - weight) * np.eye(num_classes, dtype=np.float32)[labels] + weight * probs
    return targets
