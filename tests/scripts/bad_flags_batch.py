"""Runs many launcher command lines in one process, for tests/test_bad_flags.py.

    python tests/scripts/bad_flags_batch.py cases.json results.json

cases.json is a list of {"id", "launcher", "argv", "no_bf16"}; results.json maps
each id to {"code", "stderr", "seconds"}. Each case goes through the launcher's
real entry point, `common.run(main)` (flag parsing, validation, the one-line
`error:` handler), with `absl.app.run` replaced by a direct call, so a process
pays the TensorFlow import once for every launcher. Re-parsing uses
`FLAGS.unparse_flags(); FLAGS(argv)`; between launchers their flags are deleted
and their modules forgotten, so the next launcher defines its own. The trainers
(launch/train.py, launch/train_imagenet.py) run their whole file as `__main__`
for each case, with `sys.argv` set: ml_collections reads the `--config.*`
overrides while it defines the flags, so each case defines them anew (and they
are deleted after it).

Expensive work is replaced by sentinels: a case that gets as far as building a
model, reading data, training, evaluating, loading a .keras file or writing
TFRecords ends with code "reached:<function>", i.e. its validation let it
through. The host gets 2 logical CPUs, so --strategy=mirrored has 2 replicas.
"""

import contextlib
import importlib
import io
import json
import os
import runpy
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from launch import common  # noqa: E402
from sat_tf import data, distribute, evaluation, models, training, zoo  # noqa: E402
from sat_tf.data import imagenet_input  # noqa: E402

FLAGS = flags.FLAGS


class Reached(BaseException):
    """Expensive work started (not an Exception: no launcher may catch it)."""


def _sentinel(name):
    def stop(*args, **kwargs):
        raise Reached(name)

    return stop


SENTINELS = [
    (models, "build_model"),
    (data, "load_split"),
    (imagenet_input, "load_imagenet"),
    (imagenet_input, "write_tfrecords"),
    (training, "fit"),
    (evaluation, "evaluate"),
    (keras.saving, "load_model"),
    (zoo, "load_tf1_checkpoint"),
]
for owner, name in SENTINELS:
    setattr(owner, name, _sentinel(name))
ARGV = []  # the running case's command line
app.run = lambda main, argv=None, flags_parser=None: main(flags_parser(ARGV))
TRAINERS = ("train", "train_imagenet")  # run as __main__, case by case


def run_trainer(path):
    """The trainer file as `python <path>` runs it; then its flags are forgotten (the next case defines its own)."""
    baseline, saved_argv = set(FLAGS), sys.argv
    sys.argv = list(ARGV)  # ml_collections reads the --config.* overrides from sys.argv
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved_argv
        for name in set(FLAGS) - baseline:
            delattr(FLAGS, name)


def run_case(module, case):
    ARGV[:] = [os.path.join(ROOT, "launch", f"{case['launcher']}.py"), *case["argv"]]
    FLAGS.unparse_flags()
    stderr, stdout = io.StringIO(), io.StringIO()
    saved_bf16 = distribute.cpu_has_bf16
    if case.get("no_bf16"):
        distribute.cpu_has_bf16 = lambda *args: False
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            if module is None:
                run_trainer(ARGV[0])
            else:
                common.run(module.main)
    except SystemExit as exit_:
        code = exit_.code
    except Reached as reached:
        code = f"reached:{reached}"
    except Exception:  # noqa: BLE001  an uncaught error is what the test reports
        code = "uncaught"
        stderr.write(traceback.format_exc())
    else:
        code = 0
    finally:
        distribute.cpu_has_bf16 = saved_bf16
    return {"code": code, "stderr": stderr.getvalue(), "seconds": round(time.perf_counter() - start, 3)}


def main():
    cases_path, results_path = sys.argv[1:3]
    with open(cases_path) as f:
        cases = json.load(f)
    results = {}
    for launcher in dict.fromkeys(case["launcher"] for case in cases):
        start = time.perf_counter()
        module = None if launcher in TRAINERS else importlib.import_module(f"launch.{launcher}")
        import_seconds = time.perf_counter() - start
        for case in (c for c in cases if c["launcher"] == launcher):
            results[case["id"]] = run_case(module, case)
        results[f"{launcher}:import"] = {"seconds": round(import_seconds, 3)}
        if module is None:
            continue
        for module_name in (f"launch.{launcher}",):
            defined = FLAGS.flags_by_module_dict().get(module_name, [])
            for flag in list(defined):
                if flag.name in FLAGS:
                    delattr(FLAGS, flag.name)
            sys.modules.pop(module_name, None)
            package, _, name = module_name.rpartition(".")
            if hasattr(sys.modules[package], name):  # `from launch import x` would find the old module
                delattr(sys.modules[package], name)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
