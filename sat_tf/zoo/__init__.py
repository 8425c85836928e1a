"""The released SAT model zoo: TF1 checkpoints -> our Keras models, and back.

`load_tf1_checkpoint(model, prefix)` maps every weight of a `sat_tf.models`
ResNet/ResNeXt or EfficientNet to its name in SAT's TF1 checkpoints
(tensorpack `conv0/W`, `group0/block0/conv1/bn/mean/EMA`; TPU
`efficientnet-b0/blocks_0/...` with 5-D BN parameters and EMA shadows),
checks the shapes, assigns them and returns a `ConversionReport`.
`inspect_checkpoint` infers the architecture and `write_tf1_checkpoint`
writes the inverse. `FAMILIES` holds the per-family mapping, `ZOO`
(`sat_tf.zoo.presets`) the released downloads. Nothing is downloaded: fetch
the files with SAT's `download_resnet.py` / `download_efficientnet.py`. The
names read, in detail: docs/module_notes.md.

Channel order: our models take RGB pixels in [0, 1]. The default
`channel_order` is the one SAT's released code feeds each family. ResNets:
BGR. SAT's `ResNet/main.py` says "Our model expects BGR images instead of
RGB" (its `--eval-directory` path flips RGB files to BGR), its evaluation
loader reads with `cv2.imread` (BGR) and `third_party/imagenet_utils.py` sets
`image_bgr = True` ("If using DataFlow, then it should be BGR").
EfficientNets: RGB (the TPU input pipeline decodes JPEGs as RGB).
`channel_order="bgr"` flips the stem kernel's input channels, so the
converted model still takes RGB and computes exactly the function the
checkpoint computes on BGR (SAT's `x * 2 - 1` is the same on every channel).
"""

import dataclasses
import glob
import os
import re

import numpy as np
import tensorflow as tf

from sat_tf.zoo.presets import ZOO, zoo_entry  # noqa: F401  (public: sat_tf.zoo.ZOO)

EMA_SUFFIX = "/ExponentialMovingAverage"
# Optimizer slots, counters and tensorpack's moving summaries: never weights.
_TRAINING_STATE = re.compile(
    r"(^|/)(global_step|learning_rate|lr|beta[12]_power)(_\d+)?$"
    r"|/(Momentum|RMSProp|Adam|Adagrad|AdagradDA|Ftrl|LARS|AccumGrad)(_\d+)?$"
    r"|^EMA/"
)
_RESNET_BN = {"gamma": "gamma", "beta": "beta", "moving_mean": "mean/EMA", "moving_variance": "variance/EMA"}


@dataclasses.dataclass
class ConversionReport:
    """What `load_tf1_checkpoint` did. Entries read `model_weight <- checkpoint_name`.

    `missing_in_checkpoint`: model weights without a checkpoint tensor;
    `shape_mismatches`: both exist but do not fit (either makes `ok` False);
    `unused_in_checkpoint`: checkpoint tensors no model weight maps to (say,
    a different activation or architecture); `ignored_training_state`:
    optimizer slots, counters, tensorpack's `EMA/` summaries and the EMA
    shadows not loaded (`use_ema=False`); `ema_missing`: with `use_ema`,
    weights that had no shadow and got their raw value.
    """

    family: str
    checkpoint: str
    loaded: list = dataclasses.field(default_factory=list)
    missing_in_checkpoint: list = dataclasses.field(default_factory=list)
    unused_in_checkpoint: list = dataclasses.field(default_factory=list)
    ignored_training_state: list = dataclasses.field(default_factory=list)
    ema_used: bool = False
    ema_missing: list = dataclasses.field(default_factory=list)  # use_ema, but no shadow
    shape_mismatches: list = dataclasses.field(default_factory=list)
    channel_order: str = "rgb"

    @property
    def ok(self):
        return not (self.missing_in_checkpoint or self.shape_mismatches)

    def summary(self, max_items=5):
        def items(values):
            head = ", ".join(values[:max_items])
            return head + (f", ... (+{len(values) - max_items} more)" if len(values) > max_items else "")

        lines = [
            f"{self.family} checkpoint {self.checkpoint}",
            f"  loaded {len(self.loaded)} weights; channel order {self.channel_order}; "
            f"EMA shadows {'used' if self.ema_used else 'not used'}",
        ]
        for label, values in (
            ("missing in checkpoint", self.missing_in_checkpoint),
            ("shape mismatches", self.shape_mismatches),
            ("unused checkpoint tensors", self.unused_in_checkpoint),
            ("no EMA shadow (raw value loaded)", self.ema_missing),
        ):
            if values:
                lines.append(f"  {label} ({len(values)}): {items(values)}")
        if self.ignored_training_state:
            lines.append(f"  ignored training state: {len(self.ignored_training_state)} tensors")
        return "\n".join(lines)


