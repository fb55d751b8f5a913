"""Every setting of a run, in one dataclass saved as `config.json` beside the model."""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from galaxy_class.errors import GalaxyClassError


@dataclass
class Config:
    model: str = "mobilenet"          # mobilenet | mobilenet_v2 | squeezenet
    data: str = "sample"              # sample | galaxy10_decals | galaxy10_sdss | path to a Galaxy10-schema HDF5
    weights: str = "imagenet"         # none | imagenet | path to a weights file
    image_size: int = 160             # the model resizes its uint8 input to this
    alpha: float = 0.25               # MobileNet width multiplier
    batchnorm: bool = False           # SqueezeNet only: BatchNorm after conv1 and each squeeze layer
    dropout: float = 0.2
    batch_size: int = 64              # per replica
    epochs: int = 5                   # stage 1: new head on the frozen pretrained base
    fine_tune_epochs: int = 25        # stage 2: base unfrozen, lower learning rate
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 2e-4
    fine_tune_schedule: str = "constant"  # constant | cosine: the fine-tuning rate decays to 0 over its epochs
    # Fine-tuning validates and keeps a moving average of the weights with this momentum (0: the weights
    # themselves). Not the default: with frozen BatchNorm it no longer raised MobileNet's held-out scores
    # (benchmarks/README.md, "Training recipes").
    weight_average: float = 0.0
    # frozen | adapt: a pretrained base's BatchNorm layers while it fine-tunes: ImageNet's statistics and scales
    # kept (inference mode), or each batch's statistics, which the moving ones follow (what runs made before
    # the setting did). SqueezeNet has no pretrained BatchNorm layers: its optional ones always learn.
    fine_tune_batchnorm: str = "frozen"
    fine_tune_layers: int = 0         # how many of the base's last layers to unfreeze; 0 = all of them
    label_smoothing: float = 0.05
    class_weight: str = "sqrt"        # none | sqrt | balanced: weight classes by (1/frequency)**power
    augment: bool = True              # random flips and 90-degree rotations
    # Beside the flips and rotations, shift training images by up to this share of their width and zoom them by
    # up to 1 +- it. None: the model's own (SHIFT_ZOOM), filled in when a run starts and saved with it.
    shift_zoom: float | None = None
    colour_jitter: float = 0.0        # also scale each colour channel by up to 1 +- this
    patience: int = 8                 # early stopping on validation loss, best weights kept
    teacher: str = ""                 # a finished run of the same split to distil from ("": none; distill.py)
    teacher_weight: float = 0.5       # share of the teacher's probabilities in the training targets
    tta: bool = True                  # evaluate with the mean over the 8 flips and rotations
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    cv_folds: int = 0                 # cross-validation: the test split is fold cv_fold of cv_folds (0: no folds)
    cv_fold: int = 0
    steps_per_epoch: int = 0          # 0 = whole training split; a few steps for a quick smoke run
    precision: str = "auto"           # auto | float32 | mixed_float16 | mixed_bfloat16 (auto: models.choose_precision)
    cache: str = "auto"               # auto | ram | stream: images held in memory or read as needed (auto: by size)
    # Filled in from the data when the run starts.
    class_names: list = field(default_factory=list)
    input_shape: list = field(default_factory=list)
    data_path: str = ""
    cutout: dict = field(default_factory=dict)  # how the data's images were cut from raw cutouts (cutout.py)
    dtype_policy: str = ""            # the precision the run trains in ("": float32, runs made before the setting)
    integrity: dict = field(default_factory=dict)  # duplicates grouped and blank images left out (integrity.py)

    def save(self, path):
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path):
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise GalaxyClassError(f"{path}: cannot read the run's settings ({e})") from None
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values):
        """Settings as saved by `save` (or in an exported file's metadata), of this version or an earlier one."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {**BEFORE_THE_SETTING, **values}
        return cls(**{k: v for k, v in values.items() if k in known})  # a setting added later: its default

    def with_model_defaults(self):
        """These settings with those left to the model (None) filled in, as a run saves them."""
        if self.shift_zoom is None:
            return self.replace(shift_zoom=SHIFT_ZOOM.get(self.model, 0.0))
        return self

    def check(self):
        """GalaxyClassError naming the first setting out of its range; the settings otherwise."""
        if not 0 <= self.weight_average < 1:
            raise GalaxyClassError(f"weight average momentum {self.weight_average}: must be at least 0 and below 1")
        if not 0 <= self.shift_zoom <= 0.5:
            raise GalaxyClassError(f"shift and zoom {self.shift_zoom}: must be between 0 and 0.5")
        if not 0 <= self.colour_jitter < 1:
            raise GalaxyClassError(f"colour jitter {self.colour_jitter}: must be at least 0 and below 1")
        if self.fine_tune_batchnorm not in BATCHNORM_MODES:
            raise GalaxyClassError(f"unknown fine-tuning BatchNorm mode {self.fine_tune_batchnorm!r}: choose "
                                   f"{' or '.join(BATCHNORM_MODES)}")
        return self

    def replace(self, **changes):
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise GalaxyClassError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


# Choices of fine_tune_batchnorm, the default first.
BATCHNORM_MODES = ("frozen", "adapt")
# Architectures whose ImageNet weights include BatchNorm statistics (what --fine-tune-batchnorm is about);
# SqueezeNet's have none, and the BatchNorm layers --batchnorm adds to it always learn theirs.
PRETRAINED_BATCHNORM = ("mobilenet", "mobilenet_v2")
# Shifts and zooms by model, where they are not 0: they raised MobileNet's held-out macro-F1 over three seeds
# and lowered SqueezeNet's (benchmarks/README.md, "Training recipes").
SHIFT_ZOOM = {"mobilenet": 0.1}
# What runs saved before a setting existed did, where that is not the setting's default.
BEFORE_THE_SETTING = {"fine_tune_batchnorm": "adapt", "shift_zoom": 0.0}

