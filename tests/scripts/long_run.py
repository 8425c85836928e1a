"""A long, tiny adversarial training run that samples memory at every epoch end.

Run in its own process (so other tests' memory does not blur the numbers) by
tests/test_long_run.py. Trains the digits CNN with PGD-2 for `--epochs` x
`--steps` steps (batch 32, a checkpoint every `--checkpoint_every` steps, 3
kept), then calls `sat_tf.evaluation.evaluate` `--eval_calls` times. Prints one
JSON object on the last line of stdout:

    {"epochs": [{"epoch", "rss_kb", "hwm_kb", "gc_objects", "checkpoint_files",
                 "checkpoints_kept", "tensorboard_files", "train_traces",
                 "train_loss"}, ...],
     "eval": [{"call", "rss_kb", "gc_objects", "attack_traces"}, ...],
     "seconds", "train_cpu_seconds", "eval_cpu_seconds"}

`rss_kb`/`hwm_kb` are VmRSS/VmHWM of /proc/self/status; `gc_objects` is
`len(gc.get_objects())` after `gc.collect()`; `attack_traces` counts how many
times the attack's Python body ran during that evaluate call (once per trace
of evaluate's step function: eager code never runs it).
"""

import argparse
import gc
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from sat_tf import attacks, data, evaluation, models, training  # noqa: E402

BATCH = 32


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def gc_objects():
    gc.collect()
    return len(gc.get_objects())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--checkpoint_every", type=int, default=10)
    parser.add_argument("--max_checkpoints", type=int, default=3)
    parser.add_argument("--eval_calls", type=int, default=10)
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    start = time.perf_counter()

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    model = models.build_model("digits_cnn", filters=(8, 8, 16))
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)
    attack = attacks.get_attack("pgd", eps=0.1, step_size=0.05, steps=2)
    config = training.StepConfig(global_batch_size=BATCH, num_classes=10, label_smoothing=0.1)

    def dataset_fn(epoch, ctx):
        return data.load_split(
            "digits",
            "train",
            batch_size=BATCH,
            shuffle=True,
            repeat=True,
            seed=epoch,
            drop_remainder=True,
            augment=True,
            input_context=ctx,
        )

    workdir = args.workdir or tempfile.mkdtemp(prefix="long_run_")
    samples = []

    def epoch_end_fn(epoch):
        sample = {
            "epoch": epoch + 1,
            "rss_kb": status_kb("VmRSS"),
            "hwm_kb": status_kb("VmHWM"),
            "gc_objects": gc_objects(),
            "checkpoint_files": len(os.listdir(os.path.join(workdir, "checkpoints"))),
            "checkpoints_kept": len(
                tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints")).all_model_checkpoint_paths
            ),
            "tensorboard_files": len(os.listdir(os.path.join(workdir, "tensorboard"))),
        }
        samples.append(sample)
        return {}  # nothing extra in the history/TensorBoard: only the run itself is measured

    history = training.fit(
        model,
        optimizer,
        attack,
        strategy,
        dataset_fn,
        config=config,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        workdir=workdir,
        checkpoint_every_steps=args.checkpoint_every,
        max_checkpoints=args.max_checkpoints,
        verbose=False,
        epoch_end_fn=epoch_end_fn,
    )
    for sample, record in zip(samples, history):
        sample["train_traces"] = record["train_traces"]
        sample["train_loss"] = record["train_loss"]

    train_cpu = time.process_time()
    traces = [0]

    def counting_attack(logits_fn, x, y, seed=None):
        traces[0] += 1  # Python side: runs once per trace, never per batch
        return attack(logits_fn, x, y, seed=seed)

    def eval_dataset_fn(ctx):
        # Two full batches: a smaller last batch would be a second input shape, so a
        # second trace of evaluate's step function in every call (see evaluation.py).
        return data.load_split("digits", "test", batch_size=64, input_context=ctx, limit=128)

    evals = []
    for call in range(args.eval_calls):
        before = traces[0]
        results = evaluation.evaluate(
            lambda z: model(z, training=False), strategy, eval_dataset_fn, {"pgd2": counting_attack}
        )
        assert results["pgd2"]["count"] == 128, results
        evals.append(
            {
                "call": call + 1,
                "rss_kb": status_kb("VmRSS"),
                "gc_objects": gc_objects(),
                "attack_traces": traces[0] - before,
            }
        )
    out = {
        "epochs": samples,
        "eval": evals,
        "seconds": time.perf_counter() - start,
        "train_cpu_seconds": train_cpu,
        "eval_cpu_seconds": time.process_time() - train_cpu,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
