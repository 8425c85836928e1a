"""Distribution strategies by name, with TPU checks that fail fast.

`make_strategy("tpu", tpu="grpc://10.0.0.2:8470")` probes the address before
TensorFlow connects, because `experimental_connect_to_cluster` on an unreachable
`grpc://` address hangs forever. Every failure is a `StrategyError` with one
line that names the argument and the fix.
"""

import importlib.util
import json
import os
import socket
import urllib.parse

import tensorflow as tf


class StrategyError(ValueError):
    """A strategy cannot be created here; the message names the fix."""


def _default(**_):
    return tf.distribute.get_strategy()


def _one_device(**_):
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def _mirrored(**_):
    # On a CPU-only host with several logical CPUs (tests) mirror across them.
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=cpus)


def _multi_worker(**_):
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError(
            "strategy='multi_worker' needs the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host0:port", "host1:port"]}, '
            '"task": {"type": "worker", "index": 0}})'
        )
    try:
        cluster = json.loads(raw)["cluster"]
    except (ValueError, KeyError) as err:
        raise StrategyError(f"TF_CONFIG is not valid cluster JSON ({err}): {raw!r}") from None
    del cluster
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _probe_grpc(address, timeout=5.0):
    parsed = urllib.parse.urlparse(address)
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise StrategyError(f"tpu={address!r} is not of the form grpc://HOST:PORT (e.g. grpc://10.2.3.4:8470)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise StrategyError(
            f"tpu={address!r}: nothing answers at {host}:{port} ({err.strerror or err}); "
            "check the TPU's address and that this host can reach it"
        ) from None


def _tpu(tpu=None, **_):
    if not tpu:
        raise StrategyError(
            "strategy='tpu' needs tpu=NAME|local|grpc://HOST:PORT "
            "(use strategy=default|mirrored|multi_worker without a TPU)"
        )
    if tpu.startswith("grpc://"):
        _probe_grpc(tpu)
    elif tpu != "local" and importlib.util.find_spec("googleapiclient") is None:
        raise StrategyError(
            f"tpu={tpu!r}: resolving a Cloud TPU by name needs Google's API client "
            "(pip install google-api-python-client); or use tpu='local' on a TPU VM "
            "or tpu='grpc://HOST:8470'. Do not install cloud-tpu-client: it breaks TF 2.21"
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, IndexError, tf.errors.OpError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StrategyError(
            f"tpu={tpu!r}: no TPU could be initialised ({type(err).__name__}: {first_line}); "
            "run on a TPU VM/pod or choose strategy=default|mirrored"
        ) from None


STRATEGIES = {
    "default": _default,
    "one_device": _one_device,
    "mirrored": _mirrored,
    "multi_worker": _multi_worker,
    "tpu": _tpu,
}


def make_strategy(name="default", *, tpu=None):
    """Returns a `tf.distribute.Strategy` by name (see `STRATEGIES`).

    Args:
        name: one of "default", "one_device", "mirrored", "multi_worker"
            (reads TF_CONFIG), "tpu".
        tpu: for "tpu": a Cloud TPU name, "local" (TPU VM) or "grpc://host:port".
    """
    if tpu and name == "default":
        name = "tpu"
    if name not in STRATEGIES:
        raise StrategyError(f"strategy={name!r} is unknown; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](tpu=tpu)


def is_chief(strategy):
    """True on the one process that should print, write reports and export."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in ("chief", None):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def num_workers(strategy):
    """Processes taking part in the strategy's collectives (1 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, ())) for job in ("chief", "worker"))


def jit_default(strategy):
    """Whether to XLA-compile the attack + gradient function by default.

    XLA pays off on TPU (required) and usually on GPU; on CPU it measured
    ~1.1-1.8x slower (BENCHMARKS.md, the xla group), so it is off there.
    """
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    return bool(tf.config.list_logical_devices("GPU"))


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where mixed_bfloat16 pays off.

    Measured on an AMD EPYC with avx512_bf16: a ResNet-18 CIFAR step 1.5x faster than float32
    (BENCHMARKS.md, "Step time: bf16"); without these instructions bf16 is emulated and slower.
    """
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)
