r"""The Fashion-MNIST study (issue 16): one command per table, resumable, per-seed raw JSON, statistics, plots.

    python benchmarks/fashion_mnist_study.py --table=activations --seeds=5 --eval_limit=2000
    python benchmarks/fashion_mnist_study.py --table=gradients      # relu shared with `activations`
    python benchmarks/fashion_mnist_study.py --table=budget         # re-evaluates recorded `activations` runs
    python benchmarks/fashion_mnist_study.py --table=rat
    python benchmarks/fashion_mnist_study.py --table=sparta
    python benchmarks/fashion_mnist_study.py --table=certified --cert_N=10000
    python benchmarks/fashion_mnist_study.py --table=all --seeds=5  # seed 0 of every table, then seed 1, ...
    python benchmarks/fashion_mnist_study.py --table=all --jobs=2   # two runs at a time, one core each
    python benchmarks/fashion_mnist_study.py --table=all --order=table  # table by table instead
    python benchmarks/fashion_mnist_study.py --summarize           # TABLES.md + PNGs + RESULTS.md's generated blocks, from the JSON
    python benchmarks/fashion_mnist_study.py --table=rat --dry_run # the commands, nothing run

Every (table, row, seed) is one run in `<runs_dir>/<table>/<row>/seed<k>/`: launch/train.py
(--config.mode=train, --config.system.seed=k) as a subprocess, then launch/evaluate.py (clean,
PGD-`pgd_steps` and AutoAttack standard, L-inf `eval_eps`, on the first `eval_limit` test images)
or, for `certified`, launch/certify.py. Right after it, the row (clean, PGD, AutoAttack, worst case,
wall times, the exact commands) is appended to `<results_dir>/<table>.json`; a recorded (row, seed)
is skipped, so the study resumes across sessions, and a half-trained run resumes from its checkpoint
(the trainer does that). Rows shared between tables (ReLU PGD-AT) run once and are recorded in
`activations`. Subprocess output goes to `<workdir>/study_log.txt`. With --jobs=N, N runs go side by side
(TF_NUM_INTRAOP_THREADS = cores / N for each, unless set): on 2 cores two single-threaded runs give ~1.3x
the throughput of one on both (RESULTS.md, "Study wall time"); their entries say `side_by_side`, since each
run's wall time was measured beside another.

Tables:
  activations  PGD-AT with relu, silu, gelu, softplus, elu, smooth_relu, mish
  gradients    relu_smooth_grad (ReLU forward) with the smooth gradient for the attacker / optimizer /
               both vs relu; evaluated with the same weights in the plain-ReLU network (evaluate.py
               --activation=relu, which checks the clean logits are equal), so the evaluation attacks
               see the true ReLU gradient
  budget       robust accuracy vs eps for relu and the best smooth activation of `activations` (mean
               AutoAttack), on the first `budget_images` test images: evaluation only, but a run whose
               checkpoint is gone (another machine) is trained again and flagged `retrained`
  rat          PGD-AT (relu of `activations`), TRADES, TRADES+RAT, AWP+TRADES+RAT (beta 6, alpha 0.2,
               as launch/configs/rat_cifar10.py; no label smoothing, as the released code; TRADES's own
               attack: 10 sign steps of eps/4 from the released x + 0.001 N start)
  masking      TRADES (beta 6) with the attack changed one thing at a time: `fine` (rat's), `coarse`
               (PGD-AT's 5 steps of eps/2), `coarse_uniform` (and PGD's uniform start), `coarse_beta1`
               (and the released MNIST script's beta 1). Not part of `all`: a diagnostic of gradient
               masking (compare APGD+FAB, the gradient attacks, with AutoAttack, which adds Square)
  sparta       Sparta vs relu, and transfer: the Sparta trained in this table's `sparta` run of the
               same seed (kept as <results_dir>/sparta_seed<k>.npz), frozen (config.model.load_sparta),
               trains a fresh network (--sparta_target_model, default the config's model)
  certified    Gaussian vs SmoothAdv-PGD and SmoothAdv-DDN (L2 eps = sigma) at sigma 0.25 and 0.5, then
               launch/certify.py on the first `cert_images` test images with N = --cert_N

The config (--config) is a launch/configs/ file; --set=field=value (repeatable) overrides a field of
every training run, e.g. `--set=schedule.epochs=1` for a smoke run (a digits smoke study:
--config=launch/configs/digits_sat.py --set=schedule.epochs=1 --eval_limit=100).
"""

import argparse
import collections
import dataclasses
import datetime
import glob
import importlib.util
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results", "fashion_mnist")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, ROOT)  # launch/configs import their siblings as `launch.configs...`

import _report  # noqa: E402
import study_lib  # noqa: E402

DEFAULT_CONFIG = "launch/configs/fashion_mnist_sat.py"
SMOOTH_ACTIVATIONS = ("silu", "gelu", "softplus", "elu", "smooth_relu", "mish")
# 0, 0.025, ..., 0.3, and 0.105, 0.1125 on the cliff right past the training eps (0.1), where ReLU's AutoAttack
# accuracy falls from ~67 % to ~9 % (at 0.125) over one step of the coarse grid (to ~13 % already at 0.1125).
BUDGET_EPS = tuple(sorted({round(0.025 * k, 3) for k in range(13)} | {0.105, 0.1125}))
CERT_RADII = tuple(round(0.25 * k, 2) for k in range(9))  # 0, 0.25, ..., 2.0
SIGMAS = (0.25, 0.5)


class StudyError(Exception):
    """A bad setting or a missing prerequisite; the message names it and the fix."""


class StudyStopped(StudyError):
    """SIGTERM stopped the study (see stop_runs_on_sigterm); rerunning the same command resumes."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of a table: how its runs train and are evaluated.

    `record` is (table, row) where its entries live: a shared row points at its first table's.
    `kind` is robust (train + evaluate.py), certified (train + certify.py) or budget (evaluate.py of
    an `activations` run at every eps).
    """

    name: str
    overrides: tuple = ()
    record: tuple = None
    kind: str = "robust"
    eval_activation: str = None
    needs: str = None  # a file (formatted with the seed) that must exist first, made by an earlier row
    # (a file of the run's workdir, where to copy it formatted with the seed): a run's product that a later row
    # needs, kept beside the results (committed) because workdirs do not outlive the machine
    keep: tuple = None


RELU = Row("relu", (("model.activation", "relu"),), record=("activations", "relu"))


def _activations(args, config):
    return [RELU] + [Row(a, (("model.activation", a),)) for a in SMOOTH_ACTIVATIONS]


def _gradients(args, config):
    return [RELU] + [
        Row(
            f"smooth_grad_{mode}",
            (("model.activation", "relu_smooth_grad"), ("model.activation_options", f"('mode={mode}',)")),
            eval_activation="relu",
        )
        for mode in ("attacker", "optimizer", "both")
    ]


def _trades_overrides(config, *, steps=10, step_fraction=0.25, beta="6.0", start=None):
    """A TRADES run's overrides. The default attack is TRADES's own: 10 sign steps of eps / 4 from the released
    near-clean start (the released CIFAR script: 10 of 0.007 at eps 0.031), not PGD-AT's 5 of eps / 2, which
    relies on PGD's uniform start and gave a gradient-masked TRADES (the `masking` table)."""
    overrides = (
        ("model.activation", "relu"),
        ("objective.label_smoothing", "0.0"),
        ("objective.trades_beta", beta),
        ("objective.rat_alpha", "0.2"),
        ("attack.steps", str(steps)),
        ("attack.step_size", f"{config.attack.eps * step_fraction:g}"),
    )
    return overrides + ((("objective.trades_start", start),) if start else ())


def _rat(args, config):
    # AWP starts after warm-up epochs: the CIFAR recipe's 10 of 200, scaled to this schedule.
    awp_warmup = int(round(config.schedule.epochs * 10 / 200))
    trades = _trades_overrides(config)
    return [
        dataclasses.replace(RELU, name="pgd_at"),
        Row("trades", trades + (("objective.name", "trades"),)),
        Row("trades_rat", trades + (("objective.name", "trades_rat"),)),
        Row(
            "awp_trades_rat",
            trades + (("objective.name", "awp_trades_rat"), ("objective.awp_warmup_epochs", str(awp_warmup))),
        ),
    ]


def _masking(args, config):
    name = (("objective.name", "trades"),)
    return [
        Row("fine", _trades_overrides(config) + name, record=("rat", "trades")),  # rat's TRADES, run once
        Row("coarse", _trades_overrides(config, steps=5, step_fraction=0.5) + name),
        Row("coarse_uniform", _trades_overrides(config, steps=5, step_fraction=0.5, start="uniform") + name),
        Row("coarse_beta1", _trades_overrides(config, steps=5, step_fraction=0.5, beta="1.0") + name),
    ]


