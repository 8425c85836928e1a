r"""Steady-state time of a clean vs a PGD-K adversarial training step, side by side.

For every (activation, XLA, K) it builds the model once, runs `warmup` train
steps (tracing included; the first call's time is reported as trace time),
then times `steps` single-step calls of `train_lib.make_train_function` and
reports the median (and min-max), the ratio to the clean step of the same
activation and XLA setting, and the bound (2K + 3) / 3: a clean step is one
forward plus one backward through inputs and weights (~3 forward-equivalents),
each attack step one forward plus an input gradient (~2).

    python benchmarks/step_time.py                         # ResNet-18 CIFAR, batch 128
    python benchmarks/step_time.py --ks=0,1,3,7,10 --activations=relu,silu,softplus --jit=false,true
    python benchmarks/step_time.py --quick                 # seconds: digits CNN, smoke test

Data are random tensors already on the device, so the numbers are compute
only (see benchmarks/imagenet_input_throughput.py for the input pipeline).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sat_tf import attacks, models, train_lib  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import certify_throughput  # noqa: E402  (shared machine description)


def make_train(model_name, activation, batch, image_shape, num_classes, k, jit):
    keras.utils.set_random_seed(0)
    model = models.build_model(model_name, num_classes=num_classes, input_shape=list(image_shape),
                               activation=activation)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
    attack = (attacks.get_attack("none") if k == 0 else
              attacks.get_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=k, random_start=True))
    strategy = tf.distribute.get_strategy()
    config = train_lib.StepConfig(global_batch_size=batch, num_classes=num_classes, weight_decay=5e-4,
                                  jit_compile=jit, seed=0)
    train = train_lib.make_train_function(model, optimizer, attack, strategy, config)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch, *image_shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, num_classes, batch).astype(np.int32))
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)).repeat()))
    return train, iterator


def time_steps(train, iterator, warmup, steps):
    one = tf.constant(1)
    start = time.perf_counter()
    float(train(iterator, one)["loss_sum"])  # first call: tracing + one step
    trace = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        float(train(iterator, one)["loss_sum"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(train(iterator, one)["loss_sum"])  # host sync: the step really finished
        times.append(time.perf_counter() - start)
    return trace, times


def machine():
    cpu, cores = certify_throughput.machine()
    return f"{cpu}, {cores} cores, TensorFlow {tf.__version__}, Keras {keras.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--image_shape", default="32,32,3")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ks", default="0,1,3,7")
    parser.add_argument("--activations", default="relu,silu")
    parser.add_argument("--jit", default="false")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="digits CNN, batch 16, K 0/1, 2 steps")
    parser.add_argument("--output", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.image_shape, args.batch, args.ks = "digits_cnn", "8,8,1", 16, "0,1"
        args.activations, args.warmup, args.steps = "silu", 1, 2
    ks = [int(k) for k in args.ks.split(",")]
    if 0 not in ks:
        parser.error("--ks must include 0 (the clean step every ratio refers to)")
    image_shape = tuple(int(d) for d in args.image_shape.split(","))
    rows = []
    for activation in args.activations.split(","):
        for jit in [j.strip().lower() == "true" for j in args.jit.split(",")]:
            clean = None
            for k in sorted(ks):
                train, iterator = make_train(args.model, activation, args.batch, image_shape,
                                             args.num_classes, k, jit)
                trace, times = time_steps(train, iterator, args.warmup, args.steps)
                median = statistics.median(times)
                clean = median if k == 0 else clean
                rows.append((activation, jit, k, median, min(times), max(times), trace, median / clean,
                             (2 * k + 3) / 3))
                print(f"  {activation} jit={jit} K={k}: {median:.3f} s/step", flush=True, file=sys.stderr)
    lines = [
        f"{args.model}, batch {args.batch}, {args.image_shape}; {machine()}; median of {args.steps} steps "
        f"after {args.warmup} warm-up",
        "",
        "| activation | XLA | K | s/step (median) | min–max | first call (s) | × clean | bound (2K+3)/3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for activation, jit, k, median, lo, hi, trace, ratio, bound in rows:
        lines.append(f"| {activation} | {'on' if jit else 'off'} | {k} | {median:.3f} | {lo:.3f}–{hi:.3f} | "
                     f"{trace:.1f} | {ratio:.2f} | {bound:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return rows


if __name__ == "__main__":
    main()