# === Name mapping ===


@dataclasses.dataclass(frozen=True)
class _Entry:
    variable: object  # a keras.Variable
    name: str  # checkpoint name
    kind: str  # "tensor", "stem_kernel", "bn", "scalar"

    @property
    def path(self):
        return self.variable.path


def _resnet_scope(layer_name):
    m = re.fullmatch(r"group(\d+)_block(\d+)(?:_(\w+))?", layer_name)
    if not m:
        return layer_name
    scope = f"group{m[1]}/block{m[2]}"
    return f"{scope}/{m[3]}" if m[3] else scope


def _resnet_entries(model, scope=None):
    del scope  # tensorpack names have no model scope
    import keras

    entries, unmapped = [], []
    for layer in model.layers:
        for var in layer.weights:
            name = None
            if isinstance(layer, keras.layers.Conv2D) and var.name == "kernel":
                kind = "stem_kernel" if layer.name == "conv0" else "tensor"
                name = f"{_resnet_scope(layer.name)}/W"
            elif isinstance(layer, keras.layers.BatchNormalization) and layer.name.endswith("_bn"):
                kind, name = "bn", f"{_resnet_scope(layer.name[:-3])}/bn/{_RESNET_BN[var.name]}"
            elif var.name == "beta_raw" and layer.name.endswith("_act"):
                kind, name = "scalar", f"{_resnet_scope(layer.name[:-4])}/smoothrelu_beta"
            elif isinstance(layer, keras.layers.Dense) and layer.name == "linear":
                kind, name = "tensor", {"kernel": "linear/W", "bias": "linear/b"}[var.name]
            if name is None:
                unmapped.append(var.path)
            else:
                entries.append(_Entry(var, name, kind))
    return entries, unmapped


_EFFICIENTNET_LAYER = re.compile(
    r"(stem|head)_(conv|bn|dense)|block(\d+)_(expand_conv|expand_bn|dwconv|dwconv_bn|se_reduce|se_expand"
    r"|project_conv|project_bn)"
)


def _efficientnet_entries(model, scope):
    names = {layer.name for layer in model.layers}
    entries, unmapped = [], []
    for layer in model.layers:
        m = _EFFICIENTNET_LAYER.fullmatch(layer.name)
        for var in layer.weights:
            if m is None or var.name not in ("kernel", "depthwise_kernel", "bias", *_RESNET_BN):
                unmapped.append(var.path)
                continue
            if m[1]:  # stem / head
                part = {"conv": "conv2d", "bn": "tpu_batch_normalization", "dense": "dense"}[m[2]]
                base = f"{scope}/{m[1]}/{part}"
            else:
                expand = f"block{m[3]}_expand_conv" in names
                part = {
                    "expand_conv": "conv2d",
                    "expand_bn": "tpu_batch_normalization",
                    "dwconv": "depthwise_conv2d",
                    "dwconv_bn": "tpu_batch_normalization" + ("_1" if expand else ""),
                    "se_reduce": "se/conv2d",
                    "se_expand": "se/conv2d_1",
                    "project_conv": "conv2d_1" if expand else "conv2d",
                    "project_bn": "tpu_batch_normalization_" + ("2" if expand else "1"),
                }[m[4]]
                base = f"{scope}/blocks_{m[3]}/{part}"
            kind = "stem_kernel" if layer.name == "stem_conv" else "tensor"
            kind = "bn" if var.name in _RESNET_BN else kind
            leaf = "depthwise_kernel" if m[4] == "dwconv" else var.name  # Keras 3 calls it `kernel`
            entries.append(_Entry(var, f"{base}/{leaf}", kind))
    return entries, unmapped


