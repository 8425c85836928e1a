"""Bad flags, bad configs and absent data fail at once, in one line, in every launcher.

Each case must end with exit code 2 and exactly one stderr line, `error: ...`,
naming the flag (or the path) and what is allowed, before any model is built
or data is read. The trainer's fields are validated by `sat_tf.config.validate`
(tests/test_config.py); here its command line is. The many cases run in one
process through each launcher's real entry point, `common.run(main)` (the
trainers: their file run as `__main__`) (tests/scripts/bad_flags_batch.py: one
TensorFlow import for all, expensive work replaced by sentinels, 2 logical
CPUs); one real subprocess per launcher checks the end-to-end behaviour and the
time to error.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import pytest
from conftest import ROOT, free_port

BATCH = os.path.join(ROOT, "tests", "scripts", "bad_flags_batch.py")
# TensorFlow's C++ start-up lines (absl logging before InitializeLog, the CPU
# feature banner); they are printed while `import tensorflow` runs, before any
# launcher code, and no environment variable removes them.
NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\d+ [\w.]+:\d+\] .*"
    r"|To enable the following instructions: .*)$"
)


def _run_config(dataset, data_dir=None, *, noise_sd=None, model="digits_cnn", shape=(8, 8, 1), classes=10):
    """A run's run_config.json: its serialized config (sat_tf.config), as launch/train.py writes it."""
    from sat_tf import config as config_lib

    c = config_lib.base()
    c.data.name, c.data.data_dir, c.data.num_classes = dataset, data_dir, classes
    c.model.name, c.model.input_shape = model, tuple(shape)
    c.attack.name, c.eval.eps, c.eval.step_size, c.eval.steps = "none", 8 / 255, 2 / 255, (10,)
    if noise_sd:
        c.objective.name, c.objective.noise_sd = "gaussian", noise_sd
    return c.to_dict()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_flags")
    out = {"tmp": str(root), "missing": str(root / "missing"), "port": str(free_port())}
    for name in ("empty", "shards", "images/n01", "ws"):
        os.makedirs(root / name)
    for name in ("empty", "shards", "images", "ws"):
        out[name] = str(root / name)
    for split in ("train", "validation"):  # list_files only globs: empty shards pass validation
        (root / "shards" / f"{split}-00000-of-00001").write_bytes(b"")
    (root / "images" / "n01" / "a.JPEG").write_bytes(b"\xff\xd8\xff")
    (root / "m.keras").write_bytes(b"")
    (root / "a_file").write_text("x")
    out["keras"], out["a_file"] = str(root / "m.keras"), str(root / "a_file")
    runs = {
        "digits_run": _run_config("digits"),
        "noise_run": _run_config("digits", noise_sd=0.25),
        "cifar_run": _run_config("cifar10", out["empty"], noise_sd=0.25, model="resnet18_cifar", shape=(32, 32, 3)),
        "imagenet_run": _run_config(
            "imagenet", out["empty"], noise_sd=0.25, model="resnet50", shape=(224, 224, 3), classes=1000
        ),
    }
    for name, config in runs.items():
        os.makedirs(root / name)
        (root / name / "run_config.json").write_text(json.dumps(config))
        out[name] = str(root / name)
    return out