def _sparta(args, config):
    source = os.path.join(args.results_dir, "sparta_seed{seed}.npz")
    transfer = [("model.activation", "sparta"), ("model.load_sparta", source)]
    if args.sparta_target_model:
        transfer.append(("model.name", args.sparta_target_model))
    return [
        RELU,
        Row("sparta", (("model.activation", "sparta"),), keep=("sparta.npz", source)),
        Row("sparta_transfer", tuple(transfer), needs=source),
    ]


def _certified(args, config):
    rows = []
    for sigma in SIGMAS:
        noise = (("attack.name", "none"), ("objective.noise_sd", str(sigma)), ("objective.label_smoothing", "0.0"))
        rows.append(Row(f"gaussian_s{sigma}", noise + (("objective.name", "gaussian"),), kind="certified"))
        for attack in ("pgd", "ddn"):
            rows.append(
                Row(
                    f"smoothadv_{attack}_s{sigma}",
                    noise
                    + (
                        ("objective.name", "smoothadv"),
                        ("objective.smoothadv.attack", attack),
                        ("objective.smoothadv.eps", str(sigma)),
                    ),
                    kind="certified",
                )
            )
    return rows


def _budget(args, config):
    """ReLU and the best smooth activation of `activations`, each (row, seed) re-evaluated at every eps once its
    `activations` run is recorded. ReLU's runs start as soon as theirs are; the best smooth activation is
    known, and its rows planned, only once every activation has every seed."""
    best = best_smooth_activation(study_lib.load_table(args.results_dir, "activations"), args.seeds)
    if best is None:
        print(
            f"budget: relu; the best smooth activation joins once `activations` has all {args.seeds} seeds",
            flush=True,
        )
    else:
        print(f"budget: relu and {best}, the smooth activation with the best mean AutoAttack accuracy", flush=True)
    # The activations rows themselves, so a run whose checkpoint is gone (another machine) trains again as it did.
    rows = {row.name: row for row in _activations(args, config)}
    return [dataclasses.replace(rows[name], kind="budget") for name in ("relu", best) if name]


TABLES = {
    "activations": _activations,
    "gradients": _gradients,
    "budget": _budget,
    "rat": _rat,
    "masking": _masking,
    "sparta": _sparta,
    "certified": _certified,
}


def best_smooth_activation(entries, seeds):
    """The smooth activation with the highest mean AutoAttack accuracy over seeds 0..seeds-1 of `activations`
    (None unless every one has all those seeds)."""
    means = {}
    for name in SMOOTH_ACTIVATIONS:
        values = [e["autoattack"] for e in entries if e["row"] == name and e["seed"] < seeds]
        if len(values) < seeds:
            return None
        means[name] = sum(values) / len(values)
    return max(means, key=means.get)


# === Commands ===