def _efficientnet_scope_of_model(model):
    suffix = model.name.lower().split("efficientnet", 1)[-1].strip("_-")
    suffix = {"l1": "bL1", "bl1": "bL1"}.get(suffix, suffix)
    return f"efficientnet-{suffix}"


def _efficientnet_model_name(variant):
    """Registered model name of an EfficientNet variant ("b0", "bL1", "l2")."""
    from sat_tf import models

    v = variant.lower()
    candidates = [f"efficientnet_{v}"]
    if v in ("bl1", "l1", "l2", "bl2"):
        candidates = [f"efficientnet_{v.lstrip('b')}", f"efficientnet_b{v.lstrip('b')}"]
    known = models.list_models("efficientnet")
    return next((c for c in candidates if c in known), candidates[0])


# === Reading ===


def resolve_checkpoint(path):
    """A TF1 checkpoint prefix from a prefix or a directory (one `*.index`, or a
    `checkpoint` state file). Raises FileNotFoundError naming the path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        found = sorted(glob.glob(os.path.join(path, "*.index")))
        if len(found) == 1:
            return found[0][: -len(".index")]
        detail = "no *.index file" if not found else f"{len(found)} *.index files; pass one prefix"
        raise FileNotFoundError(f"no TF1 checkpoint in directory {path} ({detail})")
    if path.endswith(".index") or ".data-" in path or path.endswith(".meta"):
        path = re.sub(r"(\.index|\.meta|\.data-\d+-of-\d+)$", "", path)
    if not os.path.exists(path + ".index"):
        raise FileNotFoundError(f"TF1 checkpoint {path} not found (expected {path}.index and .data-*)")
    return path


def _read_shapes(prefix):
    return tf.train.load_checkpoint(prefix).get_variable_to_shape_map()


def detect_family(names):
    """The `FAMILIES` key whose checkpoints hold these variable names."""
    names = set(names)
    for name, spec in FAMILIES.items():
        if spec.owns(names):
            return name
    raise ValueError(
        "cannot tell the checkpoint family: no `conv0/W` (SAT ResNet) and no "
        "`efficientnet-*/` names (SAT EfficientNet); pass family='resnet'|'efficientnet'"
    )


def _efficientnet_scope(names):
    scopes = sorted({n.split("/", 1)[0] for n in names if n.startswith("efficientnet-")})
    if len(scopes) != 1:
        raise ValueError(f"expected one `efficientnet-*` scope in the checkpoint. Received: {scopes}")
    return scopes[0]


def _fit(array, variable, kind):
    """The checkpoint array in the variable's shape, or None if it does not fit."""
    target = tuple(variable.shape)
    if kind == "bn" or kind == "scalar":  # 5-D [1,1,1,1,C] BN params, [1] smoothrelu_beta
        if array.size == int(np.prod(target)) and all(d == 1 for d in array.shape[:-1] or ()):
            return array.reshape(target)
        return None
    return array if tuple(array.shape) == target else None


