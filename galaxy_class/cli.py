"""`python -m galaxy_class` (or `galaxy-class`): inspect, make-dataset, train, evaluate, predict, export, serve."""

import argparse
import contextlib
import json
import sys
import traceback
from pathlib import Path

from galaxy_class.config import BATCHNORM_MODES, SHIFT_ZOOM
from galaxy_class.errors import GalaxyClassError
from galaxy_class.quiet import native_logs_hidden, stderr_is_terminal
from galaxy_class.runs import run_config


def cmd_inspect(args):
    from galaxy_class import integrity
    from galaxy_class.data import describe, open_galaxy10

    g = open_galaxy10(args.source)
    print(describe(g))
    found = integrity.check(g, tolerance_arcsec=args.tolerance, progress=stderr_is_terminal())
    print("integrity:")
    print("\n".join(f"  {line}" for line in found.summary()))


def cmd_train(args):
    from galaxy_class.config import Config
    from galaxy_class.data import open_galaxy10

    open_galaxy10(args.data)  # a bad data source is reported before TensorFlow loads
    from galaxy_class.evaluate import report
    from galaxy_class.train import train

    settings = {"model": args.model, "data": args.data, "seed": args.seed, "epochs": args.epochs,
                "fine_tune_epochs": args.fine_tune_epochs, "weights": args.weights,
                "image_size": args.image_size, "batch_size": args.batch_size, "alpha": args.alpha,
                "steps_per_epoch": args.steps_per_epoch, "precision": args.precision, "cache": args.cache,
                "fine_tune_schedule": args.fine_tune_schedule, "fine_tune_batchnorm": args.fine_tune_batchnorm,
                "teacher": args.teacher,
                "teacher_weight": args.teacher_weight, "weight_average": args.weight_average,
                "shift_zoom": args.shift_zoom, "colour_jitter": args.colour_jitter}
    config = Config().replace(**{k: v for k, v in settings.items() if v is not None})
    metrics = train(config, args.out, overwrite=args.overwrite, verbose=0 if args.quiet else 2)
    print(f"Finished: {args.out}")
    print(report(metrics))


def cmd_evaluate(args):
    from galaxy_class.data import open_galaxy10
    from galaxy_class.evaluate import evaluate, report

    model, config, split = _load(args.run_dir)
    g = open_galaxy10(args.data or config.data_path or config.data)
    if tuple(g.class_names) != tuple(config.class_names):
        raise GalaxyClassError(f"{g.path}: its classes {list(g.class_names)} are not the ones the model "
                               f"in {args.run_dir} was trained on {config.class_names}")
    if tuple(g.image_shape) != tuple(config.input_shape):
        raise GalaxyClassError(f"{g.path}: its images are {g.image_shape[0]}x{g.image_shape[1]} pixels, but the model "
                               f"in {args.run_dir} takes {config.input_shape[0]}x{config.input_shape[1]}")
    own_data = Path(g.path).resolve() == Path(config.data_path).resolve()
    if own_data:
        indices, part, seen = split["test"], "test", None
    elif args.all:
        indices, part, seen = range(g.n), "all", None
    else:
        seen = _overlap(config, split, g)
        if seen is None:
            raise GalaxyClassError(f"{g.path}: which of its galaxies the run has seen cannot be checked without the "
                                   f"run's own data file ({config.data_path or 'not recorded'}); --all scores every "
                                   f"one anyway")
        indices, part = seen.unseen, "unseen"
        if not len(indices):
            raise GalaxyClassError(f"{g.path}: the run has seen all of its galaxies (or they are blank); --all scores "
                                   f"them anyway")
    tta = _views(args, config)
    metrics = evaluate(model, g, list(indices), config.class_names, tta=tta)
    metrics.update(split=part, data=str(g.path), **({"overlap": seen.to_dict()} if seen is not None else {}))
    print(report(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1) + "\n")
    if args.figures:
        from galaxy_class.plots import confusion_figure

        Path(args.figures).mkdir(parents=True, exist_ok=True)
        out = Path(args.figures) / f"{config.model}_confusion_matrix.png"
        confusion_figure(metrics["confusion_matrix"], config.class_names, title=config.model).savefig(out, dpi=120)
        print(f"Wrote {out}")


