"""Fused (XLA) against plain-op activation and batch-norm kernels, per activation, interleaved in one run.

Times one input-gradient step (an attack's inner step: `training=False`, the gradient of the summed
cross-entropy with respect to the images), or with --train the weight gradient in training mode. Each
activation is built twice: with `sat_tf.activations.fused` on (the default) and traced inside
`fused.disabled()` (what `launch/evaluate.py --nofused_kernels` does). The cases run in turn, --reps rounds.

    python benchmarks/fused_kernels.py                                   # the Fashion-MNIST study's network
    python benchmarks/fused_kernels.py --arch=resnet18_cifar --shape=32,32,3 --batch=128 --reps=6
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mnist_resnet_fast", help="a registered model")
    parser.add_argument("--shape", default="28,28,1", help="image height,width,channels")
    parser.add_argument("--batch", type=int, default=1000, help="images per step (the study evaluates 1 000 at once)")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra-op threads (the study's runs: 1)")
    parser.add_argument("--activations", default="relu,smooth_relu,silu,gelu", help="comma-separated")
    parser.add_argument("--reps", type=int, default=8, help="timed rounds after one warm-up call per case")
    parser.add_argument("--train", action="store_true", help="weight gradient in training mode instead")
    return parser.parse_args(argv)


def step_function(args, activation, plain):
    import tensorflow as tf

    from sat_tf import models
    from sat_tf.activations import fused

    shape = tuple(int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(args.batch, *shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, size=args.batch).astype(np.int32))
    model = models.build_model(args.arch, activation=activation, num_classes=10, input_shape=shape)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=args.train)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return tape.gradient(loss, model.trainable_variables if args.train else x)[0]

    if plain:
        with fused.disabled():  # traced (first call) with the plain ops
            step(x)
    else:
        step(x)
    return lambda: step(x).numpy()


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    except RuntimeError:  # TensorFlow already running in this process (a test): its setting stays
        print(f"--threads={args.threads} not applied: TensorFlow was already initialized in this process")
    cases = {}
    for activation in args.activations.split(","):
        cases[(activation, "fused")] = step_function(args, activation, plain=False)
        cases[(activation, "plain")] = step_function(args, activation, plain=True)
    times = {case: [] for case in cases}
    for _ in range(args.reps):
        for case, run in cases.items():
            start = time.perf_counter()
            run()
            times[case].append(time.perf_counter() - start)
    mode = "weight gradient, training mode" if args.train else "input gradient, inference mode"
    print(f"{args.arch} {args.shape} batch {args.batch}, {mode}, {args.threads} thread(s), {args.reps} rounds")
    print("\n| activation | fused (ms, median) | plain (ms, median) | plain / fused |\n|---|---|---|---|")
    for activation in args.activations.split(","):
        fused_ms, plain_ms = (1000 * np.median(times[(activation, k)]) for k in ("fused", "plain"))
        print(f"| {activation} | {fused_ms:.1f} | {plain_ms:.1f} | {plain_ms / fused_ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
