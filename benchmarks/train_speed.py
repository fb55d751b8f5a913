"""Training speed in float32 against mixed precision, per model, side by side in one run.

Mixed precision is mixed_float16 on a CUDA GPU, mixed_bfloat16 on a CPU. Each model trains with all layers
(as in fine-tuning) on the same images, batches served from memory so the input never waits, for the same
epochs after one warm-up epoch each.

    python benchmarks/train_speed.py [--data ../shared/data/gz1_sdss_dev.h5] [--images 2048] [--epochs 2]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from galaxy_class.batches import make_dataset, open_images  # noqa: E402
from galaxy_class.config import Config  # noqa: E402
from galaxy_class.data import open_galaxy10  # noqa: E402
from galaxy_class.models import ARCHITECTURES, build_model  # noqa: E402


def images_per_second(arch, g, dataset, n_images, image_size, policy, epochs):
    keras.utils.set_random_seed(0)
    model = build_model(arch, len(g.class_names), g.image_shape, image_size=image_size, weights="none",
                        dtype_policy=policy)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)  # warm-up: graph tracing
    start = time.perf_counter()
    model.fit(dataset, epochs=epochs, verbose=0, shuffle=False)
    return n_images * epochs / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                       "gz1_sdss_dev.h5"))
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=Config().image_size)
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    args = parser.parse_args()

    g = open_galaxy10(args.data)
    indices = np.arange(min(args.images, g.n))
    k = len(g.class_names)
    gpus = tf.config.list_physical_devices("GPU")
    mixed = "mixed_float16" if gpus else "mixed_bfloat16"
    device = f"{len(gpus)} GPU(s)" if gpus else f"CPU, {os.cpu_count()} cores"
    dataset = make_dataset(g, indices, args.batch_size, shuffle=True, augment=True,
                           source=open_images(g, indices, "ram"))
    dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, k))).cache()  # the input never what training waits for
    print(f"{g.path}: {len(indices)} images, batch {args.batch_size}, model input resized to {args.image_size} px, "
          f"{args.epochs} timed epochs after one warm-up; {device}")
    print(f"| model | float32 (images/s) | {mixed} (images/s) | speed-up |")
    print("|---|---:|---:|---:|")
    for arch in args.models:
        rates = [images_per_second(arch, g, dataset, len(indices), args.image_size, policy, args.epochs)
                 for policy in ("float32", mixed)]
        print(f"| {arch} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[1] / rates[0]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