def load_tf1_checkpoint(model, checkpoint_path, *, family="auto", use_ema=False, channel_order=None, strict=True):
    """Loads a SAT TF1 checkpoint (ResNet/ResNeXt or EfficientNet) into `model`.

    Every model weight (kernels, biases, BN gamma/beta/moving stats,
    SmoothReLU `beta_raw`) is mapped to its checkpoint name, shape-checked
    (5-D EfficientNet BN params and the [1] `smoothrelu_beta` are reshaped)
    and assigned. Nothing is assigned unless every mapped tensor fits
    (`strict`), so a failed load leaves the model untouched.

    Args:
        model: a Keras model from `sat_tf.models` (resnet*/resnext* or
            efficientnet_*), built for the checkpoint's architecture.
        checkpoint_path: TF1 checkpoint prefix (`.../Res50-silu/Res50-silu`),
            or a directory holding one.
        family: `"resnet"`, `"efficientnet"` or `"auto"` (from the names).
        use_ema: load `<name>/ExponentialMovingAverage` shadows where present
            (EfficientNet "enhanced"); weights without one keep their raw
            value and are listed in `report.ema_missing`.
        channel_order: `"rgb"` or `"bgr"`, the channel order the checkpoint
            expects; `"bgr"` flips the stem kernel's input channels so the
            model still takes RGB. Defaults to the family's (`FAMILIES`): the
            order SAT's released code feeds, BGR for ResNets, RGB for
            EfficientNets (see the module docstring).
        strict: raise ValueError if a model weight has no checkpoint tensor
            or a shape differs. Unused checkpoint tensors never raise; they
            are listed in the report (optimizer slots, `global_step` etc. go
            to `ignored_training_state`).

    Returns:
        A `ConversionReport`.
    """
    _check_channel_order(channel_order)
    prefix = resolve_checkpoint(checkpoint_path)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    if family == "auto":
        family = detect_family(shapes)
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {(*FAMILIES, 'auto')}. Received: family={family!r}")
    spec = FAMILIES[family]
    channel_order = channel_order or spec.channel_order
    entries, unmapped = spec.entries(model, spec.checkpoint_scope(shapes))
    report = ConversionReport(family, prefix, ema_used=bool(use_ema), channel_order=channel_order)
    report.missing_in_checkpoint += [f"{p} <- (no {family} checkpoint counterpart)" for p in unmapped]
    consumed, assignments = set(), []
    for e in entries:
        label = f"{e.path} <- {e.name}"
        if e.name not in shapes:
            report.missing_in_checkpoint.append(label)
            continue
        name = e.name
        if use_ema and (e.name + EMA_SUFFIX) in shapes:
            name = e.name + EMA_SUFFIX
        elif use_ema:
            report.ema_missing.append(e.path)
        consumed.update((e.name, name))
        value = _fit(reader.get_tensor(name), e.variable, e.kind)
        if value is None:
            report.shape_mismatches.append(f"{label}: {list(shapes[name])} vs {list(e.variable.shape)}")
            continue
        if e.kind == "stem_kernel" and channel_order == "bgr":
            value = value[:, :, ::-1, :]
        assignments.append((e.variable, value))
        report.loaded.append(label if name == e.name else f"{e.path} <- {name}")
    for name in sorted(set(shapes) - consumed):
        unused_shadow = name.endswith(EMA_SUFFIX) and name[: -len(EMA_SUFFIX)] in consumed
        if _TRAINING_STATE.search(name) or unused_shadow:
            report.ignored_training_state.append(name)
        else:
            report.unused_in_checkpoint.append(name)
    if strict and not report.ok:
        problems = []
        for label, values in (
            ("model weights missing from the checkpoint", report.missing_in_checkpoint),
            ("shape mismatches", report.shape_mismatches),
        ):
            if values:
                problems.append(
                    f"{len(values)} {label}: {'; '.join(values[:3])}"
                    + (f"; ... (+{len(values) - 3} more)" if len(values) > 3 else "")
                )
        raise ValueError(f"checkpoint {prefix} does not fit model {model.name} ({family}): " + " | ".join(problems))
    for variable, value in assignments:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return report


# === Inspection ===