def cmd_predict(args):
    if args.data or args.out:
        return _catalogue(args)
    if not args.images:
        raise GalaxyClassError("give image files to classify, or --data FILE.h5|FOLDER --out catalogue.csv")
    from galaxy_class.images import load_images

    # Every image is read before a Keras model loads: a bad one is reported before TensorFlow's start-up lines.
    lite = _load(args.run_dir) if Path(args.run_dir).suffix == ".tflite" else None
    config = lite[1] if lite else run_config(args.run_dir)
    prepared = load_images(args.images, config, args.crop_fraction)
    model = (lite or _load(args.run_dir))[0]
    from galaxy_class.predict import classify

    notes = {}
    for path, (_, note) in zip(args.images, prepared):
        notes.setdefault(note, []).append(path)
    for note, paths in notes.items():
        which = paths[0] if len(paths) == 1 else f"{len(paths)} images"
        print(f"note: {which}: {note}", file=sys.stderr)
    results = classify(model, config.class_names, prepared, args.images, tta=_views(args, config))
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        print(f"{r['image']}: {r['class']} ({r['probability']:.1%})")


def _catalogue(args):
    if not (args.data and args.out):
        raise GalaxyClassError("a catalogue needs both --data (an HDF5 file or a folder of images) and --out")
    if args.images:
        raise GalaxyClassError("give either image files or --data, not both")
    if args.json:
        raise GalaxyClassError("--json prints results for image files; a catalogue is written to --out")
    if not Path(args.data).exists():
        raise GalaxyClassError(f"{args.data}: no such file or folder")
    model, config, split = _load(args.run_dir)
    from galaxy_class.catalogue import write_catalogue

    weights = Path(args.run_dir) if Path(args.run_dir).suffix == ".tflite" else Path(args.run_dir) / "model.keras"
    n = write_catalogue(model, config, args.data, args.out, tta=_views(args, config), batch_size=args.batch_size,
                        overwrite=args.overwrite, progress=stderr_is_terminal(), crop_fraction=args.crop_fraction,
                        model_id=f"{weights.resolve()} {weights.stat().st_mtime_ns}")
    print(f"Wrote {args.out}: {n:,} galaxies")
    if Path(args.data).is_file():
        from galaxy_class.data import open_galaxy10

        _overlap(config, split, open_galaxy10(args.data))


def cmd_serve(args):
    from galaxy_class.serve import serve

    try:
        serve(args.run_dir, host=args.host, port=args.port)
    except KeyboardInterrupt:  # while the model loads; once serving, Ctrl+C ends serve() itself
        print("Stopped.")


def cmd_export(args):
    from galaxy_class.export import export_tflite

    export_tflite(args.run_dir, quantize=args.quantize, out=args.out, calibration_images=args.calibration_images)


def cmd_make_dataset(args):
    from galaxy_class.data import describe, open_galaxy10
    from galaxy_class.make_dataset import make_dataset

    made = make_dataset(args.folder, args.out, args.labels, like=args.like, class_names=args.class_names,
                        size=args.size, raw_size=args.raw_size, crop=args.crop, resample=args.resample,
                        allow_outside=args.allow_outside_folder)
    from galaxy_class import integrity

    print(f"Wrote {made.path}")
    g = open_galaxy10(made.path)
    print(describe(g))
    notes = list(made.notes())
    found = integrity.check(g)
    if found.pixel_groups or len(found.position_pairs) or len(found.blank):
        notes += [line for line in found.summary() if not line.endswith(": none")]
    if args.like:
        like = open_galaxy10(args.like)
        shared = integrity.overlap(like, range(like.n), g)
        if len(shared.seen):
            notes.append(f"{len(shared.seen)} of its {g.n} galaxies are already in {args.like} (by pixels "
                         f"{len(shared.by_pixels)}" + ("" if shared.by_position is None else
                                                       f", by sky position {len(shared.by_position)}") + ")")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _overlap(config, split, other):
    """How many of `other`'s galaxies the run trained or validated on (integrity.overlap), said on stderr; None
    where the run's own data file is not at hand to compare with."""
    import numpy as np

    from galaxy_class import integrity
    from galaxy_class.data import open_galaxy10

    try:
        own = open_galaxy10(Path(config.data_path)) if config.data_path else None
        seen_by_run = np.concatenate([split["train"], split["val"]])
    except GalaxyClassError:  # the file is not here, or an exported file's split is not
        own = None
    if own is None or own.n <= seen_by_run.max(initial=-1) or tuple(own.class_names) != tuple(config.class_names):
        print(f"note: {other.path}: the run's own data file ({config.data_path or 'not recorded'}) is not here, so "
              f"which of its galaxies the run has seen cannot be checked", file=sys.stderr)
        return None
    found = integrity.overlap(own, seen_by_run, other, progress=stderr_is_terminal())
    for line in found.summary():
        print(f"note: {line.strip()}", file=sys.stderr)
    return found