# (launcher, flags, needle). Placeholders: see `paths`. A needle "reached:<fn>"
# is a valid command line: validation lets it through to the expensive `fn`; a
# needle "error: ..." is the whole line, any other a part of it.
RUN = ["--workdir={digits_run}"]
EVALUATE = [
    (
        ["--protocol=pgd1000"],
        "--protocol='pgd1000' is unknown; choose one of ['autoattack', 'rat_cifar', 'rat_svhn', 'run', 'sat_imagenet', "
        "'strong']",
    ),
    (["--eps=-1"], "--eps must be finite and >= 0, got '-1'"),
    (["--eps=8/0"], "--eps must be a number or a fraction like 8/255, got '8/0'"),
    (["--eps=8/255", "--attack_epsilon=8"], "give the budget once: --eps (natural units) or --attack_epsilon"),
    (["--autoattack=fast"], "flag --autoattack=fast: value should be one of <protocol|standard|plus|rand|none>"),
    (["--autoattack_options=square"], "--autoattack_options entries must be attack.key=value, got 'square'"),
    (["--autoattack_options=pgd.steps=3"], "--autoattack_options='pgd' is unknown; choose one of ['apgd-ce'"),
    (["--autoattack_options=square.quries=3"], "--autoattack_options=square.quries=3: options for 'square'"),
    (["--autoattack_options=apgd-dlr.steps=3"], "options` names attacks that do not run: ['apgd-dlr']"),
    (["--autoattack=none", "--autoattack_options=square.queries=3"], "--autoattack_options needs AutoAttack"),
    (["--model_path={missing}/m.keras"], "--model_path needs --dataset"),
    (["--model_path={missing}/m.keras", "--dataset=digits"], "--model_path={missing}/m.keras does not exist"),
    (["--mean=0.5"], "--input_range/--mean/--std describe a --model_path model"),
    (["--input_range=0"], "--input_range must be two numbers LOW,HIGH"),
    (["--protocol=rat_cifar", "--norm=l2"], "--norm is fixed by --protocol=rat_cifar"),
    (["--protocol=rat_cifar", "--loss=cw"], "--loss is fixed by --protocol=rat_cifar"),
    (["--norm=l3"], "flag --norm=l3: value should be one of <linf|l2>"),
    (["--loss=mse"], "flag --loss=mse: value should be one of <ce|cw>"),
    (["--attack_epsilon=-2"], "--attack_epsilon must be in [0, 255] (0-255 scale), got -2"),
    # Budgets are capped per norm: L-inf at 1, L2 at the image's diagonal (digits: sqrt(8*8*1) = 8).
    (
        ["--eps=8"],
        "--eps=8 is above 1, the largest --norm=linf distance between two images in [0, 1]; "
        "[0, 1] pixel units, e.g. 8/255",
    ),
    (
        ["--norm=l2", "--eps=9"],
        "--eps=9 is above 8, the largest --norm=l2 distance between two images in [0, 1] on 8x8x1 images",
    ),
    (
        ["--norm=l2", "--attack_epsilon=3000"],
        "--attack_epsilon must be in [0, 2040] (0-255 scale) for --norm=l2 on 8x8x1 images, got 3000",
    ),
    (["--norm=l2", "--attack_epsilon=-1"], "--attack_epsilon must be >= 0 (0-255 scale), got -1"),
    (["--norm=l2", "--eps=7.5"], "reached:build_model"),
    (["--norm=l2", "--attack_epsilon=510", "--attack_step_size=255"], "reached:build_model"),
    (["--attack_step_size=300"], "--attack_step_size must be in [0, 255] (0-255 scale), got 300"),
    (["--attack_epsilon=4", "--attack_step_size=10"], "--attack_step_size=10 exceeds 2 x --attack_epsilon=4"),
    (["--restarts=0"], "--restarts must be >= 1, got 0"),
    (["--batch_size=0"], "--batch_size must be >= 1, got 0"),
    (["--limit=0"], "--limit must be >= 1 (or unset), got 0"),
    (["--steps=10,x"], "--steps must be a comma-separated list of integers"),
    (["--split=validation"], "--split='validation' is unknown; choose one of ['test', 'train']"),
    (["--dataset=cifar11"], "--dataset='cifar11' is unknown; choose one of"),
    (["--seed=-1"], "--seed must be in [0, 2**32), got -1"),
    (["--strategy=horovod"], "--strategy='horovod' is unknown"),
    (["--tpu=grpc://127.0.0.1:{port}"], "tpu='grpc://127.0.0.1:{port}': nothing answers"),
    (
        ["--tpu=my-tpu", "--strategy=mirrored"],
        "--tpu=my-tpu needs --strategy=tpu (or no --strategy), got --strategy=mirrored",
    ),
    (["--checkpoint={missing}/ckpt-1"], "--checkpoint={missing}/ckpt-1: no {missing}/ckpt-1.index"),
    (
        ["--workdir={missing}"],
        "{missing}/run_config.json does not exist: --workdir must be a directory written by launch/train.py",
    ),
    (["--workdir={cifar_run}"], "cifar10 not found in {empty}"),
    (["--workdir={imagenet_run}"], "is an ImageNet run: evaluate it with launch/train_imagenet.py --config.mode=eval"),
    ([], "reached:build_model"),
]
NOISE_RUN = ["--workdir={noise_run}"]
CERTIFY = [
    (["--N=0"], "--N must be >= 1, got 0"),
    (["--N0=0"], "--N0 must be >= 1, got 0"),
    (["--alpha=1.5"], "--alpha must be in (0, 1), got 1.5"),
    (["--skip=0"], "--skip must be >= 1, got 0"),
    (["--max=0"], "--max must be -1 (all) or >= 1, got 0"),
    (["--batch=0"], "--batch must be >= 1, got 0"),
    (["--sigma=-1"], "--sigma must be in (0, 10] ([0, 1] pixel units), got -1"),
    (["--sigma=inf"], "--sigma must be in (0, 10] ([0, 1] pixel units), got inf"),
    (["--split=val"], "--split='val' is unknown; choose one of ['test', 'train']"),
    (["--dataset=mnist2"], "--dataset='mnist2' is unknown"),
    (["--radii=a"], "--radii must be a comma-separated list of numbers"),
    (["--radii=-1"], "--radii must be a non-empty list of non-negative numbers"),
    (["--plot_only"], "--plot_only needs --plot_with=a.tsv,b.tsv"),
    (["--plot_with={missing}/a.tsv"], "--plot_with: {missing}/a.tsv does not exist"),
    (["--seed=-1"], "--seed must be in [0, 2**32), got -1"),
    (["--strategy=horovod"], "--strategy='horovod' is unknown"),
    (["--tpu=grpc://127.0.0.1:{port}"], "tpu='grpc://127.0.0.1:{port}': nothing answers"),
    (
        ["--tpu=local", "--strategy=one_device"],
        "--tpu=local needs --strategy=tpu (or no --strategy), got --strategy=one_device",
    ),
    (["--checkpoint={missing}/ckpt-1"], "--checkpoint={missing}/ckpt-1: no {missing}/ckpt-1.index"),
    (["--workdir={digits_run}"], "--sigma is required: {digits_run} was not trained with a smoothing objective"),
    (
        ["--workdir={missing}"],
        "{missing}/run_config.json does not exist: --workdir must be a directory written by launch/train.py",
    ),
    (["--workdir={cifar_run}"], "cifar10 not found in {empty}"),
    (["--workdir={imagenet_run}"], "no ImageNet TFRecords {empty}/validation-*"),
    ([], "reached:build_model"),
]
PREDICT = [
    (["--N=0"], "--N must be >= 1, got 0"),
    (["--alpha=1.5"], "--alpha must be in (0, 1), got 1.5"),
    (["--skip=0"], "--skip must be >= 1, got 0"),
    (["--batch=0"], "--batch must be >= 1, got 0"),
    (["--max=0"], "--max must be -1 (all) or >= 1, got 0"),
    (["--epsilon=-1"], "--epsilon must be in [0, 4096] (1/256 units: 64 means 0.25), got -1"),
    (["--epsilon=5000"], "--epsilon must be in [0, 4096] (1/256 units: 64 means 0.25), got 5000"),
    (["--num_steps=0"], "--num_steps must be >= 1, got 0"),
    (["--num_noise_vec=0"], "--num_noise_vec must be in [1, 4096], got 0"),
    (["--sigma=0"], "--sigma must be in (0, 10] ([0, 1] pixel units), got 0"),
    (["--init_norm_ddn=0"], "--init_norm_ddn must be in (0, 4096] (1/256 units), got 0"),
    (["--gamma_ddn=1"], "--gamma_ddn must be in (0, 1), got 1"),
    (["--attack=cw"], "flag --attack=cw: value should be one of <pgd|ddn>"),
    (["--split=val"], "--split='val' is unknown; choose one of ['test', 'train']"),
    (["--seed=-1"], "--seed must be in [0, 2**32), got -1"),
    (["--strategy=horovod"], "--strategy='horovod' is unknown"),
    (["--tpu=grpc://127.0.0.1:{port}"], "tpu='grpc://127.0.0.1:{port}': nothing answers"),
    (
        ["--tpu=local", "--strategy=mirrored"],
        "--tpu=local needs --strategy=tpu (or no --strategy), got --strategy=mirrored",
    ),
    (["--checkpoint={missing}/ckpt-1"], "--checkpoint={missing}/ckpt-1: no {missing}/ckpt-1.index"),
    (["--workdir="], "--workdir is required"),
    (["--workdir={digits_run}"], "--sigma is required: the run was not trained with a smoothing objective"),
    (["--workdir={missing}"], "{missing}/run_config.json does not exist"),
    (["--workdir={cifar_run}"], "cifar10 not found in {empty}"),
    (["--workdir={imagenet_run}"], "no ImageNet TFRecords {empty}/validation-*"),
    ([], "reached:build_model"),
]
EXPORT = [
    ([], "pass exactly one of --workdir (a training run) or --model_path (a .keras file)"),
    (["--workdir={digits_run}", "--model_path={keras}"], "pass exactly one of --workdir"),
    (["--workdir={digits_run}", "--top_k=0"], "--top_k must be at least 1, got 0"),
    (["--workdir={digits_run}", "--crop_padding=-1"], "--crop_padding must be non-negative, got -1"),
    (["--workdir={digits_run}", "--smoothed_sigma=-1"], "--smoothed_sigma must be in [0, 10] (0: off), got -1"),
    (
        ["--workdir={digits_run}", "--smoothed_sigma=0.25", "--smoothed_n=0"],
        "--smoothed_n must be in [1, 2**31), got 0",
    ),
    (
        ["--workdir={digits_run}", "--smoothed_sigma=0.25", "--smoothed_alpha=1"],
        "--smoothed_alpha must be in (0, 1), got 1",
    ),
    (["--workdir={digits_run}", "--smoothed_sigma=0.25", "--smoothed_batch=0"], "--smoothed_batch must be >= 1, got 0"),
    (["--workdir={digits_run}", "--smoothed_n=10"], "--smoothed_n needs --smoothed_sigma"),
    (["--model_path={keras}", "--smoothed_n=10"], "--smoothed_n needs --smoothed_sigma"),
    (
        ["--workdir={noise_run}", "--smoothed_alpha=2", "--output={ws}/export"],
        "--smoothed_alpha must be in (0, 1), got 2.0",
    ),
    (["--model_path={tmp}/model.h5"], "--model_path={tmp}/model.h5 must be a .keras file"),
    (["--model_path={missing}/model.keras"], "--model_path={missing}/model.keras does not exist"),
    (["--model_path={keras}", "--checkpoint={missing}/ckpt-1"], "--checkpoint applies to --workdir only"),
    (
        ["--workdir={digits_run}", "--checkpoint={missing}/ckpt-1"],
        "--checkpoint={missing}/ckpt-1: no {missing}/ckpt-1.index",
    ),
    (["--workdir={missing}"], "{missing}/run_config.json does not exist"),
    (["--workdir={digits_run}"], "reached:build_model"),
    (["--model_path={keras}"], "reached:load_model"),
]
CONVERT = [
    ([], "--checkpoint is required (a TF1 prefix such as zoo/Res50-silu/Res50-silu)"),
    (["--checkpoint={missing}/Res50", "--output=out.h5"], "--output must end in .keras, got out.h5"),
    (["--checkpoint={missing}/Res50", "--image_size=0"], "--image_size must be in [16, 2048], got 0"),
    (["--checkpoint={missing}/Res50", "--num_classes=0"], "--num_classes must be >= 1, got 0"),
    (["--checkpoint={missing}/Res50", "--model=resnet49"], "--model='resnet49' is unknown"),
    (["--checkpoint={missing}/Res50", "--activation=swishy"], "--activation='swishy' is unknown"),
    (["--checkpoint={missing}/Res50", "--zoo_name=Res51-silu"], "--zoo_name='Res51-silu' is unknown; choose one of"),
    (
        ["--checkpoint={missing}/Res50", "--channel_order=gbr"],
        "flag --channel_order=gbr: value should be one of <rgb|bgr>",
    ),
    (["--checkpoint={missing}/Res50"], "TF1 checkpoint {missing}/Res50 not found (expected {missing}/Res50.index"),
    (["--checkpoint={empty}"], "no TF1 checkpoint in directory {empty} (no *.index file)"),
]
CONVERT_ROBUSTBENCH = [
    ([], "--checkpoint is required (a RobustBench .pt or a .safetensors file)"),
    (["--checkpoint={missing}/w.pt", "--preset=Wang2023Better_WRN-70-16"], "--checkpoint={missing}/w.pt is not a file"),
    (["--checkpoint={a_file}"], "give exactly one of --preset (a RobustBench entry) or --model"),
    (
        ["--checkpoint={a_file}", "--preset=Wang2023Better_WRN-70-16", "--output=out.h5"],
        "--output must end in .keras, got out.h5",
    ),
    (["--checkpoint={a_file}", "--preset=NoSuchEntry"], "--preset='NoSuchEntry' is unknown"),
    (["--checkpoint={a_file}", "--model=resnet50"], "--model='resnet50' is unknown"),
    (
        ["--checkpoint={a_file}", "--model=dm_wide_resnet28_10", "--model_kwargs=[1]"],
        "--model_kwargs must be a JSON object",
    ),
    (
        ["--checkpoint={a_file}", "--preset=Wang2023Better_WRN-70-16", "--image_size=4"],
        "--image_size must be in [8, 2048], got 4",
    ),
    (["--checkpoint={a_file}", "--preset=Wang2023Better_WRN-70-16"], "reached:build_model"),
]
BUILD = [
    (["--output_dir={ws}/records"], "--input_dir is required"),
    (["--input_dir={images}"], "--output_dir is required"),
    (
        ["--input_dir={images}", "--output_dir={ws}/records", "--split=test"],
        "--split='test' is unknown; choose one of ['train', 'validation']",
    ),
    (["--input_dir={images}", "--output_dir={ws}/records", "--num_shards=0"], "--num_shards must be >= 1, got 0"),
    (
        ["--input_dir={images}", "--output_dir={ws}/records", "--num_shards=5"],
        "--num_shards=5 exceeds the 1 images (empty shards); allowed: [1, 1]",
    ),
    (["--input_dir={images}", "--output_dir={ws}/records"], "--num_shards=1024 exceeds the 1 images"),
    (
        ["--input_dir={images}", "--output_dir={a_file}", "--num_shards=1"],
        "--output_dir={a_file} is a file; pass a directory",
    ),
    (["--input_dir={missing}", "--output_dir={ws}/records"], "error: --input_dir={missing} is not a directory"),
    (["--input_dir={empty}", "--output_dir={ws}/records"], "--input_dir={empty} has no class folders"),
    (
        ["--input_dir={images}", "--output_dir={ws}/records", "--labels_file={missing}/synsets.txt"],
        "--labels_file={missing}/synsets.txt does not exist",
    ),
    (["--input_dir={images}", "--output_dir={ws}/records", "--num_shards=1"], "reached:write_tfrecords"),
]
# The trainers: a bad field of the config (file or --config.* override) is one line naming it.
GAUSSIAN, SMOOTHADV = "--config=launch/configs/digits_gaussian.py", "--config=launch/configs/digits_smoothadv.py"
GAUSSIAN_ATTACK = "config.attack.name='pgd' is invalid; allowed: 'none' with objective 'gaussian' (its attack is "
TRAIN = [
    (["--config.atack.eps=8/255"], """error: 'atack' Did you mean "attack" instead of "atack"? (see --helpfull)"""),
    (
        ["--config.attack.eps=300/255"],
        "error: config.attack.eps=1.1764705882352942 is invalid; allowed: a number in [0, 1]",
    ),
    (["--config.attack.eps=8/255"], "reached:build_model"),
    (
        ["--config.objective.name=gaussian", "--config.objective.noise_sd=0.25"],
        f"error: {GAUSSIAN_ATTACK}objective.smoothadv)",
    ),
    (
        ["--config.objective.rat_alpha=2"],
        "error: config.objective.rat_alpha=2.0 is invalid; allowed: a number in [0, 1]",
    ),
    (
        ["--config.objective.name=trades", "--config.attack.steps=0"],
        "error: config.attack.steps=0 is invalid; allowed: an integer >= 1 with objective 'trades' (its attack)",
    ),
    ([GAUSSIAN, "--config.attack.name=pgd"], f"error: {GAUSSIAN_ATTACK}objective.smoothadv)"),
    (
        [GAUSSIAN, "--config.objective.noise_sd=-1"],
        "error: config.objective.noise_sd=-1.0 is invalid; allowed: a number in [0, 10]",
    ),
    (
        [SMOOTHADV, "--config.objective.smoothadv.steps=0"],
        "error: config.objective.smoothadv.steps=0 is invalid; allowed: an integer in [1, inf]",
    ),
    (
        [SMOOTHADV, "--config.objective.smoothadv.eps=-3/256"],
        "error: config.objective.smoothadv.eps=-0.01171875 is invalid; allowed: a number in [0, 16]",
    ),
    (
        [SMOOTHADV, "--config.objective.smoothadv.attack=fgsm"],
        "error: config.objective.smoothadv.attack='fgsm' is invalid; allowed: one of ['ddn', 'pgd']",
    ),
    # AutoAttack options name the config's field, not evaluate.py's --autoattack_options.
    (
        ["--config.eval.autoattack_options=('pgd.steps=3',)"],
        "--config.eval.autoattack_options='pgd' is unknown; choose one of ['apgd-ce'",
    ),
    (
        ["--config.eval.autoattack_options=('square.quries=3',)"],
        "--config.eval.autoattack_options=square.quries=3: options for 'square'",
    ),
    (
        ["--config.model.activation=silu", "--config.model.load_sparta={missing}/sparta.npz"],
        "config.model.activation='silu' is invalid; allowed: 'sparta' with model.load_sparta",
    ),
    (
        ["--config.model.activation=sparta", "--config.model.load_sparta={missing}/sparta.npz"],
        "config.model.load_sparta='{missing}/sparta.npz' is invalid; allowed: an existing sparta.npz",
    ),
    ([], "reached:build_model"),
    ([GAUSSIAN], "reached:build_model"),
    ([SMOOTHADV], "reached:build_model"),
]
# A stand-in of 4 classes (empty shards: checking the data only globs them).
TINY_IMAGENET = [
    "--config.data.data_dir={shards}",
    "--config.data.num_classes=4",
    "--config.data.num_train=48",
    "--config.schedule.batch_size=8",
    "--config.eval.batch_size=8",
]
TRAIN_IMAGENET = [
    (
        [*TINY_IMAGENET, "--config.eval.autoattack_options=apgd-t.n_target_classes=9"],
        "config.eval.autoattack=standard on 4 classes: apgd-t with 9 target classes needs >= 10 classes",
    ),
    (
        [*TINY_IMAGENET, "--config.objective.name=gaussian", "--config.objective.noise_sd=0.5"],
        f"error: {GAUSSIAN_ATTACK}objective.smoothadv)",
    ),
    (TINY_IMAGENET, "reached:build_model"),
]
CASES = (
    [("evaluate", [*RUN, *f], n) for f, n in EVALUATE]
    + [("certify", [*NOISE_RUN, *f], n) for f, n in CERTIFY]
    + [("predict", [*NOISE_RUN, *f], n) for f, n in PREDICT]
    + [("export", f, n) for f, n in EXPORT]
    + [("convert_checkpoint", f, n) for f, n in CONVERT]
    + [("convert_robustbench", f, n) for f, n in CONVERT_ROBUSTBENCH]
    + [("build_imagenet_tfrecords", f, n) for f, n in BUILD]
    # Last: a trainer that gets through validation sets process-wide state (seeds, the Keras policy).
    + [("train", [*f, f"--workdir={{ws}}/train{i}"], n) for i, (f, n) in enumerate(TRAIN)]
    + [("train_imagenet", [*f, f"--workdir={{ws}}/train_imagenet{i}"], n) for i, (f, n) in enumerate(TRAIN_IMAGENET)]
)
CASE_IDS = [
    f"{launcher}:{' '.join(a for a in argv if not a.startswith('--workdir={ws}'))}" for launcher, argv, _ in CASES
]
LAUNCHERS = sorted({launcher for launcher, _, _ in CASES})