def _inspect_resnet(shapes):
    from sat_tf.models import resnet

    blocks = {}
    for name in shapes:
        m = re.match(r"group(\d+)/block(\d+)/", name)
        if m:
            g, b = int(m[1]), int(m[2])
            blocks[g] = max(blocks.get(g, 0), b + 1)
    counts = tuple(blocks.get(g, 0) for g in range(4))
    block_type = "bottleneck" if "group0/block0/conv3/W" in shapes else "basic"
    depth = next((d for d, (t, n) in resnet.RESNET_DEPTHS.items() if t == block_type and n == counts), None)
    if depth is None:
        raise ValueError(
            f"blocks per group {counts} ({block_type}) match no ResNet depth in {sorted(resnet.RESNET_DEPTHS)}"
        )
    groups, width = 1, 64
    if block_type == "bottleneck":
        w2 = shapes["group0/block0/conv2/W"]  # [3, 3, C/groups, C], C = bottleneck_width * groups
        groups = w2[3] // w2[2]
        width = w2[3] // groups
    smooth = any(n.endswith("smoothrelu_beta") for n in shapes)
    info = {
        "family": "resnet",
        "depth": depth,
        "block_type": block_type,
        "blocks_per_group": list(counts),
        "groups": groups,
        "bottleneck_width": width,
        "num_classes": shapes["linear/W"][1],
        "activation_hint": "smooth_relu" if smooth else None,
        "activation_note": (
            "SmoothReLU (smoothrelu_beta present)"
            if smooth
            else "not in the weights: relu/silu/gelu/elu/softplus/mish are indistinguishable; "
            "pass the activation (see ZOO)"
        ),
    }
    name = f"resnet{depth}" if (groups, width) == (1, 64) else f"resnext{depth}_{groups}x{width}d"
    from sat_tf import models

    kwargs = {"num_classes": info["num_classes"]}
    if name not in models.list_models():
        name = f"resnet{depth}"
        kwargs.update(groups=groups, bottleneck_width=width, name=f"resnext{depth}_{groups}x{width}d")
    if smooth:
        kwargs["activation"] = "smooth_relu"
    info.update(model=name, model_kwargs=kwargs)
    return info


def _inspect_efficientnet(shapes):
    scope = _efficientnet_scope(shapes)
    variant = scope.split("-", 1)[1]
    blocks = {int(m[1]) for n in shapes if (m := re.match(rf"{re.escape(scope)}/blocks_(\d+)/", n))}
    bn = shapes.get(f"{scope}/stem/tpu_batch_normalization/gamma", [])
    dense = shapes.get(f"{scope}/head/dense/kernel")
    zoo = ZOO.get(scope)
    return {
        "family": "efficientnet",
        "scope": scope,
        "variant": variant,
        "num_blocks": len(blocks),
        "num_classes": dense[1] if dense else None,
        "bn_5d": len(bn) == 5,
        "input_size": zoo["input_size"] if zoo else None,
        "activation_hint": "silu",
        "activation_note": "the released SAT EfficientNets are SiLU-only",
        "model": _efficientnet_model_name(variant),
        "model_kwargs": {"num_classes": dense[1] if dense else 1000, "bn_epsilon": 1e-5, "bn_momentum": 0.9},
    }


# === Families ===


def _check_channel_order(channel_order):
    if channel_order not in (None, "rgb", "bgr"):
        raise ValueError(
            f"`channel_order` must be 'rgb', 'bgr' or None (the family's). Received: channel_order={channel_order!r}"
        )


@dataclasses.dataclass(frozen=True)
class Family:
    """How one architecture family's SAT TF1 checkpoints map onto our models.

    Attributes:
        channel_order: the input order SAT's released code feeds this family
            (the default of `load_tf1_checkpoint` / `write_tf1_checkpoint`).
        owns: `fn(set of names) -> bool`, whether a checkpoint is of this family.
        entries: `fn(model, scope) -> (entries, unmapped weight paths)`.
        checkpoint_scope: `fn(checkpoint names) -> scope` (None: unscoped).
        model_scope: `fn(model) -> scope` for writing (None: unscoped).
        inspect: `fn(checkpoint shapes) -> info dict` (`inspect_checkpoint`).
        bn_5d: BN parameters are stored `[1, 1, 1, 1, C]`.
    """

    channel_order: str
    owns: object
    entries: object
    checkpoint_scope: object
    model_scope: object
    inspect: object
    bn_5d: bool