def _views(args, config):
    """Whether to average the 8 flips and rotations: as the run was scored and calibrated, unless --one-view."""
    return config.tta if args.tta is None else args.tta


def _load(run_dir):
    """(model, config, split) of a run folder, or of a .tflite file exported from one."""
    if Path(run_dir).suffix != ".tflite":
        run_config(run_dir)  # a wrong folder is reported before TensorFlow loads (and prints its start-up lines)
    from galaxy_class.predict import load_model

    return load_model(run_dir)


def _positive(value):
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be a whole number of at least 1")
    return int(value)


def _crop_fraction(value):
    from galaxy_class.cutout import parse_crop_fraction

    try:
        return parse_crop_fraction(value)
    except GalaxyClassError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (where it has one) and keeps the examples' line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _examples(*lines):
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


RUN_HELP = "a run folder (the shipped models/mobilenet_gz1, or one written by train), or a .tflite file exported from one"


def build_parser():
    from galaxy_class.config import Config

    default = Config()
    parser = argparse.ArgumentParser(
        prog="galaxy-class", description=__doc__, formatter_class=_HelpFormatter,
        epilog=_examples("galaxy-class predict models/mobilenet_gz1 data/cutouts/*.jpeg",
                         "galaxy-class train --model mobilenet --data sample --out runs/mobilenet",
                         "galaxy-class COMMAND --help"))
    parser.add_argument("--debug", action="store_true",
                        help="show TensorFlow's own log lines, and the full traceback on errors")
    # --debug is also accepted after the command; SUPPRESS keeps the subcommand from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, examples, **options):
        return sub.add_parser(name, parents=[common], help=help, description=help[0].upper() + help[1:] + ".",
                              formatter_class=_HelpFormatter, epilog=_examples(*examples), **options)

    p = command("inspect", "image count, shape, class names and counts of a data source",
                ["galaxy-class inspect sample", "galaxy-class inspect galaxy10_decals --tolerance 2   # downloads it first"])
    p.add_argument("source", help="sample, galaxy10_decals, galaxy10_sdss or a path to a Galaxy10-schema HDF5")
    p.add_argument("--tolerance", type=float, default=1.0, metavar="ARCSEC",
                   help="rows closer than this on the sky count as one galaxy (files with ra and dec columns)")
    p.set_defaults(func=cmd_inspect)

    p = command("train", "train and fine-tune a model into a run folder",
                ["galaxy-class train --model mobilenet --data sample --out runs/mobilenet",
                 "galaxy-class train --model squeezenet --data galaxy10_decals --out runs/squeezenet_decals",
                 "galaxy-class train --model mobilenet --data sample --out runs/quick --epochs 1 "
                 "--fine-tune-epochs 1 --steps-per-epoch 2"])
    p.add_argument("--model", required=True, choices=["mobilenet", "mobilenet_v2", "squeezenet"],
                   help="MobileNet v1 (width --alpha), MobileNet v2 or SqueezeNet v1.1, from ImageNet weights")
    p.add_argument("--data", required=True, help="sample, galaxy10_decals, galaxy10_sdss or a file path")
    p.add_argument("--out", required=True, type=Path,
                   help="run folder (an unfinished run with the same settings in it resumes)")
    p.add_argument("--seed", type=int, default=default.seed,
                   help="seeds the split, the weights of the new head, shuffling and augmentation")
    p.add_argument("--epochs", type=int, default=default.epochs, help="stage 1 epochs (new head)")
    p.add_argument("--fine-tune-epochs", type=int, default=default.fine_tune_epochs,
                   help="stage 2 epochs at most (fine-tuning; early stopping on validation loss)")
    p.add_argument("--fine-tune-schedule", choices=["constant", "cosine"], default=default.fine_tune_schedule,
                   help="fine-tuning learning rate: constant, or decaying to zero over the fine-tuning epochs")
    p.add_argument("--fine-tune-batchnorm", choices=BATCHNORM_MODES, default=default.fine_tune_batchnorm,
                   help="a pretrained base's BatchNorm layers while fine-tuning: ImageNet's statistics and scales "
                        "(frozen), or each batch's statistics, which the moving ones follow (adapt)")
    p.add_argument("--weight-average", type=float, metavar="M", default=default.weight_average,
                   help="fine-tuning validates and keeps a moving average of the weights with momentum M "
                        "(e.g. 0.99; 0: the weights themselves)")
    p.add_argument("--shift-zoom", type=float, metavar="S",
                   help="besides flips and rotations, shift training images by up to S of their width and zoom "
                        "them by up to 1 +- S (0: off; default: "
                        + ", ".join(f"{v} for {k}" for k, v in SHIFT_ZOOM.items()) + ", 0 for the other models)")
    p.add_argument("--colour-jitter", type=float, metavar="C", default=default.colour_jitter,
                   help="besides flips and rotations, scale each colour channel of training images by up to "
                        "1 +- C (0: off)")
    p.add_argument("--teacher", metavar="RUN",
                   help="distil from this finished run (trained on the same data and seed, e.g. a SqueezeNet run)")
    p.add_argument("--teacher-weight", type=float, metavar="W", default=default.teacher_weight,
                   help="share of the teacher's probabilities in the training targets")
    p.add_argument("--weights", default=default.weights,
                   help="none, imagenet (the files in weights/ for MobileNet alpha 0.25 and SqueezeNet; Keras "
                        "downloads the others) or a path to a weights file")
    p.add_argument("--image-size", type=int, default=default.image_size,
                   help="the size in pixels the model resizes its input to")
    p.add_argument("--batch-size", type=int, default=default.batch_size, help="images per training step")
    p.add_argument("--alpha", type=float, default=default.alpha,
                   help="MobileNet width multiplier (ImageNet weights: 0.25, 0.5, 0.75, 1.0)")
    p.add_argument("--steps-per-epoch", type=int, default=default.steps_per_epoch,
                   help="limit each epoch to a few batches, for a quick trial (0: the whole training split)")
    p.add_argument("--precision", choices=["auto", "float32", "mixed_float16", "mixed_bfloat16"],
                   default=default.precision,
                   help="auto: mixed_float16 on CUDA GPUs, mixed_bfloat16 on CPUs with bf16 units for the "
                        "models measured faster so, else float32; the saved model computes in float32")
    p.add_argument("--cache", choices=["auto", "ram", "stream"], default=default.cache,
                   help="ram: read the images once and hold them in memory; stream: read them as needed; "
                        "auto: ram when they fill at most half the free memory")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true", help="no line per epoch")
    p.set_defaults(func=cmd_train)

    p = command("evaluate", "metrics of a trained run on its test split or on another file",
                ["galaxy-class evaluate runs/mobilenet --data my_galaxies.h5",
                 "galaxy-class evaluate runs/mobilenet --json metrics.json --figures figures/"])
    p.add_argument("run_dir", type=Path, help=RUN_HELP)
    p.add_argument("--data", help="default: the run's own data (its saved test split); another file: its galaxies "
                                  "the run was neither trained nor validated on")
    p.add_argument("--all", action="store_true",
                   help="with --data: score every galaxy of the file, also those the run has seen")
    p.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    p.add_argument("--figures", type=Path, help="write the confusion matrix PNG into this folder")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the 8 flips and rotations (default: as the run was configured)")
    p.set_defaults(func=cmd_evaluate)

    p = command("predict", "classify image files, or every galaxy of a file or folder into a catalogue",
                ["galaxy-class predict models/mobilenet_gz1 data/cutouts/*.jpeg",
                 "galaxy-class predict models/mobilenet_gz1.tflite --data my_cutouts/ --out catalogue.csv",
                 "galaxy-class predict models/mobilenet_gz1 --data galaxies.h5 --out catalogue.fits --one-view"])
    p.add_argument("run_dir", type=Path, help=RUN_HELP)
    p.add_argument("images", nargs="*", type=Path, help="image files; or --data and --out for a catalogue")
    p.add_argument("--data", type=Path, help="a catalogue of every galaxy of this HDF5 file or folder of images")
    p.add_argument("--out", type=Path, help="the catalogue to write: .csv, or .fits (needs astropy)")
    p.add_argument("--batch-size", type=_positive, default=256, help="galaxies classified at a time (catalogues)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished catalogue (the unfinished rows of the same catalogue are kept)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--one-view", dest="tta", action="store_false", default=None,
                   help="classify each image once instead of averaging the 8 flips and rotations the run was "
                        "calibrated and scored on: 8 times faster, probabilities less well calibrated")
    p.add_argument("--tta", dest="tta", action="store_true", default=None, help=argparse.SUPPRESS)
    p.add_argument("--crop-fraction", type=_crop_fraction, metavar="F",
                   help="keep the central F of each image's width (1.0: the whole image); default: the run's "
                        "cutout recipe (raw cutouts are cut as the training images were)")
    p.set_defaults(func=cmd_predict)

    p = command("export", "convert a trained run to TensorFlow Lite and compare it with the Keras model",
                ["galaxy-class export runs/mobilenet", "galaxy-class export runs/squeezenet --quantize float16"])
    p.add_argument("run_dir", type=Path, help="a run folder")
    p.add_argument("--format", choices=["tflite"], default="tflite", help="the file format")
    p.add_argument("--quantize", choices=["none", "float16", "int8"], default="int8",
                   help="none: float32; float16: half-size weights; int8: full-integer, calibrated on training images")
    p.add_argument("--out", type=Path, help="default: RUN_DIR/model_{quantize}.tflite (an earlier export of the "
                                            "same run is replaced, any other file is refused)")
    p.add_argument("--calibration-images", type=int, default=300, help="int8: training images to calibrate on")
    p.set_defaults(func=cmd_export)

    p = command("serve", "a local web page: upload a galaxy image, see its class and Grad-CAM",
                ["galaxy-class serve models/mobilenet_gz1", "galaxy-class serve runs/squeezenet --port 8080"])
    p.add_argument("run_dir", type=Path, help="a run folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.set_defaults(func=cmd_serve)

    from galaxy_class.cutout import RESAMPLING

    p = command("make-dataset", "a Galaxy10-schema HDF5 file from a folder of JPEG/PNG cutouts and a CSV of their labels",
                ["galaxy-class make-dataset my_cutouts/ --out my_galaxies.h5 --like data/gz1_sdss_sample.h5",
                 "galaxy-class make-dataset my_cutouts/ --labels labels.csv --out my.h5 --size 69 --raw-size 423 "
                 "--crop 207"])
    p.add_argument("folder", type=Path, help="the images; the CSV's file names are relative to it")
    p.add_argument("--labels", type=Path, metavar="CSV",
                   help="a header row with file, label (class name or number) and any other columns (ra, dec, "
                        "objid, ...), which become datasets of the file; default: FOLDER/labels.csv")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.h5", help="the new file (an existing one is refused)")
    p.add_argument("--like", type=Path, metavar="FILE.h5",
                   help="take class names, image size and cutout recipe from this Galaxy10-schema file, to merge with it")
    p.add_argument("--class-names", metavar="A,B,C", help="class names in label order (default: the CSV's names, sorted)")
    p.add_argument("--size", type=int, metavar="S", help="stored image size in pixels")
    p.add_argument("--raw-size", type=int, metavar="R", help="size of the raw cutouts in pixels")
    p.add_argument("--crop", type=int, metavar="C", help="keep the central C x C pixels of a raw cutout (default: R)")
    p.add_argument("--resample", choices=list(RESAMPLING), help="filter from C down to S pixels (default: box)")
    p.add_argument("--allow-outside-folder", action="store_true",
                   help="accept CSV rows naming files outside FOLDER (absolute paths, .., links that lead out)")
    p.set_defaults(func=cmd_make_dataset)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.nullcontext() if args.debug else native_logs_hidden():
        return _run(args)


def _run(args):
    try:
        args.func(args)
    except GalaxyClassError as e:
        return _error(e, args.debug)
    except KeyboardInterrupt:
        after = {"train": " (the unfinished run resumes when started again)",
                 "predict": " (an unfinished catalogue resumes when started again)",
                 "make-dataset": "; nothing was written"}  # make_dataset removes its unfinished file itself
        print(f"error: interrupted{after.get(args.command, '')}", file=sys.stderr)
        return 130
    except Exception as e:
        # A file's fault found while tf.data read it reaches here as TensorFlow's own error: report it as ours.
        from galaxy_class.batches import read_error

        if (error := read_error(e)) is None:
            raise
        return _error(error, args.debug)
    return 0


def _error(e, debug):
    if debug:
        traceback.print_exc()
    for line in str(e).splitlines() or [""]:  # a list of problems (bad CSV rows) prints as one error line each
        print(f"error: {line}", file=sys.stderr)
    return 2
