"""Safe loading: what sat_tf reads from disk runs no code from the file.

- `.keras` archives of every model class and every registry activation reload
  with `safe_mode=True` in a fresh process, outputs equal. Their config.json
  holds only registered `sat_tf>` classes and Keras classes with plain values:
  no Lambda, lambda bytecode, marshal or pickle.
- Crafted archives are refused by `keras.saving.load_model(safe_mode=True)`
  and by launch/export.py --model_path, and their payload never runs: a
  Python lambda, a class of a foreign module (Keras imports only keras*
  modules, so the module is never imported) and a non-modeling Keras API.
- Every `load_model(` call in the repository passes `safe_mode=True`; no
  pickle/marshal/eval/yaml.load, and no `np.load(allow_pickle=True)`.
- The exported SavedModel holds TF graphs only: no PyFunc/EagerPyFunc ops,
  no file I/O op reachable from a signature, no pickled objects; every
  signature runs where sat_tf is never imported.

How custom classes load: every sat_tf layer/model class is decorated with
`keras.saving.register_keras_serializable(package="sat_tf")`, so a .keras
config names it `"registered_name": "sat_tf>ResNet"`. Keras resolves that
only from its registry (filled when the module defining the class is
imported) and imports nothing named in the file except keras* modules. So a
process must `import sat_tf.models` (which imports the activations, Sparta
and every model class) before `keras.saving.load_model`; without it the load
fails with "Could not locate class ...". launch/export.py does exactly this.

One fresh process (started once, in the fixture) does all the reloading. The
fast run covers one registry entry per model class and block type; the other
entries differ only in depth/width numbers in the same config keys and run
with --run_exhaustive, outside CI: together ~5 minutes of building and saving
on 2 cores (EfficientNet-L2 is never built: 480M weights, a 1.9 GB file).
"""

import ast
import functools
import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, randomise_bn_state

from sat_tf import activations, export, models

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ATOL = 1e-6
# One entry per model class and block type, cheap at a tiny input size.
FAST_MODELS = {
    "digits_cnn": (8, 8, 1),  # DigitsCNN
    "mnist_resnet": (28, 28, 1),  # MnistResNet
    "mnist_resnet_fast": (28, 28, 1),  # MnistResNet, stride-2 stem
    "resnet18": (32, 32, 3),  # ResNet (same config keys for ResNeXt: groups, bottleneck_width)
    "resnet18_cifar": (16, 16, 3),  # CifarResNet
    "preact_resnet18": (16, 16, 3),  # PreActResNet
    "wide_resnet28_10": (16, 16, 3),  # WideResNet
    "efficientnet_b0": (32, 32, 3),  # EfficientNet (MBConv, SE, stochastic depth)
}
CIFAR_MODELS = {"resnet18_cifar", "resnet110", "preact_resnet18", "wide_resnet28_10", "wide_resnet34_10"}
# 480M weights: a 1.9 GB .keras file. Same EfficientNet class and config keys
# as b0-b8/l1 (tests/test_efficientnet.py checks its table and weight count).
UNBUILT = {"efficientnet_l2"}
PY_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
FILE_OPS = {
    "ReadFile",
    "WriteFile",
    "MatchingFiles",
    "Save",
    "SaveV2",
    "SaveSlices",
    "Restore",
    "RestoreV2",
    "RestoreSlice",
    "MergeV2Checkpoints",
    "ShardedFilename",
    "PrintV2",
    "ImmutableConst",
    "TFRecordDataset",
    "TFRecordDatasetV2",
    "FixedLengthRecordDatasetV2",
    "TextLineDataset",
    "CreateSummaryFileWriter",
    "WriteSummary",
}
SMOOTHED = export.SmoothedServing(0.25, n=8, batch_size=8)
# Keras' own .keras writer triggers NumPy 2's `__array__(copy=...)` warning.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

