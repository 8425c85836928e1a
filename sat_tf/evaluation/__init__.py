"""Clean and adversarial top-1/top-k accuracy under any distribution strategy.

`evaluate(logits_fn, strategy, dataset_fn, attacks)` streams a data set: every
attack on every batch inside `strategy.run`, each replica attacking its shard
through `logits_fn` (e.g. `lambda x: model(x, training=False)`: BatchNorm in
inference mode), and returns `{name: {"top1": .., "top5": .., "count": ..}}`.
The second accuracy is named after the k actually used, `topk_name(k)` with
k = min(top_k, classes): "top5", but "top4" for a 4-class model
(`topk_key(row)` finds it). Attack seeds depend only on (seed, attack index,
batch index, replica), so a rerun gives the same numbers. `evaluate_points`
evaluates images held in memory one by one: AutoAttack, the per-image worst
case, resumable from a state file.
"""

import base64
import dataclasses
import hashlib
import inspect
import json
import time

import numpy as np
import tensorflow as tf

from sat_tf import files
from sat_tf.evaluation.report import topk_key, topk_name  # noqa: F401  (public here too)
from sat_tf.seeds import make_seed


def _identity_attack(logits_fn, x, y, seed=None):
    del logits_fn, y, seed
    return x


def evaluate(logits_fn, strategy, dataset_fn, attacks, *, top_k=5, seed=1234, progress=None):
    """Top-1 / top-k accuracy of a classifier on clean and attacked inputs.

    Args:
        logits_fn: callable `[b, H, W, C] float32 in [0, 1] -> [b, N]` logits,
            as every attack takes it (a model in inference mode, a reloaded
            SavedModel endpoint, ...), created under `strategy`'s scope when it
            holds variables.
        strategy: a `tf.distribute.Strategy`.
        dataset_fn: `fn(input_context) -> tf.data.Dataset` of per-replica
            (images, labels) batches, one pass over the evaluation set.
        attacks: dict name -> `attack(logits_fn, x, y, seed=...)`, or None for
            the clean row. Use `{"clean": None, "pgd10": ...}`.
        top_k: the k of the second accuracy column, clipped to the class
            count; the column is named after the k used (`topk_name`).
        seed: evaluation seed.
        progress: optional `fn(name, batches_done)` called after each batch.
    """
    results = {}
    used_k = [int(top_k)]  # set while tracing: min(top_k, classes)
    for index, (name, attack) in enumerate(attacks.items()):
        attack = attack or _identity_attack

        def replica_fn(x, y, batch, attack=attack, index=index):
            y = tf.cast(y, tf.int32)
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed_ = make_seed(seed + 7919 * index, batch, replica)
            x_adv = attack(logits_fn, tf.cast(x, tf.float32), y, seed=seed_)
            logits = tf.cast(logits_fn(x_adv), tf.float32)
            k = min(top_k, logits.shape[-1])
            used_k[0] = int(k)
            top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
            topk = tf.cast(tf.math.in_top_k(y, logits, k), tf.float32)
            count = tf.cast(tf.shape(y)[0], tf.float32)
            return tf.reduce_sum(top1), tf.reduce_sum(topk), count

        @tf.function
        def step(x, y, batch, replica_fn=replica_fn):
            values = strategy.run(replica_fn, args=(x, y, batch))
            return [strategy.reduce("SUM", v, axis=None) for v in values]

        totals = [0.0, 0.0, 0.0]
        dataset = strategy.distribute_datasets_from_function(dataset_fn)
        for batch, (x, y) in enumerate(dataset):
            values = step(x, y, tf.constant(batch))
            totals = [t + float(v) for t, v in zip(totals, values)]
            if progress is not None:
                progress(name, batch + 1)
        count = max(totals[2], 1.0)
        results[name] = {"top1": totals[0] / count}
        if used_k[0] != 1:
            results[name][topk_name(used_k[0])] = totals[1] / count
        results[name]["count"] = int(totals[2])
    return results


# === Per-point evaluation: independent rows, AutoAttack, worst case ========
#
# `evaluate_points` keeps one flag per point and row, so it can report the
# per-image worst case over every attack of a protocol, shard points over the
# replicas of any strategy, and resume an interrupted evaluation from a state
# file. Every random draw is keyed by (seed, point id), so a point's result is
# the same on one device, on N replicas and across a resume.


WORST_CASE = "worst case"
STATE_VERSION = 2  # 2: per-point top-k flags under "topk" (were "top5"), the k used in extra["top_k"]