@pytest.fixture(scope="module")
def batch(paths, tmp_path_factory):
    """Every case of CASES, run in one process (one TensorFlow import)."""
    cases = [
        {
            "id": case_id,
            "launcher": launcher,
            "argv": [a.format(**paths) for a in argv if a != "NO_BF16"],
            "no_bf16": "NO_BF16" in argv,
        }
        for case_id, (launcher, argv, _) in zip(CASE_IDS, CASES)
    ]
    root = tmp_path_factory.mktemp("batch")
    with open(root / "cases.json", "w") as f:
        json.dump(cases, f)
    proc = subprocess.run(
        [sys.executable, BATCH, str(root / "cases.json"), str(root / "results.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(root / "results.json") as f:
        return json.load(f)


@pytest.mark.parametrize("case", range(len(CASES)), ids=CASE_IDS)
def test_bad_flag_is_one_line_before_expensive_work(batch, paths, case):
    _, argv, needle = CASES[case]
    result = batch[CASE_IDS[case]]
    needle = needle.format(**paths)
    for flag in argv:  # nothing is written where the run or the export would go
        name, _, value = flag.partition("=")
        if name in ("--workdir", "--output") and value.startswith("{ws}"):
            assert not os.path.exists(value.format(**paths)), flag
    if needle.startswith("reached:"):  # a valid command line gets through validation
        assert result["code"] == needle, result["stderr"][-2000:]
        assert result["stderr"] == ""
        return
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["code"] == 2, f"{result['code']}: {result['stderr'][-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), result["stderr"][-2000:]
    if needle.startswith("error: "):  # the whole line
        assert lines[0] == needle
    else:
        assert needle in lines[0], lines[0]
    assert result["seconds"] < 5, result  # in-process: validation only, nothing expensive


def test_every_launcher_is_covered():
    """Every launcher runs cases in the batch, and the trainers end to end below too."""
    launchers = {
        name[:-3]
        for name in os.listdir(os.path.join(ROOT, "launch"))
        if name.endswith(".py") and name not in ("__init__.py", "common.py", "training_setup.py")
    }
    assert set(LAUNCHERS) == launchers
    assert {"train", "train_imagenet"} <= {case[0] for case in E2E}


# === End to end: the real launchers, one subprocess each, with the time to error ===

E2E = [  # (launcher, flags, needle, what)
    (
        "train",
        ["--config.data.name=cifar10", "--config.data.data_dir={empty}", "--workdir={ws}/e2e"],
        "cifar10 not found in {empty}",
        "absent data",
    ),
    (
        "train_imagenet",
        ["--config.data.data_dir={empty}", "--workdir={ws}/e2e_imagenet"],
        "no ImageNet TFRecords {empty}/train-*",
        "absent data",
    ),
    ("evaluate", ["--workdir={cifar_run}"], "cifar10 not found in {empty}", "data gone"),
    ("certify", ["--workdir={missing}"], "{missing}/run_config.json does not exist", "missing workdir"),
    ("predict", ["--workdir={imagenet_run}"], "no ImageNet TFRecords {empty}/validation-*", "data gone"),
    ("export", ["--workdir={digits_run}", "--smoothed_sigma=nan"], "--smoothed_sigma must be in [0, 10]", "bad flag"),
    ("convert_checkpoint", ["--checkpoint={missing}/Res50"], "TF1 checkpoint {missing}/Res50 not found", "absent file"),
    (
        "build_imagenet_tfrecords",
        ["--input_dir={missing}", "--output_dir={ws}/e2e_records"],
        "--input_dir={missing} is not a directory",
        "absent data",
    ),
]


IMPORT_ONLY = "import keras, tensorflow"  # the baseline process of `e2e`


@pytest.fixture(scope="module")
def e2e(paths):
    """Runs E2E two at a time (CI has 2 cores); {launcher: (code, stderr, wall s, CPU s)}.

    The CPU time (user + sys of the launcher process, from wait4) is the work
    done before the error, whatever else the host runs; the wall time adds the
    waits (a network retry would show there) and the host's load.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}

    def launch(case):
        launcher, flags, _, _ = case
        if launcher == IMPORT_ONLY:
            cmd = [sys.executable, "-c", "import keras, tensorflow"]
        else:
            cmd = [sys.executable, os.path.join(ROOT, "launch", f"{launcher}.py"), *(f.format(**paths) for f in flags)]
        with tempfile.TemporaryFile("w+") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=env,
            )
            timer = threading.Timer(120, proc.kill)
            timer.start()
            _, status, usage = os.wait4(proc.pid, 0)
            timer.cancel()
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            return launcher, (proc.returncode, err.read(), wall, usage.ru_utime + usage.ru_stime)

    with futures.ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(launch, [*E2E, (IMPORT_ONLY, [], "", "baseline")]))
    print("\ntime to error (s) of the real launchers, 2 at a time: wall / CPU")
    for launcher, _, _, what in [*E2E, (IMPORT_ONLY, [], "", "baseline")]:
        print(f"  {launcher:26s} {what:16s} {results[launcher][2]:5.1f} / {results[launcher][3]:4.1f}")
    return results


@pytest.mark.parametrize("case", E2E, ids=[c[0] for c in E2E])
def test_launcher_fails_in_seconds_with_one_line(e2e, paths, case):
    launcher, _, needle, _ = case
    code, stderr, wall, cpu = e2e[launcher]
    lines = [line for line in stderr.splitlines() if line.strip() and not NOISE.match(line)]
    assert code == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert needle.format(**paths) in lines[0], lines[0]
    # Nearly all of it is `import tensorflow`: 5-8 s of CPU on an idle 2-core host, 10-12 s on a loaded one
    # (measured), so the bound is the same process's import alone (run beside the launchers, under the same
    # load) plus 5 s. The wall bound only catches hangs and retry back-offs: load stretches the import several-fold.
    import_cpu = e2e[IMPORT_ONLY][3]
    assert cpu < import_cpu + 5, f"{launcher}: {cpu:.1f} s of CPU before the error ({import_cpu:.1f} s to import)"
    assert wall < 90, f"{launcher}: {wall:.1f} s to error"