FAMILIES = {
    # tensorpack ResNet/ResNeXt; SAT's ResNet/main.py: "Our model expects BGR images instead of RGB".
    "resnet": Family(
        channel_order="bgr",
        owns=lambda names: "conv0/W" in names,
        entries=_resnet_entries,
        checkpoint_scope=lambda names: None,
        model_scope=lambda model: None,
        inspect=_inspect_resnet,
        bn_5d=False,
    ),
    # TPU EfficientNet: its input pipeline decodes RGB.
    "efficientnet": Family(
        channel_order="rgb",
        owns=lambda names: any(n.startswith("efficientnet-") for n in names),
        entries=_efficientnet_entries,
        checkpoint_scope=lambda names: _efficientnet_scope(names),
        model_scope=_efficientnet_scope_of_model,
        inspect=_inspect_efficientnet,
        bn_5d=True,
    ),
}


def inspect_checkpoint(path):
    """Infers the architecture of a SAT TF1 checkpoint from its names/shapes.

    Returns a dict with `family`, `model` (a registry name) and `model_kwargs`
    (for `sat_tf.models.build_model`), `num_classes`, `has_ema`, and per
    family: ResNet `depth`, `block_type`, `blocks_per_group`, `groups`,
    `bottleneck_width`, `activation_hint` ("smooth_relu" or None: other
    activations leave no trace in the weights); EfficientNet `scope`,
    `variant`, `num_blocks`, `bn_5d`, `input_size` (from `ZOO`). The input
    size of a ResNet is not in the weights.
    """
    prefix = resolve_checkpoint(path)
    shapes = _read_shapes(prefix)
    family = detect_family(shapes)
    info = FAMILIES[family].inspect(shapes)
    info["checkpoint"] = prefix
    info["has_ema"] = any(n.endswith(EMA_SUFFIX) for n in shapes)
    return info


# === Writing ===


def write_tf1_checkpoint(model, path, *, family, ema=False, channel_order=None, scope=None):
    """Writes `model` as a TF1 name-based checkpoint with the SAT names.

    The inverse of `load_tf1_checkpoint` (EfficientNet BN params 5-D,
    `smoothrelu_beta` [1]); readable by `tf.train.load_checkpoint`.

    Args:
        model: a resnet*/resnext* or efficientnet_* model of `sat_tf.models`.
        path: checkpoint prefix to write (`path.index`, `path.data-*`).
        family: `"resnet"` or `"efficientnet"`.
        ema: also write every value as its `/ExponentialMovingAverage` shadow.
        channel_order: the input order the written checkpoint expects
            (`"bgr"` flips the stem kernel). Defaults to the family's, as
            `load_tf1_checkpoint`, so writing and loading with the defaults
            round-trips.
        scope: EfficientNet name scope; defaults to the model name
            (`efficientnet_b0` -> `efficientnet-b0`).

    Returns:
        The prefix written.
    """
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {tuple(FAMILIES)}. Received: family={family!r}")
    _check_channel_order(channel_order)
    spec = FAMILIES[family]
    bgr = (channel_order or spec.channel_order) == "bgr"
    if scope is None:
        scope = spec.model_scope(model)
    entries, unmapped = spec.entries(model, scope)
    if unmapped:
        raise ValueError(f"{len(unmapped)} model weights have no {family} checkpoint name: {unmapped[:3]}")
    tensors = {}
    for e in entries:
        value = np.asarray(e.variable.numpy(), dtype=np.float32)
        if e.kind == "bn" and spec.bn_5d:
            value = value.reshape((1, 1, 1, 1, -1))
        elif e.kind == "scalar":
            value = value.reshape((1,))
        elif e.kind == "stem_kernel" and bgr:
            value = value[:, :, ::-1, :]
        tensors[e.name] = value
        if ema:
            tensors[e.name + EMA_SUFFIX] = value
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=os.fspath(path),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    return os.fspath(path)
