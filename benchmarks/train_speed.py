"""Training speed: our streaming tf.data pipeline against the old notebooks' whole-array `model.fit`.

Both feed the same model (all layers training, as in fine-tuning) the same images for the same number
of epochs, after one warm-up epoch each; printed side by side in one run.

    python benchmarks/train_speed.py [--data ../shared/data/gz1_sdss_dev.h5] [--images 2048] [--epochs 2]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from galaxy_class.config import Config  # noqa: E402
from galaxy_class.data import make_dataset, open_galaxy10  # noqa: E402
from galaxy_class.models import build_model  # noqa: E402


def fresh_model(arch, g, image_size):
    keras.utils.set_random_seed(0)
    model = build_model(arch, len(g.class_names), g.image_shape, image_size=image_size, weights="none")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def images_per_second(fit, n_images, epochs):
    fit(1)  # warm-up: graph tracing, first file reads
    start = time.perf_counter()
    fit(epochs)
    return n_images * epochs / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                       "gz1_sdss_dev.h5"))
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=Config().image_size)
    args = parser.parse_args()

    g = open_galaxy10(args.data)
    indices = np.arange(min(args.images, g.n))
    k = len(g.class_names)
    print(f"{g.path}: {len(indices)} images, batch {args.batch_size}, model input resized to {args.image_size} px, "
          f"{args.epochs} timed epochs after one warm-up; {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads")
    print(f"| model | streaming tf.data, augmented (images/s) | whole array in RAM as float64, model.fit (images/s) | ratio |")
    print("|---|---|---|---|")
    for arch in ["mobilenet", "squeezenet"]:
        model = fresh_model(arch, g, args.image_size)
        ds = make_dataset(g, indices, args.batch_size, shuffle=True, augment=True)
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, k)))
        ours = images_per_second(lambda e: model.fit(ds, epochs=e, verbose=0, shuffle=False), len(indices), args.epochs)

        # The old notebooks: every image read at once and converted to float64, then fit on numpy arrays.
        with h5py.File(g.path, "r") as f:
            x = f["images"][: len(indices)].astype(np.float64)
        y = np.eye(k)[g.labels[: len(indices)]]
        model = fresh_model(arch, g, args.image_size)
        old = images_per_second(lambda e: model.fit(x, y, batch_size=args.batch_size, epochs=e, verbose=0),
                                len(indices), args.epochs)
        print(f"| {arch} | {ours:.0f} | {old:.0f} | {ours / old:.2f}x |")


if __name__ == "__main__":
    main()