def load_config(path):
    """The ConfigDict of a launch/configs/ file (no TensorFlow needed)."""
    full = path if os.path.isabs(path) else os.path.join(ROOT, path)
    if not os.path.isfile(full):
        raise StudyError(
            f"--config={path} does not exist; pass an existing launch/configs/ file "
            "(e.g. --config=launch/configs/digits_sat.py)"
        )
    spec = importlib.util.spec_from_file_location("study_config", full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def check_fields(config, overrides, where):
    """Each overridden field exists in the config (a typo fails now, not after hours of runs)."""
    for field, _ in overrides:
        node = config
        for part in field.split("."):
            if part not in node:
                raise StudyError(
                    f"{where}: config field {field!r} does not exist in the --config file; "
                    "use a field of sat_tf/config.py base(), e.g. schedule.epochs=1"
                )
            node = node[part]


def parse_sets(items):
    overrides = []
    for item in items:
        field, sep, value = item.partition("=")
        if not (sep and field.strip()):
            raise StudyError(f"--set={item!r} is invalid; allowed: field=value, e.g. --set=schedule.epochs=1")
        overrides.append((field.strip(), value.strip()))
    return tuple(overrides)


def workdir(args, record, seed):
    table, row = record
    return os.path.join(args.runs_dir, table, row, f"seed{seed}")


def train_command(args, row, seed, wd):
    overrides = args.sets + tuple((field, value.format(seed=seed)) for field, value in row.overrides)
    return [
        "python",
        os.path.join("launch", "train.py"),
        f"--config={args.config}",
        f"--workdir={wd}",
        "--config.mode=train",
        f"--config.system.seed={seed}",
        "--config.export.enabled=false",
        *[f"--config.{field}={value}" for field, value in overrides],
    ]


def eval_command(args, wd, eps, limit, output_dir, activation=None):
    command = [
        "python",
        os.path.join("launch", "evaluate.py"),
        f"--workdir={wd}",
        f"--limit={limit}",
        f"--eps={eps:g}",
        f"--output_dir={output_dir}",
        f"--batch_size={args.eval_batch}",
    ]
    if eps > 0:  # step eps/4 (SAT's ratio), on the flag's 0-255 scale
        command += [f"--attack_step_size={eps * 255 / 4:g}", f"--steps={args.pgd_steps}", "--autoattack=standard"]
    else:  # nothing to attack: robust accuracy is the clean accuracy
        command += ["--steps=0", "--autoattack=none"]
    if activation:
        command.append(f"--activation={activation}")
    if args.eval_kernels == "plain":
        command.append("--nofused_kernels")
    return command


def certify_command(args, wd, sigma):
    return [
        "python",
        os.path.join("launch", "certify.py"),
        f"--workdir={wd}",
        f"--N={args.cert_N}",
        f"--N0={args.cert_N0}",
        "--skip=1",
        f"--max={args.cert_images}",
        f"--batch={args.cert_batch}",
        f"--outfile={os.path.join(wd, 'study_certify', f'noise_{sigma:g}.tsv')}",
        f"--radii={','.join(f'{r:g}' for r in CERT_RADII)}",
    ]


# The launch/ subprocesses in flight, so that stopping the study stops them too (see stop_runs_on_sigterm).
_CHILDREN = set()
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()
STOP_TIMEOUT = 300  # seconds a run gets to save and exit after SIGTERM before it is killed


def run_logged(command, log_path):
    """Runs `command` from the repository root, output appended to `log_path`; returns the seconds taken."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n$ {shlex.join(command)}\n")
        log.flush()
        executable = sys.executable if command[0] == "python" else command[0]  # the recorded line says python
        with _CHILDREN_LOCK:
            if _STOPPING.is_set():  # a stop arrived: start nothing new
                raise StudyStopped(f"the study is stopping: {command[1]} not started")
            child = subprocess.Popen(
                [executable, *command[1:]],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            _CHILDREN.add(child)
        try:
            code = child.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(child)
    if code and _STOPPING.is_set():
        raise StudyStopped(f"SIGTERM stopped {command[1]} (exit {code}); rerun the same command to resume")
    if code:
        with open(log_path) as log:
            last = [line.rstrip() for line in log if line.strip()][-1:]
        raise StudyError(f"{command[1]} failed (exit {code}); see {log_path}; last line: {' '.join(last)}")
    return time.perf_counter() - start


def stop_runs_on_sigterm():
    """Makes SIGTERM to the study (`kill`, `pkill`, a scheduler) reach its runs in flight too.

    Without it the runs went on, orphaned, writing to the run directories a restarted study was using. With it
    each run gets SIGTERM (the trainer saves a checkpoint and stops; an evaluation keeps its finished chunks)
    and STOP_TIMEOUT seconds before it is killed; no new run starts, and the study exits with 143 once the runs
    are gone (`main`); rerunning the same command resumes. The handler only signals: the threads waiting for
    the runs see them end. Main thread only (Python runs signal handlers there).
    """

    def handle(signum, frame):
        del signum, frame
        with _CHILDREN_LOCK:
            _STOPPING.set()
            children = list(_CHILDREN)
        print(f"SIGTERM: stopping {len(children)} run(s) in flight; rerun the same command to resume", flush=True)
        for child in children:
            child.send_signal(signal.SIGTERM)

        def kill_stragglers():
            for child in children:
                if child.poll() is None:
                    child.kill()

        timer = threading.Timer(STOP_TIMEOUT, kill_stragglers)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handle)


def training_speed(wd):
    """Training time from the trainer's history (the sum of its epochs' seconds, so a run resumed across
    sessions counts each epoch once and not the restarts) and the training images per second."""
    path = os.path.join(wd, "history.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        epochs = json.load(f)
    with open(os.path.join(wd, "run_config.json")) as f:
        config = json.load(f)
    seconds = sum(e["seconds"] for e in epochs)
    images = epochs[-1]["step"] * config["schedule"]["batch_size"] if epochs else 0
    return {"train_epoch_seconds": seconds, "train_images_per_second": images / seconds if seconds else None}


def wait_while_paused(args):
    """Between runs, waits while `<runs_dir>/PAUSE` exists (so the machine can be freed for a
    measurement without a run's recorded times including the pause)."""
    pause = os.path.join(args.runs_dir, "PAUSE")
    announced = False
    while os.path.exists(pause):
        if not announced:
            print(f"paused: {pause} exists; remove it to go on", flush=True)
            announced = True
        time.sleep(5)


def read_robustness(output_dir, pgd_steps):
    """(clean, PGD, APGD-CE, gradient attacks, AutoAttack, worst case, images) of an evaluate.py report.
    APGD-CE, AutoAttack's first attack, beside PGD shows how much a fixed-step PGD overstates robustness; the
    accuracy after AutoAttack's gradient attacks (APGD-CE, APGD-T, FAB-T) beside AutoAttack shows what the
    black-box Square adds, the sign of gradient masking."""
    with open(os.path.join(output_dir, "robustness.json")) as f:
        rows = json.load(f)["results"]
    clean = rows["clean"]["top1"]
    get = lambda name: rows[name]["top1"] if name in rows else clean  # noqa: E731  (eps 0: no attack rows)
    return {
        "clean": clean,
        "pgd": get(f"pgd{pgd_steps}"),
        "apgd_ce": get("autoattack/apgd-ce"),
        "gradient_attacks": get("autoattack/fab-t"),  # after APGD-CE, APGD-T, FAB-T: Square's gain is the rest
        "autoattack": get("autoattack"),
        "worst_case": get("worst case"),
        "images": rows["clean"]["count"],
    }


# === Running a table ===


def planned_runs(args, table, config):
    """[(row, seed)] of `table` in seed-major order (every row of seed 0 first: paired results come early)."""
    rows = TABLES[table](args, config)
    if args.rows:
        unknown = set(args.rows) - {row.name for row in rows}
        if unknown:
            raise StudyError(
                f"--rows: {sorted(unknown)} not in table {table}; allowed: {', '.join(row.name for row in rows)}"
            )
        rows = [row for row in rows if row.name in args.rows]
    for row in rows:
        check_fields(config, [(f, v) for f, v in row.overrides], f"--table={table} row {row.name}")
    return [(row, seed) for seed in range(args.seeds) for row in rows]


def execute(args, table, row, seed):
    """Trains and evaluates one run; returns its entry."""
    record = row.record or (table, row.name)
    if row.kind == "budget":
        return execute_budget(args, row, seed)
    wd = workdir(args, record, seed)
    log = os.path.join(wd, "study_log.txt")
    if row.needs and not os.path.exists(row.needs.format(seed=seed)):
        raise StudyError(
            f"row {row.name} seed {seed} needs {row.needs.format(seed=seed)}, written by an earlier "
            "row's run; run the table without skipping it"
        )
    train = train_command(args, row, seed, wd)
    entry = {
        "row": record[1],
        "seed": seed,
        "workdir": wd,
        "config": args.config,
        "commands": [shlex.join(train)],
        "train_seconds": run_logged(train, log),
    }
    entry.update(training_speed(wd))
    if row.kind == "certified":
        sigma = float(dict(row.overrides)["objective.noise_sd"])
        command = certify_command(args, wd, sigma)
        entry["eval_seconds"] = run_logged(command, log)
        entry["commands"].append(shlex.join(command))
        entry.update(read_certified(command, sigma))
    else:
        out = os.path.join(wd, f"study_eval_eps{args.eval_eps:g}")
        command = eval_command(args, wd, args.eval_eps, args.eval_limit, out, row.eval_activation)
        entry["eval_seconds"] = run_logged(command, log)
        entry["commands"].append(shlex.join(command))
        entry.update(
            read_robustness(out, args.pgd_steps), eps=args.eval_eps, eval_state_seconds=evaluation_seconds([out])
        )
    if row.keep:
        keep(os.path.join(wd, row.keep[0]), row.keep[1].format(seed=seed))
    entry["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return entry


def read_certified(command, sigma):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the TSV reader's package imports TensorFlow
    from sat_tf.certification import logs

    outfile = next(c.split("=", 1)[1] for c in command if c.startswith("--outfile="))
    outfile = os.path.join(ROOT, outfile) if not os.path.isabs(outfile) else outfile
    rows = logs.read_tsv(outfile)
    meta = logs.read_sidecar(outfile) or {}
    radii = sorted(float(r.radius) for r in rows if r.correct == 1)  # the certified images' radii
    return {
        "sigma": sigma,
        "radii": list(CERT_RADII),
        "certified": [float(a) for a in logs.certified_accuracy(rows, CERT_RADII)],
        "certified_radii": radii,
        "acr": sum(radii) / len(rows),
        "N": meta.get("N"),
        "alpha": meta.get("alpha"),
        "abstain": sum(r.predict == -1 for r in rows),
        "images": len(rows),
        "clean": None,
    }


def keep(path, destination):
    """Copies a run's product beside the results, atomically (a half-written copy never looks kept)."""
    if not os.path.exists(path):
        raise StudyError(f"the run finished without writing {path}, which a later row needs")
    os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
    shutil.copyfile(path, destination + ".tmp")
    os.replace(destination + ".tmp", destination)


RETRAINED_MARK = "study_retrained"  # in an activations workdir whose model a budget run trained again


def execute_budget(args, row, seed):
    """Evaluates the `activations` run of this row and seed at every eps. Its checkpoint lives in the runs
    directory, which does not outlive the machine: where it is gone, the run is trained again (same command,
    same seed; the trainer is not bitwise deterministic, so a sibling model, flagged `retrained`); where it is
    there, the train command only resumes at its last step."""
    if not activations_recorded(args, row, seed):
        raise StudyError(
            f"budget row {row.name} seed {seed} re-evaluates the activations run of {row.name} seed {seed}, which "
            f"is not recorded yet: run `python benchmarks/fashion_mnist_study.py --table=activations "
            f"--seeds={seed + 1}` first"
        )
    wd = workdir(args, ("activations", row.name), seed)
    log = os.path.join(wd, "study_log.txt")
    checkpoint = os.path.exists(os.path.join(wd, "checkpoints", "checkpoint"))
    recorded = study_lib.find_entry(study_lib.load_table(args.results_dir, "budget"), row.name, seed)
    if recorded is not None and checkpoint and same_model(recorded, wd, args.budget_images):
        entry = {
            **recorded,
            "commands": list(recorded["commands"]),
            "curve": list(recorded["curve"]),
            "topped_up": True,
        }
        todo = missing_eps(recorded, args.budget_eps)  # a top-up: the same model, the eps its curve lacks
        if todo:
            entry["added_eps"] = sorted({*recorded.get("added_eps", ()), *todo})
    else:
        # A retraining stopped with its session leaves a checkpoint: the mark, written before it starts, keeps
        # the resumed run flagged (and its training counted) where the checkpoint alone would say "the original".
        mark = os.path.join(wd, RETRAINED_MARK)
        retrained = os.path.exists(mark) or not checkpoint
        if retrained and not os.path.exists(mark):
            os.makedirs(wd, exist_ok=True)
            with open(mark, "w") as f:
                f.write("this workdir's model was trained again by a budget run: not the recorded activations run\n")
        train = train_command(args, row, seed, wd)
        train_seconds = run_logged(train, log)
        entry = {
            "row": row.name,
            "seed": seed,
            "workdir": wd,
            "config": args.config,
            "commands": [shlex.join(train)],
            "retrained": retrained,
            "train_seconds": train_seconds if retrained else 0.0,
            "eval_seconds": 0.0,
            "curve": [],
        }
        if retrained:  # its epochs' seconds: a retraining resumed in a later session counts its first part too
            entry["train_epoch_seconds"] = training_speed(wd).get("train_epoch_seconds")
        todo = list(args.budget_eps)
    for eps in todo:
        out = os.path.join(wd, "study_budget", f"eps{eps:g}")
        command = eval_command(args, wd, eps, args.budget_images, out)
        if not finished_report(out, wd, eps, args.budget_images, args.pgd_steps):  # else: a resumed run's, kept
            entry["eval_seconds"] += run_logged(command, log)
        entry["commands"].append(shlex.join(command))
        entry["curve"].append({"eps": eps, **read_robustness(out, args.pgd_steps)})
    entry["curve"].sort(key=lambda point: point["eps"])
    for point in entry["curve"]:  # every eps's per-image verdicts, for the summary's monotonicity check
        if "robust_images" not in point:
            bits = robust_images(os.path.join(wd, "study_budget", f"eps{point['eps']:g}"))
            point.update({"robust_images": bits} if bits else {})
    entry["images"] = args.budget_images
    entry["eval_state_seconds"] = evaluation_seconds(
        os.path.join(wd, "study_budget", f"eps{point['eps']:g}") for point in entry["curve"]
    )
    entry["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return entry


def latest_checkpoint(wd):
    """The name of the newest checkpoint in a trainer's workdir (`ckpt-2340`), from tf.train.Checkpoint's
    index file, without importing TensorFlow; None when there is none."""
    try:
        with open(os.path.join(wd, "checkpoints", "checkpoint")) as f:
            first = f.readline()
    except OSError:
        return None
    key, _, value = first.partition(":")
    return os.path.basename(value.strip().strip('"')) if key == "model_checkpoint_path" else None


def finished_report(output_dir, wd, eps, images, pgd_steps):
    """Whether `output_dir` holds a finished evaluate.py report of the workdir's newest checkpoint at this eps,
    on these images, written after that checkpoint: a budget run stopped with its session then goes on at the
    first eps it had not finished, instead of running evaluate.py again for each finished one (20 s to 2 min
    each, to reload the state and rewrite the same report)."""
    checkpoint = latest_checkpoint(wd)
    state = os.path.join(output_dir, f"evaluation_state-{checkpoint}.json")
    report = os.path.join(output_dir, "robustness.json")
    if checkpoint is None or not (os.path.exists(state) and os.path.exists(report)):
        return False
    weights = os.path.join(wd, "checkpoints", f"{checkpoint}.index")
    if not os.path.exists(weights) or os.path.getmtime(report) < os.path.getmtime(weights):
        return False  # a report older than the model: from weights trained before these
    with open(report) as f:
        meta = json.load(f).get("meta", {})
    return (
        _finished_rows(state) is not None
        and abs(meta.get("epsilon", -1.0) - eps) < 1e-9
        and meta.get("images") == images
        and meta.get("steps") == [pgd_steps if eps > 0 else 0]
    )


def _finished_rows(state_path):
    """The rows of an evaluate.py evaluation state when every one of them finished, else None."""
    with open(state_path) as f:
        rows = json.load(f)["rows"]
    return rows if rows and all(row.get("finished") for row in rows.values()) else None


def _newest_state(output_dir):
    """The path of an evaluate.py output directory's newest evaluation state (evaluation_state-<checkpoint>.json,
    evaluation_state.json before evaluate.py named it by checkpoint), or None."""
    states = glob.glob(os.path.join(output_dir, "evaluation_state*.json"))
    return max(states, key=os.path.getmtime) if states else None


def evaluation_seconds(output_dirs):
    """The attacks' seconds that evaluate.py's states record in `output_dirs`, summed over their rows. A state
    keeps adding to them across restarts, so an evaluation stopped with its session and resumed in the next
    counts its first part too, which the last process's wall time does not (start-up excluded: a lower bound)."""
    total = 0.0
    for output_dir in output_dirs:
        path = _newest_state(output_dir)
        if path:
            with open(path) as f:
                total += sum(row.get("seconds", 0.0) for row in json.load(f)["rows"].values())
    return total


def robust_images(output_dir):
    """The per-image worst case of an evaluate.py run (robust under every row: clean, PGD and AutoAttack's
    attacks), packed as evaluate.py keeps it (base64 of numpy.packbits), from its evaluation state; None when the
    state is not there or not finished."""
    path = _newest_state(output_dir)  # the one this report came from
    rows = None if path is None else _finished_rows(path)
    if rows is None:
        return None
    with open(os.path.join(output_dir, "robustness.json")) as f:
        count = json.load(f)["results"]["clean"]["count"]
    robust = np.ones(count, bool)
    for row in rows.values():
        robust &= study_lib.unpack_bits(row["top1"], count)
    return study_lib.pack_bits(robust)


def missing_eps(entry, grid):
    """The eps of `grid` that a budget entry's curve lacks."""
    have = {round(point["eps"], 6) for point in entry["curve"]}
    return [eps for eps in grid if round(eps, 6) not in have]


def needs_top_up(args, entry):
    """Whether a recorded budget curve lacks an eps of the grid, or per-image verdicts that its reports on this
    machine still have (filled without evaluating anything; on a machine without them, never)."""
    if missing_eps(entry, args.budget_eps):
        return True
    wd = entry.get("workdir", "")
    return same_model(entry, wd, entry.get("images")) and any(
        "robust_images" not in p and robust_images(os.path.join(wd, "study_budget", f"eps{p['eps']:g}"))
        for p in entry["curve"]
    )


def same_model(entry, wd, images):
    """Whether a recorded budget curve came from the model now in `wd`, so new eps may join it: its workdir is
    this one, on as many images, and every eps it has still has its evaluation report there (a workdir trained
    again, e.g. on a new machine, has none of them, and then the whole curve is evaluated again)."""
    return (
        os.path.abspath(entry.get("workdir", "")) == os.path.abspath(wd)
        and entry.get("images") == images
        and all(
            os.path.exists(os.path.join(wd, "study_budget", f"eps{p['eps']:g}", "robustness.json"))
            for p in entry["curve"]
        )
    )


def command_line(args):
    """The study command that makes this table, as recorded beside it."""
    parts = [
        "python benchmarks/fashion_mnist_study.py",
        f"--table={args.table}",
        f"--seeds={getattr(args, 'all_seeds', args.seeds)}",  # under --table=all: the study's seeds, not the pass's
        f"--config={args.config}",
    ]
    parts += [f"--set={f}={v}" for f, v in args.sets]
    if args.table == "certified":
        parts += [f"--cert_images={args.cert_images}", f"--cert_N={args.cert_N}"]
    elif args.table == "budget":
        parts += [f"--budget_images={args.budget_images}"]
    else:
        parts += [f"--eval_limit={args.eval_limit}"]
    return " ".join(parts)


SEED_MAJOR_TABLES = ("activations", "gradients", "rat", "sparta", "certified")
PLANNED_TABLES = (*SEED_MAJOR_TABLES, "budget")  # the study's plan (`masking` is a diagnostic outside it)


def pending_runs(args, table):
    """(runs planned, [(args, table, row, seed, record)] of those not recorded yet) of one table."""
    config = load_config(args.config)
    check_fields(config, args.sets, "--set")
    runs = planned_runs(args, table, config)
    pending, topping_up = [], 0
    for row, seed in runs:
        record = ("budget", row.name) if row.kind == "budget" else (row.record or (table, row.name))
        found = study_lib.find_entry(study_lib.load_table(args.results_dir, record[0]), record[1], seed)
        lacking = found is not None and row.kind == "budget" and needs_top_up(args, found)
        if found is None or lacking:
            pending.append((args, table, row, seed, record))  # a budget curve without some eps: topped up
            topping_up += bool(lacking)
    topping = f" ({topping_up} of them recorded curves to top up: new eps or per-image verdicts)" if topping_up else ""
    print(
        f"table {table}: {len(runs)} runs, {len(runs) - len(pending)} recorded, {len(pending)} to do{topping} "
        f"({args.config}, {args.seeds} seeds)",
        flush=True,
    )
    return runs, pending


def run_all(args):
    """Every table, seed-major: seed 0 of each table, then seed 1, ..., so every table has paired
    results early; a seed's ReLU `budget` run after its other tables, the best smooth activation's `budget`
    runs once it is known (`activations` has every seed), by seed among the rest. --order=table: table by
    table in PLANNED_TABLES order instead, seeds in turn within each. One queue for all, so `--jobs` runs stay
    side by side across tables."""
    total = args.seeds
    if args.dry_run:
        for table in PLANNED_TABLES:
            run_table(argparse.Namespace(**{**vars(args), "table": table, "all_seeds": total}))
        return 0
    queue, seen = [], set()
    for table in PLANNED_TABLES:  # budget: ReLU's rows now, the best smooth activation's below
        _, pending = pending_runs(argparse.Namespace(**{**vars(args), "table": table, "all_seeds": total}), table)
        for item in pending:
            if (item[4], item[3]) not in seen:  # a shared row (ReLU) runs once, for the table that records it
                seen.add((item[4], item[3]))
                queue.append(item)
    if args.order == "seed":
        queue.sort(key=lambda item: item[3])  # stable: by seed, then table, then row
    study = argparse.Namespace(**{**vars(args), "table": "all"})
    run_queue(queue, jobs=args.jobs, label="all", total=len(queue), rest=lambda: progress(study))
    return run_table(argparse.Namespace(**{**vars(args), "table": "budget", "seeds": total}))


def run_table(args):
    if args.table == "all":
        return run_all(args)
    runs, pending = pending_runs(args, args.table)
    if args.dry_run:
        for _, _, row, seed, record in pending:
            wd = workdir(args, record if row.kind != "budget" else ("activations", row.name), seed)
            recorded = row.kind == "budget" and study_lib.find_entry(
                study_lib.load_table(args.results_dir, "budget"), row.name, seed
            )
            print(f"# {record[0]}/{record[1]} seed {seed}" + (" (top-up)" if recorded else ""))
            if not recorded:  # budget: only resumes a run that is there
                print(shlex.join(train_command(args, row, seed, wd)))
            if row.kind == "certified":
                print(shlex.join(certify_command(args, wd, float(dict(row.overrides)["objective.noise_sd"]))))
            elif row.kind == "budget":
                missing = missing_eps(recorded, args.budget_eps) if recorded else args.budget_eps
                if not missing:  # a top-up of per-image verdicts only
                    states = os.path.join(wd, "study_budget", "eps*", "evaluation_state*.json")
                    print(f"# nothing to run: the per-image verdicts are read from {states}")
                for eps in missing:
                    out = os.path.join(wd, "study_budget", f"eps{eps:g}")
                    print(shlex.join(eval_command(args, wd, eps, args.budget_images, out)))
            else:
                out = os.path.join(wd, f"study_eval_eps{args.eval_eps:g}")
                print(shlex.join(eval_command(args, wd, args.eval_eps, args.eval_limit, out, row.eval_activation)))
        return 0
    run_queue(
        pending,
        jobs=args.jobs,
        label=args.table,
        total=len(runs),
        done=len(runs) - len(pending),
        rest=(lambda: [r for r in progress(args) if r.table == args.table]) if args.table in PLANNED_TABLES else None,
    )
    print(
        f"table {args.table}: all {len(runs)} runs recorded; summarize with "
        "`python benchmarks/fashion_mnist_study.py --summarize`",
        flush=True,
    )
    return 0


def side_by_side_threads(jobs):
    """TensorFlow's intra-op threads per run when `jobs` run side by side: the cores shared out (one each on
    this 2-core machine, where two single-threaded runs give ~1.3x the throughput of one on both cores, most of
    it in training). A value already in the environment wins."""
    if jobs > 1:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    return os.environ.get("TF_NUM_INTRAOP_THREADS")


def activations_recorded(args, row, seed):
    """Whether the `activations` run a budget row re-evaluates is recorded (trained and evaluated, nothing
    writing its workdir any more)."""
    return study_lib.find_entry(study_lib.load_table(args.results_dir, "activations"), row.name, seed) is not None


def ready(args, row, seed):
    """Whether the run can start now: its `needs` file is there, and a budget row's activations run is recorded."""
    if row.needs and not os.path.exists(row.needs.format(seed=seed)):
        return False
    return row.kind != "budget" or activations_recorded(args, row, seed)


def _eta(rest):
    """'~13h26m by the rows' medians' from `rest()`'s [Progress] (+ 'unknown' where a table has no recorded run
    yet), or '?' if the estimate fails: a progress line never stops the study."""
    try:
        rows = rest()
    except (OSError, ValueError, StudyError):  # e.g. a results file unreadable this instant
        return "?"
    unknown = " + unknown" if any(r.unknown for r in rows) else ""
    return f"~{study_lib.clock(sum(r.rest for r in rows))}{unknown} by the rows' medians"


def run_queue(queue, *, jobs, label, total, done=0, rest=None):
    """Runs `queue` ([(args, table, row, seed, record)]) in order, `jobs` at a time, recording each run as it
    finishes. A run that is not `ready` yet (its `needs` file, a budget row's activations run) waits for the
    runs in flight (one of them makes it ready) while the next ready run takes the free slot. After a failure
    no new run starts; the runs in flight finish and are recorded, then the first error is raised. `rest()`, if
    given, is the progress estimate for the ETA each start prints; without it the ETA extrapolates this queue's
    own pace."""
    threads = side_by_side_threads(jobs)
    state = {"queue": list(queue), "started": 0, "running": 0, "finished": 0, "error": None}
    changed = threading.Condition()
    start = time.perf_counter()

    def take():
        with changed:
            while not state["error"] and state["queue"]:
                item = next((i for i in state["queue"] if ready(i[0], i[2], i[3])), None)
                if item is None and state["running"] == 0:
                    item = state["queue"][0]  # nothing in flight can make it ready: execute() says what is missing
                if item is not None:
                    state["queue"].remove(item)
                    state["started"] += 1
                    state["running"] += 1
                    return item, state["started"]
                changed.wait()
            return None, 0

    def work():
        while True:
            item, number = take()
            if item is None:
                return
            args, table, row, seed, record = item
            try:
                wait_while_paused(args)
                elapsed = time.perf_counter() - start
                finished = state["finished"]
                if rest is not None:
                    eta = _eta(rest)
                else:
                    eta = "?" if not finished else study_lib.clock(elapsed / finished * (len(queue) - finished))
                side = f", {jobs} side by side" if jobs > 1 else ""
                print(
                    f"[{label} {done + number}/{total}, {len(queue) - number} left after this] "
                    f"{record[0]}/{record[1]} seed {seed} ... (elapsed {study_lib.clock(elapsed)}, ETA {eta}{side})",
                    flush=True,
                )
                entry = execute(args, table, row, seed)
                if not entry.pop("topped_up", False):  # a top-up keeps the study command that made its curve
                    entry["study_command"] = command_line(args)
                entry["machine"] = "{}, {} cores".format(*_report.machine())  # sessions may get other hosts
                if jobs > 1:  # its wall times were measured beside other runs
                    entry.update(side_by_side=jobs, tf_intraop_threads=threads)
                study_lib.append_entry(args.results_dir, record[0], entry)
                summary = (
                    f"AutoAttack {100 * entry['autoattack']:.2f}%, clean {100 * entry['clean']:.2f}%"
                    if "autoattack" in entry
                    else f"certified@0 {100 * entry['certified'][0]:.2f}%"
                    if "certified" in entry
                    else f"{len(entry['curve'])} budgets"
                )
                print(
                    f"  done: {record[0]}/{record[1]} seed {seed}: {summary} (train {entry['train_seconds']:.0f} s, "
                    f"eval {entry['eval_seconds']:.0f} s) -> {study_lib.table_path(args.results_dir, record[0])}",
                    flush=True,
                )
            except Exception as err:  # recorded for the caller; the runs in flight still finish
                with changed:
                    state["error"] = state["error"] or err
                    if jobs > 1 and not _STOPPING.is_set():  # a stopped run is not a failure
                        print(f"  failed: {record[0]}/{record[1]} seed {seed}: {err}", flush=True)
            finally:
                with changed:
                    state["running"] -= 1
                    state["finished"] += 1
                    changed.notify_all()

    if jobs == 1:
        work()
    else:
        workers = [threading.Thread(target=work, name=f"study-job-{k}", daemon=True) for k in range(jobs)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if state["error"]:
        raise state["error"]


# === Summary ===

CLAIMS = {  # table -> [(claim, a, b, metric, alternative)]; b is the baseline
    "activations": [
        ("SAT", a, "relu", m, alt)
        for a in SMOOTH_ACTIVATIONS
        for m, alt in (("autoattack", "greater"), ("clean", "less"))
    ],
    "gradients": [
        ("smooth gradient", f"smooth_grad_{m}", "relu", "autoattack", "greater")
        for m in ("attacker", "optimizer", "both")
    ],
    "rat": [
        ("RAT", a, "trades", m, "greater") for a in ("trades_rat", "awp_trades_rat") for m in ("clean", "autoattack")
    ]
    + [
        ("RAT vs PGD-AT", a, "pgd_at", m, "greater")
        for a in ("trades_rat", "awp_trades_rat")
        for m in ("clean", "autoattack")
    ],
    "masking": [],
    "sparta": [("Sparta", a, "relu", "autoattack", "greater") for a in ("sparta", "sparta_transfer")],
}
NOTES = {
    "activations": "SAT's claim: a smooth activation beats ReLU in AutoAttack accuracy (one-sided, greater) with clean "
    "accuracy not worse; the `clean` lines test the opposite direction (smooth < ReLU), so a small p "
    "there is evidence *against* the claim.",
    "gradients": "The smooth_grad rows compute ReLU forward; they were evaluated with the same weights in the plain "
    "ReLU network (evaluate.py --activation=relu, clean logits checked equal), i.e. the true gradient.",
    "rat": "RAT's claim: better clean and AutoAttack accuracy than its base (TRADES); PGD-AT is relu of `activations`.",
    "masking": "TRADES with its attack changed one thing at a time (see the table's help). A gradient-masked "
    "model is one where AutoAttack (which adds the black-box Square) is far below APGD+FAB (the gradient attacks).",
    "sparta": "sparta_transfer: the Sparta of the same seed's `sparta` run, frozen, training a fresh network.",
}


def _shared_source(table, name):
    """(table, row) whose entries a row of `table` reads when another table runs it (`Row.record`)."""
    return {("rat", "pgd_at"): ("activations", "relu"), ("masking", "fine"): ("rat", "trades")}.get(
        (table, name), ("activations", name)
    )


# topping_up: recorded budget curves that lack an eps of the grid (not `done`; their missing eps are in `rest`)
Progress = collections.namedtuple("Progress", "table done planned recorded rest unknown topping_up", defaults=(0,))


def progress(args):
    """[Progress] per table, `budget` last: the runs recorded of those planned at --seeds, their recorded wall
    time, and what the rest should take at the median recorded wall time of the same row (of the table's runs
    while the row has fewer than 2: one run is too noisy a guess; `unknown` when the table has none). A shared
    row (ReLU, PGD-AT) counts once, in the table that records it."""
    config = load_config(args.config)
    activations = study_lib.load_table(args.results_dir, "activations")
    best = best_smooth_activation(activations, args.seeds) or "best smooth"
    seen, rows = set(), []
    for table in PLANNED_TABLES:
        if table == "budget":
            planned = [(("budget", name), seed) for seed in range(args.seeds) for name in ("relu", best)]
        else:
            runs = planned_runs(argparse.Namespace(**{**vars(args), "rows": None}), table, config)
            planned = [(row.record or (table, row.name), seed) for row, seed in runs]
        planned = [p for p in planned if p not in seen]
        seen.update(planned)
        records = {name: study_lib.load_table(args.results_dir, name) for name in {r[0] for r, _ in planned}}
        found = [study_lib.find_entry(records[r[0]], r[1], seed) for r, seed in planned]
        times = {}
        for (record, _), e in zip(planned, found):
            if e is not None:
                times.setdefault(record, []).append(study_lib.wall_seconds([e]))
        every = [t for ts in times.values() for t in ts]
        rest, unknown, topping_up = 0.0, False, 0
        for (record, _), e in zip(planned, found):
            lacking = missing_eps(e, args.budget_eps) if e is not None and record[0] == "budget" else ()
            if lacking:  # a curve to top up: its own time per eps for each eps it lacks
                rest += study_lib.wall_seconds([e]) / max(1, len(e["curve"])) * len(lacking)
                topping_up += 1
            if e is None:
                known = times.get(record) if len(times.get(record, ())) >= 2 else every
                if known:
                    rest += statistics.median(known)
                else:
                    unknown = True
        done = sum(e is not None for e in found) - topping_up
        rows.append(Progress(table, done, len(planned), sum(every), rest, unknown, topping_up))
    return rows


def _progress(args):
    """Markdown of `progress`."""
    rows = progress(args)
    lines = [
        "### progress",
        "",
        f"Planned: {args.seeds} seeds per row. Recorded wall times are as measured (training + evaluation), "
        "partly on a machine shared with tests and CI; a run measured beside others (`--jobs`, `side_by_side` "
        "in its entry) counts its share, its wall time divided by the runs side by side. The rest is estimated "
        "from them: per missing run, the median of its row's recorded runs (of its table's while the row has "
        "fewer than 2).",
        "",
        "| table | runs recorded / planned | wall time recorded | estimated rest |",
        "|---|---|---|---|",
    ]
    for r in rows:
        rest = "unknown (no run yet)" if r.unknown and not r.rest else study_lib.clock(r.rest)
        topping = f" ({r.topping_up} more lack an eps of the grid)" if r.topping_up else ""
        lines.append(f"| {r.table} | {r.done} / {r.planned}{topping} | {study_lib.clock(r.recorded)} | {rest} |")
    unknown = [r.table for r in rows if r.unknown]
    lines.append(
        f"| **all** | {sum(r.done for r in rows)} / {sum(r.planned for r in rows)} | "
        f"{study_lib.clock(sum(r.recorded for r in rows))} | {study_lib.clock(sum(r.rest for r in rows))}"
        + (f" + {', '.join(unknown)}" if unknown else "")
        + " |"
    )
    masking = study_lib.load_table(args.results_dir, "masking")
    if masking:
        lines += [
            "",
            f"Besides the plan: the `masking` diagnostic, {len(masking)} runs, "
            f"{study_lib.clock(study_lib.wall_seconds(masking))}.",
        ]
    return lines + [""]


def _load_rows(results_dir, table, names):
    """Entries for `names`, each read from the table that records it (shared rows from their first table)."""
    own = study_lib.load_table(results_dir, table)
    entries = []
    for name in names:
        mine = [e for e in own if e["row"] == name]
        source_table, source_row = _shared_source(table, name)
        if not mine and source_table != table:
            source = study_lib.load_table(results_dir, source_table)
            mine = [{**e, "row": name} for e in source if e["row"] == source_row]
        entries += mine
    return entries


def _images(entries):
    counts = sorted({e.get("images") for e in entries if e.get("images") is not None})
    return ", ".join(map(str, counts)) or "—"


def _commands(entries):
    commands = sorted({e.get("study_command") for e in entries if e.get("study_command")})
    return "\n".join(f"    {c}" for c in commands) or "    (not recorded)"


def summarize(args):
    lines = [
        "## Fashion-MNIST study",
        "",
        f"Generated {datetime.date.today().isoformat()} by `python benchmarks/fashion_mnist_study.py "
        f"--summarize` from the per-seed JSON in `{os.path.relpath(args.results_dir, ROOT)}/`. Mean ± sample std "
        f"(min–max) over seeds; p: one-sided Welch's t-test (scipy.stats.ttest_ind(equal_var=False)); sign count: "
        f"seeds where A beats / ties / loses to B, paired by seed; Holm p: Holm-Bonferroni over the family of tests "
        "sharing a claim and a metric (e.g. all six smooth activations against ReLU); verdict: *holds* (Holm p "
        "< 0.05), *reversed* (the opposite direction at that level) or *not shown*. Wall times are the sums of the recorded "
        "train and evaluation times of the table's own runs.",
        "",
    ]
    lines += _progress(args)
    verdicts_at = len(lines)  # filled in once every table's tests are known
    tests_so_far = []
    pngs = []
    for table in ("activations", "gradients", "rat", "masking", "sparta"):
        names = {
            "activations": ["relu", *SMOOTH_ACTIVATIONS],
            "gradients": ["relu"] + [f"smooth_grad_{m}" for m in ("attacker", "optimizer", "both")],
            "rat": ["pgd_at", "trades", "trades_rat", "awp_trades_rat"],
            "masking": ["fine", "coarse", "coarse_uniform", "coarse_beta1"],
            "sparta": ["relu", "sparta", "sparta_transfer"],
        }[table]
        entries = _load_rows(args.results_dir, table, names)
        own = study_lib.load_table(args.results_dir, table)
        lines += [f"### {table}", ""]
        if not entries:
            lines += ["No runs recorded yet.", ""]
            continue
        eps = sorted({e.get("eps") for e in entries if e.get("eps") is not None})
        lines += [
            f"L-inf eps {', '.join(f'{e:g}' for e in eps)}; images per run: {_images(entries)}; "
            f"wall time {study_lib.clock(study_lib.wall_seconds(own))} ({len(own)} runs)."
            + study_lib.provenance_text(own)
            + study_lib.speed_text(own),
            "",
            "Command:",
            "",
            _commands(own or entries),
            "",
            study_lib.row_table(entries, names),
            "",
        ]
        tests = [
            (claim, metric, study_lib.compare(entries, a, b, metric, alt)) for claim, a, b, metric, alt in CLAIMS[table]
        ]
        lines += study_lib.masking_watch(entries)
        tests_so_far += tests
        lines += ([study_lib.claim_table(tests), ""] if tests else []) + [NOTES[table], ""]
        png = study_lib.plot_rows(
            entries,
            [n for n in names if any(e["row"] == n for e in entries)],
            os.path.join(args.results_dir, f"{table}.png"),
            f"Fashion-MNIST {table}: top-1 accuracy, mean ± std over seeds",
        )
        pngs.append(png)
        lines += [f"![{table}]({os.path.basename(png)})", ""]
    lines += _summarize_budget(args, pngs, tests_so_far) + _summarize_certified(args, pngs, tests_so_far)
    lines[verdicts_at:verdicts_at] = [
        "### verdicts",
        "",
        "Every claim test of the tables below, by family (Holm-adjusted one-sided Welch p < 0.05): where it holds, "
        "where the data say the opposite, where neither, and what has too few seeds to test.",
        "",
        study_lib.verdict_table(tests_so_far),
        "",
    ]
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, "TABLES.md")
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {path} and {len(pngs)} plots", flush=True)
    document = results_md(args)
    if document:
        image_dir = os.path.relpath(args.results_dir, os.path.dirname(os.path.abspath(document)))
        filled = study_lib.fill_blocks(document, study_lib.sections(lines), image_dir)
        print(f"refilled {len(filled)} generated blocks of {document}: {', '.join(filled) or 'none'}", flush=True)
    return 0


def results_md(args):
    """The hand-written document whose generated blocks --summarize refills: --results_md, or by default the
    repository's RESULTS.md when the results are the repository's own (never when --results_dir points
    elsewhere, so a scratch study cannot overwrite the published tables)."""
    if args.results_md is not None:
        if args.results_md and not os.path.isfile(args.results_md):
            raise StudyError(
                f"--results_md={args.results_md}: no such file; give an existing markdown file or --results_md="
            )
        return args.results_md
    if os.path.abspath(args.results_dir) == os.path.abspath(DEFAULT_RESULTS_DIR):
        return os.path.join(ROOT, "RESULTS.md")
    return ""


def _summarize_budget(args, pngs, all_tests):
    entries = study_lib.load_table(args.results_dir, "budget")
    lines = ["### budget", ""]
    if not entries:
        return lines + ["No runs recorded yet.", ""]
    # Curves recorded on different grids (one topped up with an eps, one not yet): each cell has the runs
    # that have its eps (with their count where it is not every run of the row), the plot the eps all have.
    grid = sorted({round(p["eps"], 6) for e in entries for p in e["curve"]})
    curves, columns, styles = {}, [], {}
    for k, name in enumerate(sorted({e["row"] for e in entries}, key=lambda n: n != "relu")):
        mine = [e for e in entries if e["row"] == name]
        for metric, label in (("autoattack", "AutoAttack"), ("pgd", f"PGD-{args.pgd_steps}")):
            by_eps = [{round(p["eps"], 6): p[metric] for p in e["curve"] if metric in p} for e in mine]
            common = [x for x in grid if by_eps and all(x in run for run in by_eps)]
            if common:
                key = f"{name}, {label}"
                curves[key] = (common, [[run[x] for x in common] for run in by_eps])
                styles[key] = {"color": f"C{k}", "linestyle": "-" if metric == "autoattack" else ":"}
            if any(by_eps):  # (runs recorded without PGD: no column)
                columns.append((f"{name}, {label}", [[run[x] for run in by_eps if x in run] for x in grid], len(mine)))
    retrained = [
        f"{e['row']} seed {e['seed']}"
        for e in sorted(entries, key=lambda e: (e["row"] != "relu", e["row"], e["seed"]))
        if e.get("retrained")
    ]
    added = sorted({eps for e in entries for eps in e.get("added_eps", ())})
    topped = [f"{e['row']} seed {e['seed']}" for e in entries if e.get("added_eps")]
    lines += [
        f"AutoAttack standard (eps 0: clean accuracy) on the first {_images(entries)} test images, with "
        f"PGD-{args.pgd_steps} (step eps/4) beside it to show where a fixed-step attack overstates robustness; "
        f"the `activations` runs re-evaluated; wall time {study_lib.clock(study_lib.wall_seconds(entries))}."
        + study_lib.provenance_text(entries)
        + (
            f" Trained again for this table (the run's checkpoint was gone; same command and seed, a sibling "
            f"model, not bitwise the same): {', '.join(retrained)}."
            if retrained
            else ""
        )
        + (
            f" Eps {', '.join(f'{x:g}' for x in added)} added to the grid after these runs were recorded, evaluated "
            f"later on the same checkpoints: {', '.join(topped)}."
            if added
            else ""
        ),
        "",
        "Command:",
        "",
        _commands(entries),
        "",
    ]
    checked, missed, worst = study_lib.monotonicity(entries)
    if checked:
        lines += [
            f"Per image ({checked} of {len(entries)} curves have every eps's per-image verdicts): "
            + (
                "no image counted robust at an eps had been broken at a smaller one (an adversarial example "
                "within eps is one within any larger eps), so the curves are monotone image by image, as a "
                "correct evaluation must be."
                if not missed
                else f"{missed} images counted robust at an eps had been broken at a smaller one (up to {worst} "
                "at one eps of one curve): the attacks missed them there, so those cells overstate robustness."
            ),
            "",
        ]
    lines += [
        "| eps | " + " | ".join(f"{name} (%)" for name, _, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for i, x in enumerate(grid):
        cells = [
            "—"
            if not values[i]
            else study_lib.cell(study_lib.describe(values[i]))
            + ("" if len(values[i]) == n else f" ({len(values[i])} of {n} seeds)")
            for _, values, n in columns
        ]
        lines.append(f"| {x:g} | " + " | ".join(cells) + " |")
    lines += _budget_tests(entries, grid, all_tests)
    png = study_lib.plot_curves(
        curves,
        os.path.join(args.results_dir, "budget.png"),
        f"Fashion-MNIST: AutoAttack (solid) and PGD-{args.pgd_steps} (dotted) accuracy vs L-inf eps",
        "L-inf eps",
        styles=styles,
    )
    pngs.append(png)
    return lines + ["", f"![budget]({os.path.basename(png)})", ""]


def _budget_tests(entries, grid, all_tests):
    """Markdown: each smooth row's curve against ReLU's under AutoAttack, per eps and over the whole curve (its
    mean over the eps every curve has: the trapezoid area divided by the width). Only the whole-curve test joins
    `all_tests` (the verdicts): the per-eps lines are each a family of one, uncorrected across eps."""
    rows = sorted({e["row"] for e in entries} - {"relu"})
    shared = [
        x for x in grid if all(any(round(p["eps"], 6) == x and "autoattack" in p for p in e["curve"]) for e in entries)
    ]
    if not rows or not any(e["row"] == "relu" for e in entries) or len(shared) < 2:
        return []

    def at(x):
        return lambda e: next(p["autoattack"] for p in e["curve"] if round(p["eps"], 6) == x)

    whole = f"AutoAttack, mean over eps {shared[0]:g}–{shared[-1]:g}"
    tests, curve_tests = [], []
    for row in rows:
        tests += [
            ("SAT across eps", f"AutoAttack eps={x:g}", study_lib.compare(entries, row, "relu", at(x)))
            for x in shared
            if x > 0
        ]
        area = lambda e: study_lib.curve_mean(shared, [at(x)(e) for x in shared])  # noqa: E731
        curve_tests.append(("SAT across eps", whole, study_lib.compare(entries, row, "relu", area)))
    all_tests += curve_tests
    return [
        "",
        study_lib.claim_table(tests + curve_tests),
        "",
        f"Each eps line is a family of its own (p not corrected across eps); the last, the curve's mean accuracy over "
        f"eps {shared[0]:g}–{shared[-1]:g} (the area under it by the trapezoid rule, divided by the width), is the one "
        "that joins the verdicts. SAT's claim read across budgets: the smooth activation's curve above ReLU's.",
    ]


CERT_GRID = tuple(round(0.01 * k, 2) for k in range(201))  # the plot's radii: 0, 0.01, ..., 2.0
CERT_ALPHA = 0.001  # certify.py's default, used for runs recorded before the entry carried it


def _cert_n(entry):
    """The run's CERTIFY sample size N (recorded, or read from its certify.py command)."""
    if entry.get("N"):
        return int(entry["N"])
    command = next(c for c in entry["commands"] if "--N=" in c)
    return int(command.split("--N=")[1].split()[0])


def _summarize_certified(args, pngs, all_tests):
    entries = study_lib.load_table(args.results_dir, "certified")
    lines = ["### certified", ""]
    if not entries:
        return lines + ["No runs recorded yet.", ""]
    ns = sorted({_cert_n(e) for e in entries})
    # The radius N caps per sigma (the smallest over the runs): zeros beyond it say nothing about a model.
    reach = {}
    for e in entries:
        r = study_lib.certified_reach(e["sigma"], _cert_n(e), e.get("alpha") or CERT_ALPHA)
        reach[e["sigma"]] = min(r, reach.get(e["sigma"], r))
    for sigma in SIGMAS:  # not run yet: the reach of the largest N recorded
        reach.setdefault(sigma, study_lib.certified_reach(sigma, max(ns), CERT_ALPHA))
    lines += [
        f"Certified accuracy (Cohen et al. CERTIFY, alpha {CERT_ALPHA:g}, N = {', '.join(f'{n:,}' for n in ns)}) "
        f"on the first {_images(entries)} test images; wall time {study_lib.clock(study_lib.wall_seconds(entries))}."
        + study_lib.provenance_text(entries)
        + " "
        "N caps the radius any model can be certified at to sigma * Phi^-1(alpha^(1/N)): "
        + ", ".join(f"{r:.3f} at sigma {sigma:g}" for sigma, r in sorted(reach.items()))
        + "; cells beyond it read *beyond N*, and the tests stop there. ACR: average certified radius "
        "(Zhai et al. 2020), the radius of each correctly certified image, 0 for the others, averaged.",
        "",
        "Command:",
        "",
        _commands(entries),
        "",
    ]
    radii = entries[0]["radii"]
    names = sorted({e["row"] for e in entries}, key=lambda n: (n.split("_s")[-1], not n.startswith("gaussian"), n))
    lines += [
        "| row | seeds | " + " | ".join(f"r={r:g} (%)" for r in radii) + " | ACR |",
        "|---|---|" + "---|" * (len(radii) + 1),
    ]
    curves, styles = {}, {}
    for name in names:
        mine = [e for e in entries if e["row"] == name]
        sigma = mine[0]["sigma"]
        cells = [
            study_lib.cell(study_lib.describe([e["certified"][i] for e in mine])) if r <= reach[sigma] else "*beyond N*"
            for i, r in enumerate(radii)
        ]
        acr = study_lib.describe([e["acr"] for e in mine if e.get("acr") is not None])
        acr_cell = (
            "—" if not acr["n"] else f"{acr['mean']:.3f}" + ("" if acr["std"] is None else f" ± {acr['std']:.3f}")
        )
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + f" | {acr_cell} |")
        if all(e.get("certified_radii") is not None for e in mine):
            curves[name] = (CERT_GRID, [study_lib.certified_curve(e, CERT_GRID) for e in mine])
        else:
            curves[name] = (radii, [e["certified"] for e in mine])
        method = 0 if name.startswith("gaussian") else 1 if "_pgd_" in name else 2
        styles[name] = {"color": f"C{method}", "linestyle": "-" if sigma == SIGMAS[0] else "--"}
    tests = []
    for sigma in SIGMAS:
        base = f"gaussian_s{sigma}"
        for attack in ("pgd", "ddn"):
            a = f"smoothadv_{attack}_s{sigma}"
            if a not in names and base not in names:
                continue
            for i, r in enumerate(radii):
                if r > reach[sigma]:  # every sigma has a reach (set above)
                    continue
                metric = lambda e, i=i: e["certified"][i]  # noqa: E731
                tests.append(
                    ("SmoothAdv", f"certified r={r:g}", study_lib.compare(entries, a, base, metric, "greater"))
                )
            acr_test = study_lib.compare(entries, a, base, lambda e: e.get("acr"), "greater")
            tests.append(("SmoothAdv", "ACR", {**acr_test, "unit": "radius"}))
    all_tests += tests
    lines += [
        "",
        study_lib.claim_table(tests),
        "",
        "SmoothAdv's claim: its certified accuracy dominates Gaussian training's at every radius. "
        "The ACR lines' means are radii, not percentages.",
        "",
    ]
    png = study_lib.plot_curves(
        curves,
        os.path.join(args.results_dir, "certified.png"),
        "Fashion-MNIST: certified accuracy vs L2 radius (solid sigma 0.25, dashed 0.5)",
        "L2 radius",
        styles=styles,
        vlines=[(r, f"N's reach, sigma {sigma:g}") for sigma, r in sorted(reach.items())],
        legend="lower left",  # the curves fall to the right; the lines' labels stand at the top
    )
    pngs.append(png)
    return lines + [f"![certified]({os.path.basename(png)})", ""]


# === Command line ===


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "--table", choices=sorted(TABLES) + ["all"], help="the table to run (all: every table, seed-major)"
    )
    parser.add_argument(
        "--order",
        choices=("seed", "table"),
        default="seed",
        help="--table=all's queue: seed-major (every table gets paired seeds early) or table-major (finishes the "
        "tables in turn, e.g. the small ones left before the budget curves)",
    )
    parser.add_argument("--summarize", action="store_true", help="write TABLES.md and the plots from the JSON")
    parser.add_argument("--dry_run", action="store_true", help="list the commands of the runs still to do")
    parser.add_argument("--rows", default=None, help="only these rows of the table (comma-separated)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per row")
    parser.add_argument("--eval_limit", type=int, default=2000, help="evaluate on the first N test images")
    parser.add_argument("--eval_eps", type=float, default=0.1, help="L-inf budget of the evaluation")
    parser.add_argument(
        "--eval_batch",
        type=int,
        default=1000,
        help="evaluate.py --batch_size: images per chunk (large chunks amortise a small model's op overhead)",
    )
    parser.add_argument("--pgd_steps", type=int, default=20, help="steps of the PGD row beside AutoAttack")
    parser.add_argument(
        "--eval_kernels",
        choices=("plain", "fused"),
        default="plain",
        help="evaluate.py's activation/batch-norm kernels: plain ops (--nofused_kernels; 1.7x faster attack "
        "gradients for SmoothReLU and SiLU on this network here, BENCHMARKS.md) or the fused XLA kernels",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="a launch/configs/ file every run starts from")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a config override for every training run (repeatable)",
    )
    parser.add_argument("--runs_dir", default="runs/fmnist_study", help="run workdirs (relative to the repo root)")
    parser.add_argument("--results_dir", default=DEFAULT_RESULTS_DIR)
    parser.add_argument(
        "--results_md",
        default=None,
        help="--summarize: markdown file whose <!-- study:NAME --> ... <!-- /study:NAME --> blocks are refilled with "
        "TABLES.md's sections (progress, verdicts, a table); default RESULTS.md when --results_dir is the default, "
        "none otherwise; empty: none",
    )
    parser.add_argument("--budget_eps", default=",".join(f"{e:g}" for e in BUDGET_EPS), help="budget table's eps")
    parser.add_argument("--budget_images", type=int, default=1000, help="budget table: first N test images")
    parser.add_argument("--cert_images", type=int, default=500, help="certified table: first N test images")
    parser.add_argument("--cert_N", type=int, default=10000, help="certify.py --N (estimation samples)")
    parser.add_argument("--cert_N0", type=int, default=100, help="certify.py --N0 (selection samples)")
    parser.add_argument("--cert_batch", type=int, default=1000, help="certify.py --batch")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs side by side, each with its share of the cores (TF_NUM_INTRAOP_THREADS); their recorded wall "
        "times are marked side_by_side",
    )
    parser.add_argument("--sparta_target_model", default=None, help="sparta_transfer's network (default: config's)")
    args = parser.parse_args(argv)
    if not args.summarize and not args.table:
        parser.error("give --table=NAME (one of " + ", ".join(TABLES) + ") or --summarize")
    for name in (
        "seeds",
        "jobs",
        "eval_limit",
        "pgd_steps",
        "budget_images",
        "cert_images",
        "cert_N",
        "cert_N0",
        "cert_batch",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.eval_eps <= 1:
        parser.error(f"--eval_eps must be in (0, 1] (L-inf, [0, 1] pixels), got {args.eval_eps}")
    if args.order != "seed" and args.table != "all":
        parser.error("--order orders --table=all's queue; give --table=all or leave --order out")
    if args.table == "all" and args.rows:
        parser.error("--rows needs one table (--table=NAME), not --table=all")
    args.rows = args.rows.split(",") if args.rows else None
    try:
        args.budget_eps = [float(e) for e in args.budget_eps.split(",")]
    except ValueError:
        parser.error(f"--budget_eps must be comma-separated numbers, got {args.budget_eps!r}")
    try:
        args.sets = parse_sets(args.sets)
    except StudyError as err:
        parser.error(str(err))
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.summarize and threading.current_thread() is threading.main_thread():
        stop_runs_on_sigterm()
    try:
        return summarize(args) if args.summarize else run_table(args)
    except StudyStopped as err:
        print(f"stopped: {err}", file=sys.stderr, flush=True)
        return 143
    except (StudyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