class EvaluationStateError(ValueError):
    """A state file that does not belong to this evaluation; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class AttackRow:
    """A report row in which every point is attacked on its own (or not at all).

    Attributes:
        name: the row name ("clean", "pgd20", ...).
        attack: `attack(logits_fn, x, y, *, seed, [point_ids])` or None for
            the clean row.
        norm: the norm the perturbation size is reported in.
    """

    name: str
    attack: object = None
    norm: str = "linf"


def evaluate_points(
    logits_fn,
    x,
    y,
    rows,
    *,
    strategy=None,
    batch_size=256,
    seed=0,
    top_k=5,
    state_path=None,
    identity=None,
    jit_compile=False,
    progress=None,
    worst_case=True,
):
    """Clean and adversarial accuracy per point, AutoAttack, and the worst case.

    Args:
        logits_fn: callable `[b, H, W, C] float32 in [0, 1] -> [b, N]` logits
            (a model in inference mode, a reloaded SavedModel endpoint, ...),
            created under `strategy`'s scope when it holds variables.
        x: float32 images `[P, H, W, C]` in [0, 1] (NumPy, held on the host).
        y: integer labels `[P]`.
        rows: `AttackRow`s and at most one cascade (e.g.
            `sat_tf.attacks.AutoAttackRows`): attacks run in order, each on
            the points still robust, reported after each one; in report order.
        strategy: a `tf.distribute.Strategy` (default: the current one). Each
            chunk of points is split over its replicas.
        batch_size: points per chunk (rounded up to a multiple of the
            replicas); the last chunk is padded and its padding masked.
        seed: evaluation seed (an int). Row i's attack gets `[seed, i]`;
            AutoAttack's attacks all get `[seed, index of its rows]`.
        top_k: the k of the second accuracy column, clipped to the class
            count; the column is named after the k used (`topk_name`).
        state_path: optional JSON file (any `tf.io.gfile` path). Per-point
            results are written to it after every chunk (atomically); a rerun
            with the same arguments continues where it stopped and ends with
            the result of an uninterrupted run.
        identity: optional JSON-able description of the model and data,
            stored in the state; a state written for another identity is
            refused.
        jit_compile: compile each replica's attack with XLA.
        progress: optional `fn(row, done, total, seconds)` called after each
            chunk: `done` of the `total` points this row attacks (for
            AutoAttack's rows, the points still robust when it started), and
            the seconds spent on the row so far.
        worst_case: add the `WORST_CASE` row. Off when the rows are not
            attacks of one threat model (e.g. Gaussian noise for a smoothed
            classifier's base model).

    Returns:
        `{"rows": {name: {"top1", "top5", "count", "max_norm", "nan",
        "seconds"}}, "warnings": [...], "flags": {name: bool [P]}}` where
        "top5" is `topk_name(k)` for the k used ("top4" with 4 classes; no
        such column when k is 1), AutoAttack's rows have it None, the last row is `WORST_CASE` (a
        point counts only if it survives every row) unless `worst_case` is
        False, and `flags` are the
        per-point results (top-1 correct, or still robust for AutoAttack).
    """
    strategy = strategy or tf.distribute.get_strategy()
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    if x.ndim < 2 or y.shape != (x.shape[0],):
        raise ValueError(f"Expected images [P, ...] and labels [P]. Received: x {x.shape}, y {y.shape}")
    if sum(_is_cascade(row) for row in rows) > 1:
        raise ValueError("At most one cascade (AutoAttackRows) per evaluation.")
    names = _row_names(rows)
    state = _State(state_path, _fingerprint(rows, x, y, seed, top_k, identity), len(y))
    state.extra.setdefault("top_k", int(top_k))
    engine = _Engine(logits_fn, strategy, x, y, batch_size=batch_size, jit_compile=jit_compile)
    for index, row in enumerate(rows):
        if _is_cascade(row):
            _run_cascade(engine, state, row, index, seed, top_k, progress)
        else:
            _run_row(engine, state, row, index, seed, top_k, progress)
    return _summary(state, rows, names, worst_case)


def _is_cascade(row):
    return not isinstance(row, AttackRow) and hasattr(row, "stages")


def _stage_names(row):
    return [f"{row.name}/{name}" for name, _ in row.stages()]


def _row_names(rows):
    names = []
    for row in rows:
        if _is_cascade(row):
            names += [*_stage_names(row), row.name]
        elif isinstance(row, AttackRow):
            names.append(row.name)
        else:
            raise TypeError(f"rows must be AttackRow or a cascade such as AutoAttackRows. Received: {row!r}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or WORST_CASE in names:
        raise ValueError(f"Row names must be unique and not {WORST_CASE!r}. Received: {names}")
    if any(_is_cascade(row) for row in rows) and "clean" not in names:
        names.insert(0, "clean")  # a cascade starts from the clean predictions and reports them
    return names


def _fingerprint(rows, x, y, seed, top_k, identity):
    described = []
    for row in rows:
        if _is_cascade(row):
            described.append(row.describe())
        else:
            attack = row.attack
            keywords = getattr(attack, "keywords", {})
            func = getattr(attack, "func", attack)
            described.append(
                [
                    row.name,
                    getattr(func, "__name__", repr(func)) if attack else None,
                    {k: repr(v) for k, v in sorted(keywords.items())},
                ]
            )
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return {
        "rows": described,
        "points": int(len(y)),
        "data_sha256": digest.hexdigest(),
        "seed": int(seed),
        "top_k": int(top_k),
        "identity": identity,
    }


def _pack(flags):
    return base64.b64encode(np.packbits(np.asarray(flags, bool)).tobytes()).decode("ascii")


def _unpack(text, count):
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:count]
    return bits.astype(bool)


class _State:
    """Per-point results of every row, kept in memory and mirrored to a JSON file."""

    def __init__(self, path, fingerprint, count):
        self.path, self.count = path, count
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.rows, self.extra = {}, {}
        if path and tf.io.gfile.exists(path):
            self._load()

    def _load(self):
        try:
            with tf.io.gfile.GFile(self.path, "r") as f:
                saved = json.load(f)
        except (ValueError, tf.errors.OpError) as err:
            raise EvaluationStateError(
                f"{self.path} is not a readable evaluation state ({err}); delete it to start over"
            ) from None
        if saved.get("version") != STATE_VERSION or saved.get("fingerprint") != self.fingerprint:
            raise EvaluationStateError(
                f"{self.path} was written by a different evaluation (other model, data, rows or seed); "
                "delete it, or pass another output directory, to start over"
            )
        for name, row in saved["rows"].items():
            self.rows[name] = {
                key: _unpack(value, self.count) if key in ("done", "top1", "topk") else value
                for key, value in row.items()
            }
        self.extra = saved.get("extra", {})

    def row(self, name):
        if name not in self.rows:
            self.rows[name] = {
                "done": np.zeros(self.count, bool),
                "top1": np.zeros(self.count, bool),
                "topk": np.zeros(self.count, bool),
                "max_norm": 0.0,
                "nan": 0,
                "seconds": 0.0,
                "finished": False,
            }
        return self.rows[name]

    def save(self):
        if not self.path:
            return
        rows = {
            name: {key: _pack(value) if key in ("done", "top1", "topk") else value for key, value in row.items()}
            for name, row in self.rows.items()
        }
        text = json.dumps(
            {"version": STATE_VERSION, "fingerprint": self.fingerprint, "rows": rows, "extra": self.extra}
        )
        files.write_text(self.path, text)


class _Engine:
    """Runs a replica function over chunks of point ids under a strategy."""

    def __init__(self, logits_fn, strategy, x, y, *, batch_size, jit_compile):
        self.logits_fn, self.strategy, self.x, self.y = logits_fn, strategy, x, y
        self.replicas = strategy.num_replicas_in_sync
        self.per_replica = max(1, -(-int(batch_size) // self.replicas))
        self.chunk = self.per_replica * self.replicas
        self.jit_compile = jit_compile
        self.chief = _is_chief(strategy)

    def step_fn(self, replica_fn):
        """A tf.function running `replica_fn(x, y, ids, valid)` per replica and
        gathering its per-point outputs (a tuple of `[b]` tensors) to every host."""
        compiled = tf.function(replica_fn, jit_compile=True) if self.jit_compile else replica_fn
        was_bool = []

        def as_numbers(*args):
            # Collectives do not take bool: such outputs travel as int32.
            outputs = compiled(*args)
            was_bool[:] = [v.dtype == tf.bool for v in outputs]
            return tuple(tf.cast(v, tf.int32) if b else v for v, b in zip(outputs, was_bool))

        @tf.function
        def step(x, y, ids, valid):
            outputs = self.strategy.run(as_numbers, args=(x, y, ids, valid))
            gathered = [self.strategy.gather(v, axis=0) for v in outputs]
            return tuple(tf.cast(v, tf.bool) if b else v for v, b in zip(gathered, was_bool))

        return step

    def run(self, step, ids):
        """Outputs of `step` for the points `ids` (host NumPy, padding dropped)."""
        count = len(ids)
        size = self.padded_size(count)
        padded = np.concatenate([ids, np.full(size - count, ids[-1], ids.dtype)])
        valid = np.arange(size) < count
        b = size // self.replicas

        def value(ctx, array):
            r = ctx.replica_id_in_sync_group
            return tf.constant(array[r * b : (r + 1) * b])

        args = [
            self.strategy.experimental_distribute_values_from_function(lambda ctx, a=a: value(ctx, a))
            for a in (self.x[padded], self.y[padded], padded.astype(np.int32), valid)
        ]
        outputs = step(*args)
        return tuple(np.asarray(v)[:count] for v in outputs)

    def padded_size(self, count):
        """Full chunks run as they are; a last, partial chunk is padded to the
        smallest of chunk/2, chunk/4, ... (per replica) that holds it, so the
        tail costs at most twice its points and each stage traces at most a
        few shapes (fixed shapes for TPUs)."""
        size = self.chunk
        while size % (2 * self.replicas) == 0 and size // 2 >= count:
            size //= 2
        return size

    def chunks(self, ids):
        for start in range(0, len(ids), self.chunk):
            yield ids[start : start + self.chunk]


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def _perturbation(x_adv, x, norm):
    delta = tf.reshape(x_adv - x, [tf.shape(x)[0], -1])
    finite = tf.where(tf.math.is_finite(delta), delta, tf.zeros_like(delta))
    if norm == "l2":
        size = tf.norm(finite, axis=-1)
    elif norm == "l1":
        size = tf.reduce_sum(tf.abs(finite), -1)
    else:
        size = tf.reduce_max(tf.abs(finite), -1)
    nans = tf.reduce_sum(tf.cast(tf.math.is_nan(tf.reshape(x_adv, [tf.shape(x)[0], -1])), tf.int32), -1)
    return size, nans


def _takes_point_ids(attack):
    try:
        return "point_ids" in inspect.signature(attack).parameters
    except (TypeError, ValueError):
        return False


def _run_row(engine, state, row, index, seed, top_k, progress):
    record = state.row(row.name)
    if record["finished"]:
        return
    row_seed = tf.constant([int(seed), index], tf.int64)
    logits_fn, attack = engine.logits_fn, row.attack
    keyed = attack is not None and _takes_point_ids(attack)

    def replica_fn(x, y, ids, valid):
        del valid
        x = tf.cast(x, tf.float32)
        if attack is None:
            x_adv = x
        elif keyed:
            x_adv = attack(logits_fn, x, y, seed=row_seed, point_ids=ids)
        else:
            x_adv = attack(logits_fn, x, y, seed=row_seed)
        logits = tf.cast(logits_fn(x_adv), tf.float32)
        k = min(top_k, logits.shape[-1])
        state.extra["top_k"] = int(k)  # while tracing: the k the column is named after
        top1 = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y)
        topk = tf.math.in_top_k(y, logits, k)
        size, nans = _perturbation(x_adv, x, row.norm)
        return top1, topk, size, nans

    _run_chunks(
        engine,
        state,
        record,
        row.name,
        replica_fn,
        np.flatnonzero(~record["done"]),
        progress,
        lambda ids, out: _update_row(record, ids, out),
    )
    record["finished"] = True
    if engine.chief:
        state.save()


def _update_row(record, ids, outputs):
    top1, topk, size, nans = outputs
    record["top1"][ids] = top1
    record["topk"][ids] = topk
    record["done"][ids] = True
    record["max_norm"] = max(record["max_norm"], float(np.max(size, initial=0.0)))
    record["nan"] += int(np.sum(nans))


def _run_chunks(engine, state, record, name, replica_fn, ids, progress, update):
    """Runs `replica_fn` over `ids` chunk by chunk, saving the state after each."""
    already = int(record["done"].sum())  # processed before an interruption
    total = already + len(ids)
    step = engine.step_fn(replica_fn) if len(ids) else None
    done = already
    for chunk in engine.chunks(ids):
        start = time.perf_counter()
        update(chunk, engine.run(step, chunk))
        record["seconds"] += time.perf_counter() - start
        done += len(chunk)
        if engine.chief:
            state.save()
        if progress is not None:
            progress(name, done, total, record["seconds"])


def _run_cascade(engine, state, cascade, index, seed, top_k, progress):
    """The cascade's stages in order, each on the points still robust (re-batched between stages)."""
    stage_seed = tf.constant([int(seed), index], tf.int64)
    logits_fn = engine.logits_fn
    clean = state.row("clean")
    if not clean.get("finished"):
        _run_row(engine, state, AttackRow("clean"), index, seed, top_k, progress)
    if cascade.name not in state.extra:
        sample = engine.x[: min(engine.chunk, len(engine.y))]
        state.extra[cascade.name] = cascade.model_checks(logits_fn, sample)
    robust = clean["top1"].copy()
    for (_stage, run), name in zip(cascade.stages(), _stage_names(cascade)):
        record = state.row(name)
        record.setdefault("zero_gradient", 0)
        if record["finished"]:
            robust = record["top1"].copy()
            continue
        # Points broken by this stage before an interruption stay broken.
        robust &= ~(record["done"] & ~record["top1"])

        def replica_fn(x, y, ids, valid, run=run):
            x = tf.cast(x, tf.float32)
            x_att, zero = run(logits_fn, x, y, seed=stage_seed, point_ids=ids, active=valid)
            pred = tf.argmax(tf.cast(logits_fn(x_att), tf.float32), -1, output_type=tf.int32)
            survived = tf.logical_or(tf.equal(pred, y), tf.logical_not(valid))
            size, nans = _perturbation(x_att, x, cascade.norm)
            zero = tf.zeros_like(valid) if zero is None else tf.logical_and(zero, valid)
            return survived, size, nans, zero

        def update(ids, outputs, record=record, robust=robust):
            survived, size, nans, zero = outputs
            robust[ids] = survived
            record["done"][ids] = True
            broken = ~survived
            record["max_norm"] = max(record["max_norm"], float(np.max(size[broken], initial=0.0)))
            record["nan"] += int(np.sum(nans[broken]))
            record["zero_gradient"] += int(np.sum(zero))
            record["top1"][:] = robust

        pending = np.flatnonzero(robust & ~record["done"])
        record["top1"][:] = robust
        _run_chunks(engine, state, record, name, replica_fn, pending, progress, update)
        record["done"][:] = True  # points broken earlier need no attack: their flag is final
        record["top1"][:] = robust
        record["finished"] = True
        if engine.chief:
            state.save()


def _summary(state, rows, names, worst_case=True):
    sources, cascade_rows = {}, set()
    warnings = []
    for row in rows:
        if not _is_cascade(row):
            continue
        per_stage = _stage_names(row)
        sources[row.name] = per_stage[-1]  # the final row: robust after every stage
        cascade_rows.update([*per_stage, row.name])
        accuracy = {"clean": float(state.rows["clean"]["top1"].mean())}
        for (stage, _), name in zip(row.stages(), per_stage):
            accuracy[stage] = float(state.rows[name]["top1"].mean())
        checks = dict(state.extra.get(row.name, {}))
        checks["zero_gradient"] = np.ones(sum(state.rows[n].get("zero_gradient", 0) for n in per_stage), bool)
        warnings += row.warnings(checks, accuracy)
    count = state.count
    k = int(state.extra.get("top_k", 5))
    topk = topk_name(k) if k != 1 else None  # top-1 twice is no column
    table, flags = {}, {}
    worst = np.ones(count, bool)
    for name in names:
        record = state.rows[sources.get(name, name)]
        top1 = record["top1"]
        table[name] = {"top1": float(top1.mean()) if count else 0.0}
        if topk:
            table[name][topk] = None if name in cascade_rows else float(record["topk"].mean())
        table[name].update(
            {
                "count": int(count),
                "max_norm": float(record["max_norm"]),
                "nan": int(record["nan"]),
                "seconds": round(float(record["seconds"]), 3),
            }
        )
        flags[name] = top1.copy()
        worst &= top1
    for row in rows:
        if _is_cascade(row):  # the final row sums up its stages
            per_attack = [table[name] for name in _stage_names(row)]
            table[row.name].update(
                max_norm=max(r["max_norm"] for r in per_attack),
                nan=sum(r["nan"] for r in per_attack),
                seconds=round(sum(r["seconds"] for r in per_attack), 3),
            )
    if not worst_case:
        return {"rows": table, "warnings": warnings, "flags": flags}
    finals = {row.name for row in rows if _is_cascade(row)}
    attacked = [r for n, r in table.items() if n != "clean" and n not in finals]
    table[WORST_CASE] = {
        "top1": float(worst.mean()) if count else 0.0,
        **({topk: None} if topk else {}),
        "count": int(count),
        "max_norm": max((r["max_norm"] for r in attacked), default=0.0),
        "nan": sum(r["nan"] for r in attacked),
        "seconds": round(sum(r["seconds"] for r in attacked) + table.get("clean", {}).get("seconds", 0.0), 3),
    }
    flags[WORST_CASE] = worst
    return {"rows": table, "warnings": warnings, "flags": flags}