RELOAD = """
import json, os, sys
import numpy as np, tensorflow as tf, keras

def sat_tf_modules():
    return sorted(m for m in sys.modules if m == "sat_tf" or m.startswith("sat_tf."))

root = sys.argv[1]
manifest = json.load(open(os.path.join(root, "manifest.json")))
report = {}
if "saved_model" in manifest:  # every signature, sat_tf never imported
    loaded = tf.saved_model.load(manifest["saved_model"])
    data = np.load(os.path.join(root, "signature_inputs.npz"))
    png = open(os.path.join(root, "image.png"), "rb").read()
    served = {}
    for name, fn in loaded.signatures.items():
        kwargs = {
            key: tf.constant([png, png] if spec.dtype == tf.string else data[spec.dtype.name])
            for key, spec in fn.structured_input_signature[1].items()
        }
        for key, value in fn(**kwargs).items():
            served[f"{name}/{key}"] = value.numpy()
    np.savez(os.path.join(root, "served.npz"), **served)
    report["signatures"] = sorted(loaded.signatures)
    report["sat_tf_after_saved_model"] = sat_tf_modules()
archives = manifest["archives"]
try:  # registered sat_tf classes are unknown until sat_tf registers them
    keras.saving.load_model(next(iter(archives.values())), safe_mode=True)
    report["without_sat_tf"] = "loaded"
except Exception as err:
    report["without_sat_tf"] = f"{type(err).__name__}: {err}"
report["sat_tf_before_import"] = sat_tf_modules()
import sat_tf.models  # registers every sat_tf class (models, layers, activations, Sparta)
inputs = np.load(os.path.join(root, "inputs.npz"))
outputs, classes = {}, {}
for key, path in archives.items():
    model = keras.saving.load_model(path, safe_mode=True)
    outputs[key] = model(inputs[key], training=False).numpy()
    classes[key] = f"{type(model).__module__}.{type(model).__name__}"
np.savez(os.path.join(root, "outputs.npz"), **outputs)
report["classes"] = classes
json.dump(report, open(os.path.join(root, "report.json"), "w"))
print("ok")
"""


def model_shape(name):
    if name in FAST_MODELS:
        return FAST_MODELS[name]
    return (16, 16, 3) if name in CIFAR_MODELS else (32, 32, 3)


def save_archive(model, path, inputs, expected, key):
    """Saves `model` to `path`; records a batch and the Keras outputs under `key`."""
    randomise_bn_state(model)
    model.save(path)
    x = np.random.default_rng(0).uniform(size=(2, *model.input_shape[1:])).astype(np.float32)
    inputs[key] = x
    expected[key] = model(x, training=False).numpy()
    return str(path)


def reload_in_fresh_process(root, archives, inputs, saved_model=None):
    """Starts RELOAD on `archives` {key: path}; `finish` waits for it."""
    manifest = {"archives": archives}
    if saved_model:
        manifest["saved_model"] = saved_model
    (root / "manifest.json").write_text(json.dumps(manifest))
    np.savez(root / "inputs.npz", **inputs)
    return subprocess.Popen(
        [sys.executable, "-c", RELOAD, str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=str(root),
    )


def finish(proc, root):
    """(report, outputs) of a `reload_in_fresh_process` run."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "ok" in out, err[-5000:]
    report = json.loads((root / "report.json").read_text())
    return report, dict(np.load(root / "outputs.npz"))


def lambda_archive(path, marker):
    """A model whose Lambda creates `marker` when run (Keras runs it to rebuild the graph)."""
    inputs = keras.Input((4,))
    payload = keras.layers.Lambda(
        lambda x, marker: (open(marker, "w").close(), x)[1], arguments={"marker": str(marker)}
    )
    keras.Model(inputs, keras.layers.Dense(2)(payload(inputs))).save(path)
    os.remove(marker)  # building the model ran the payload once
    return str(path)


def rewrite_config(source, target, edit):
    """Copies the .keras zip `source` to `target` with `edit(config)` applied."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return str(target)


def find_layer(config, class_name):
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == class_name)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Archives of FAST_MODELS and of digits_cnn with every activation, a
    SavedModel with every signature, the Lambda archive; reloaded elsewhere."""
    root = tmp_path_factory.mktemp("safe_loading")
    keras.utils.set_random_seed(0)
    marker = root / "lambda_ran"
    evil = lambda_archive(root / "lambda.keras", marker)
    # The launcher runs alongside the fixture's work (2 cores).
    launcher = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "launch", "export.py"),
            f"--model_path={evil}",
            f"--output={root / 'evil_saved_model'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    archives, inputs, expected = {}, {}, {}
    for name, shape in FAST_MODELS.items():
        model = models.build_model(name, input_shape=shape, num_classes=3)
        archives[f"model/{name}"] = save_archive(model, root / f"{name}.keras", inputs, expected, f"model/{name}")
    for name in activations.list_activations():
        model = models.build_model("digits_cnn", activation=name, num_classes=3)
        key = f"activation/{name}"
        archives[key] = save_archive(model, root / f"act_{name}.keras", inputs, expected, key)
    digits = keras.saving.load_model(archives["model/digits_cnn"], safe_mode=True)
    saved_model = export.export_saved_model(digits, str(root / "saved_model"), top_k=3, smoothed=SMOOTHED)
    rng = np.random.default_rng(1)
    signature_inputs = {
        "uint8": rng.integers(0, 256, size=(2, 8, 8, 1)).astype(np.uint8),
        "float32": rng.uniform(size=(2, 8, 8, 1)).astype(np.float32),
    }
    np.savez(root / "signature_inputs.npz", **signature_inputs)
    (root / "image.png").write_bytes(tf.io.encode_png(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).numpy())
    proc = reload_in_fresh_process(root, archives, inputs, saved_model)
    report, outputs = finish(proc, root)
    out, err = launcher.communicate(timeout=600)
    return {
        "root": root,
        "archives": archives,
        "expected": expected,
        "report": report,
        "outputs": outputs,
        "digits": digits,
        "signature_inputs": signature_inputs,
        "served": dict(np.load(root / "served.npz")),
        "marker": marker,
        "evil": evil,
        "launcher": (launcher.returncode, out, err),
    }


def _model_params():
    params = []
    for name in models.list_models():
        if name in UNBUILT:
            params.append(pytest.param(name, marks=pytest.mark.skip(reason="480M weights: a 1.9 GB .keras file")))
        elif name not in FAST_MODELS:
            params.append(pytest.param(name, marks=pytest.mark.exhaustive))
        else:
            params.append(name)
    return params


@pytest.mark.parametrize("name", _model_params())
def test_every_model_reloads_in_safe_mode_in_a_fresh_process(built, name, tmp_path):
    key = f"model/{name}"
    if name in FAST_MODELS:
        report, outputs, expected = built["report"], built["outputs"], built["expected"]
    else:  # --run_exhaustive: its own archive and process
        inputs, expected = {}, {}
        model = models.build_model(name, input_shape=model_shape(name), num_classes=3)
        archive = save_archive(model, tmp_path / f"{name}.keras", inputs, expected, key)
        del model
        report, outputs = finish(reload_in_fresh_process(tmp_path, {key: archive}, inputs), tmp_path)
    assert report["classes"][key].startswith("sat_tf.models.")
    np.testing.assert_allclose(outputs[key], expected[key], rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("name", activations.list_activations())
def test_every_activation_reloads_in_safe_mode_in_a_fresh_process(built, name):
    key = f"activation/{name}"
    assert built["report"]["classes"][key] == "sat_tf.models.digits.DigitsCNN"
    np.testing.assert_allclose(built["outputs"][key], built["expected"][key], rtol=1e-5, atol=ATOL)


def test_archives_need_sat_tf_registered_and_import_nothing(built):
    report = built["report"]
    assert report["sat_tf_before_import"] == []  # Keras imported no sat_tf module itself
    assert "Could not locate class" in report["without_sat_tf"]
    assert "register_keras_serializable" in report["without_sat_tf"]


def code_entries(node, path="config"):
    """Where a config holds code: Lambda layers, serialized lambdas/bytecode,
    or a module outside keras/sat_tf."""
    found = []
    if isinstance(node, dict):
        if node.get("class_name") in ("Lambda", "__lambda__", "TFOpLambda"):
            found.append(f"{path}: class_name={node['class_name']}")
        module = node.get("module")
        if isinstance(module, str) and module.split(".")[0] not in ("keras", "sat_tf", "builtins"):
            found.append(f"{path}: module={module}")
        registered = node.get("registered_name")
        if isinstance(registered, str) and ">" in registered and not registered.startswith("sat_tf>"):
            found.append(f"{path}: registered_name={registered}")
        for key, value in node.items():
            if key in ("function", "code", "bytecode", "closure", "output_shape_fn"):
                found.append(f"{path}.{key}")
            found += code_entries(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += code_entries(value, f"{path}[{i}]")
    elif isinstance(node, str) and any(word in node for word in ("marshal", "pickle", "__lambda__")):
        found.append(f"{path}: {node[:60]!r}")
    return found


def archive_config(path):
    with zipfile.ZipFile(path) as archive:
        assert not [n for n in archive.namelist() if n.endswith((".pkl", ".pickle", ".py", ".pyc"))]
        return json.loads(archive.read("config.json"))


def test_archive_configs_hold_no_code(built):
    for key, path in built["archives"].items():
        config = archive_config(path)
        assert code_entries(config) == [], key
        assert config["registered_name"].startswith("sat_tf>"), key
    # The walk finds the crafted one.
    assert any("Lambda" in entry for entry in code_entries(archive_config(built["evil"])))


def test_a_python_lambda_is_refused_and_never_runs(built):
    marker = built["marker"]
    with pytest.raises(ValueError, match="`function` is a Python lambda"):
        keras.saving.load_model(built["evil"], safe_mode=True)
    assert not marker.exists()
    # Control: the payload is live; only safe mode stops it.
    keras.saving.load_model(built["evil"], safe_mode=False)
    assert marker.exists()
    marker.unlink()


def test_a_foreign_module_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_payload.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Payload:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "dense.keras")

    def point_at_payload(config):
        dense = find_layer(config, "Dense")
        dense.update(module="evil_payload", class_name="Payload", registered_name="evil_payload>Payload")

    crafted = rewrite_config(tmp_path / "dense.keras", tmp_path / "foreign.keras", point_at_payload)
    with pytest.raises(TypeError, match="Could not locate class 'Payload'"):
        keras.saving.load_model(crafted, safe_mode=True)
    assert not marker.exists() and "evil_payload" not in sys.modules


def test_a_non_modeling_keras_api_is_refused(built, tmp_path):
    def call_get_file(config):
        find_layer(config, "Lambda")["config"]["function"] = {
            "module": "keras.utils",
            "class_name": "function",
            "config": "get_file",
            "registered_name": None,
        }

    crafted = rewrite_config(built["evil"], tmp_path / "get_file.keras", call_get_file)
    with pytest.raises(ValueError, match="Non-modeling APIs are disallowed"):
        keras.saving.load_model(crafted, safe_mode=True)


def test_launcher_refuses_a_lambda_archive(built):
    returncode, _, err = built["launcher"]
    assert returncode != 0
    assert "`function` is a Python lambda" in err and "safe_mode=False" in err
    assert not built["marker"].exists()
    assert not (built["root"] / "evil_saved_model").exists()


def test_activation_configs_from_run_config_are_deserialized_safely(built):
    # launch/ rebuilds models from run_config.json kwargs; an activation dict
    # goes through keras.saving.deserialize_keras_object, safe by default.
    lambda_layer = find_layer(archive_config(built["evil"]), "Lambda")
    with pytest.raises(ValueError, match="`function` is a Python lambda"):
        activations.get_activation(lambda_layer)
    assert not built["marker"].exists()


# === Source scans ===

SOURCE_DIRS = ("sat_tf", "models", "attacks", "launch", "benchmarks", "tests")
PACKAGE_DIRS = ("sat_tf", "models", "attacks", "launch")


def python_sources(dirs):
    """(path, syntax tree) of every .py file under `dirs` and notebook code cell."""
    return _parsed(tuple(dirs))


@functools.cache
def _parsed(dirs):
    return list(_walk_sources(dirs))


def _walk_sources(dirs):
    for top in dirs:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for fname in sorted(files):
                path = os.path.join(folder, fname)
                if fname.endswith(".py"):
                    with open(path) as f:
                        yield path, ast.parse(f.read())
    for folder, _, files in os.walk(os.path.join(ROOT, "notebooks")):
        for fname in sorted(f for f in files if f.endswith(".ipynb")):
            path = os.path.join(folder, fname)
            with open(path) as f:
                cells = json.load(f)["cells"]
            for i, cell in enumerate(cells):
                if cell["cell_type"] == "code":
                    source = "".join(cell["source"])
                    source = "\n".join(
                        "" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines()
                    )
                    yield f"{path}#cell{i}", ast.parse(source)


def calls(tree, name):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == name:
                yield node


def keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def where(path, node):
    return f"{os.path.relpath(path, ROOT)}:{node.lineno}"


def test_every_load_model_call_uses_safe_mode():
    loaders, unsafe = [], []
    for path, tree in python_sources(SOURCE_DIRS):
        if path == os.path.abspath(__file__):  # the control above loads with safe_mode=False on purpose
            continue
        for call in calls(tree, "load_model"):
            loaders.append(where(path, call))
            value = keyword(call, "safe_mode")
            if not (isinstance(value, ast.Constant) and value.value is True):
                unsafe.append(where(path, call))
        unsafe += [where(path, call) for call in calls(tree, "enable_unsafe_deserialization")]
    assert unsafe == []
    # The only loaders outside tests/ are launch/export.py --model_path, sat_tf.export.load_any_model
    # (launch/evaluate.py --model_path) and launch/training_setup.py (a .keras init_checkpoint).
    allowed = (
        os.path.join("launch", "export.py"),
        os.path.join("sat_tf", "export", "__init__.py"),
        os.path.join("launch", "training_setup.py"),
    )
    outside = [p for p in loaders if not p.startswith("tests" + os.sep)]
    assert outside == [p for p in loaders if p.startswith(allowed)] and len(outside) == 3


def test_no_pickle_eval_or_unsafe_numpy_loads():
    found = []
    banned_modules = {"pickle", "cPickle", "marshal", "dill", "cloudpickle", "shelve", "joblib"}
    for path, tree in python_sources(SOURCE_DIRS):
        if not path.startswith(tuple(os.path.join(ROOT, d) + os.sep for d in PACKAGE_DIRS)):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [where(path, node) for a in node.names if a.name.split(".")[0] in banned_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in banned_modules:
                found.append(where(path, node))
        for name in ("eval", "exec"):  # the builtins, not `model.eval()`
            found += [where(path, c) for c in calls(tree, name) if isinstance(c.func, ast.Name)]
        for name in ("unsafe_load", "py_function", "numpy_function", "py_func"):
            found += [f"{where(path, c)} {name}" for c in calls(tree, name)]
        for call in calls(tree, "load"):  # yaml.load / pickle.load style
            owner = getattr(call.func, "value", None)
            if getattr(owner, "id", None) in ("yaml", "pickle", "marshal", "dill"):
                found.append(where(path, call))
        # np.load in the package reads user paths: explicit allow_pickle=False.
        for call in calls(tree, "load"):
            if getattr(getattr(call.func, "value", None), "id", None) in ("np", "numpy"):
                value = keyword(call, "allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"{where(path, call)} np.load without allow_pickle=False")
    # Everywhere else (tests, benchmarks) NumPy's default allow_pickle=False must not be overridden.
    for path, tree in python_sources(SOURCE_DIRS):
        for call in calls(tree, "load"):
            value = keyword(call, "allow_pickle")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{where(path, call)} allow_pickle")
    assert found == []


# === SavedModel ===


def saved_model_proto(path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def functions_called(node_defs):
    names = set()
    for node in node_defs:
        names.add(node.op)  # a library function called directly
        for value in node.attr.values():
            if value.HasField("func"):
                names.add(value.func.name)
            names.update(f.name for f in value.list.func)
    return names


def reachable_ops(graph_def, output_names):
    """Op types that can run to compute `output_names` ("node:0"): the graph
    nodes they depend on and every function those call, transitively."""
    nodes = {node.name: node for node in graph_def.node}
    library = {f.signature.name: f for f in graph_def.library.function}
    todo = [name.split(":")[0] for name in output_names]
    seen_nodes, seen_functions, ops = set(), set(), set()
    while todo:
        name = todo.pop()
        if name in seen_nodes:
            continue
        seen_nodes.add(name)
        node = nodes[name]
        ops.add(node.op)
        todo += [i.lstrip("^").split(":")[0] for i in node.input]
        pending = list(functions_called([node]) & set(library))
        while pending:
            fname = pending.pop()
            if fname in seen_functions:
                continue
            seen_functions.add(fname)
            body = library[fname].node_def
            ops.update(n.op for n in body)
            pending += list(functions_called(body) & set(library))
    return ops


def test_saved_model_holds_no_python_and_signatures_touch_no_files(built):
    path = str(built["root"] / "saved_model")
    proto = saved_model_proto(path)
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        all_ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
        assert not all_ops & PY_OPS
        assert set(meta_graph.signature_def) == {*export.SIGNATURES, "serve", "__saved_model_init_op"}
        for name, signature in meta_graph.signature_def.items():
            ops = reachable_ops(graph, [t.name for t in signature.outputs.values()])
            assert "Conv2D" in ops or name == "__saved_model_init_op", name  # the walk reaches the model
            assert not ops & (PY_OPS | FILE_OPS), (name, ops & (PY_OPS | FILE_OPS))
        # Checkpoint I/O exists only for the saver (tf.saved_model.load restores variables with it).
        assert all_ops & FILE_OPS <= {"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"}
        # The object graph: TF's typed nodes only (Keras 3 writes no pickled or
        # JSON-encoded Python objects; tf.saved_model.load unpickles nothing).
        for node in meta_graph.object_graph_def.nodes:
            kind = node.WhichOneof("kind")
            assert kind in {
                "user_object",
                "variable",
                "function",
                "bare_concrete_function",
                "asset",
                "constant",
                "resource",
                "captured_tensor",
            }, kind
            if kind == "user_object":
                assert node.user_object.identifier in {
                    "_generic_user_object",
                    "signature_map",
                    "trackable_list_wrapper",
                    "trackable_dict_wrapper",
                    "trackable_tuple_wrapper",
                }, node.user_object.identifier
                assert not node.user_object.metadata
    files = sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)
    assert [f for f in files if not f.startswith("variables/")] == [
        "assets.extra/predict_smoothed.json",
        "fingerprint.pb",
        "saved_model.pb",
    ]
    assert export.smoothed_settings(path)["n"] == SMOOTHED.n  # plain JSON


def test_every_signature_runs_without_sat_tf(built):
    report, served = built["report"], built["served"]
    assert report["sat_tf_after_saved_model"] == []
    assert set(report["signatures"]) == {*export.SIGNATURES, "serve"}
    for name in report["signatures"]:
        assert served[f"{name}/classes"].shape == (2,), name
    # Values: tests/test_export.py and tests/test_export_smoothed.py check them
    # in depth; here the float and uint8 paths against the Keras model.
    digits, x = built["digits"], built["signature_inputs"]
    np.testing.assert_allclose(served["serve_float/logits"], digits(x["float32"], training=False), atol=1e-5)
    np.testing.assert_allclose(
        served["serving_default/logits"], digits(x["uint8"].astype(np.float32) / 255.0, training=False), atol=1e-5
    )
    assert served["predict_smoothed/counts"].sum(axis=-1).tolist() == [SMOOTHED.n] * 2
