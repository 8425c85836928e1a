"""PyTorch reference of our ResNet-18 CIFAR, PGD-K training step, Cohen sampling loop and (with pyautoattack) AutoAttack
on our digits CNN, for timing side by side.

What it is: the PyTorch code a reader would compare sat_tf against, written to do exactly the same arithmetic, so a
benchmark driver can time both on the same machine (benchmarks/ and tests/test_torch_reference.py only; the package
never imports it).

How it matches ours:
- `ResNet18Cifar`: Kuang Liu's pytorch-cifar ResNet18, the net `sat_tf.models.build_model("resnet18_cifar")` builds:
  3x3 stem conv 64 + BN + act, four stages of 2 BasicBlocks (64/128/256/512 filters, strides 1/2/2/2), BasicBlock =
  conv3x3(stride)-BN-act-conv3x3-BN + shortcut (1x1 conv + BN when the shape changes), then act; global average
  pool, `Linear(512, num_classes)`. Convs have no bias; BN eps 1e-5, momentum 0.1 (Keras 0.9). Input NCHW in
  channels_last memory format, float32 pixels in [0, 1], no normalisation (our `preprocessing=None`). Our Keras
  layer names are the module paths with `.` -> `_`, so `load_keras_weights` is a rename plus transposes. Activations
  (`ACTIVATIONS`): relu, silu, gelu (tanh form, our `approximate=True`), softplus, smooth_relu (our SmoothReLU:
  `relu(x - log1p(beta |x|) / beta)`, `beta = beta_raw**2`, one trainable `beta_raw` per site, init 20).
- `pgd_linf`: attacks/pgd.py's L-inf loop: model in eval() mode; start `x + U(-eps, eps)` clipped to [0, 1]; each
  step the input gradient (only; no weight gradients) of the cross-entropy summed over the batch,
  `x_adv += step_size * sign(g)`, projection onto the eps-ball around `x`, clip to [0, 1].
- `trades_loss`: the released TRADES loss (yaodongyu/TRADES `trades.py`) with the start passed in: the cross-check
  of `sat_tf.training.objectives.TradesObjective` (attack in eval() mode, both loss forwards in train() mode).
- `make_train_step`: k == 0 a clean step, else PGD-k on the batch in eval() mode, then one train()-mode step on
  the adversarial batch: mean CE, SGD(lr, momentum 0.9, Nesterov) with weight decay on conv and linear weights
  only, which equals our `0.5 * wd * sum(w**2)` over kernels in the loss. `precision="bfloat16"` runs the forward
  passes under `torch.autocast("cpu", dtype=torch.bfloat16)`; logits, loss and attack arithmetic stay float32.
  One known difference, in state not in step cost: train-mode BN updates `running_var` with the unbiased batch
  variance (PyTorch), ours with the biased one (Keras).
- `make_certify_sampler`: Cohen et al.'s `core.py` `Smooth._sample_noise` loop (batches of
  `x.repeat`, Gaussian noise, argmax, class counts).
- `DigitsCNN`: our `digits_cnn` (benchmarks/autoattack_time.py's model): the `(x - mean) / std` preprocessing
  inside the model (`sat`: 0.5 / 0.5), three conv3x3 (no bias; `padding=1`, which is our fixed symmetric padding
  of the strided conv) - BN (eps 1e-5) - act, global average pool, `fc`; NCHW input. Its Keras layer names are the
  module names, so `load_keras_weights` ports it as it ports the ResNet. `KerasMLP`: tests/aa_reference.py's MLP.
- `run_reference_autoattack`: the reference AutoAttack (`pyautoattack`'s `run_standard_evaluation`) on a ported
  model, timed, with the robust accuracy and seconds after each attack read from its log.

Importing this file does not import torch: the classes are built on first access (module `__getattr__`) and the
functions import torch themselves, so a TensorFlow driver can `from torch_reference import Worker` and run torch in
a worker process, keeping torch's OpenMP threads out of its own process.

Worker mode: one JSON request per stdin line, exactly one JSON reply per request on stdout (logs go to stderr):

    python benchmarks/torch_reference.py --worker --threads=2
    {"op": "build", "id": "t", "kind": "train", "activation": "relu", "k": 1, "batch": 128, "precision": "float32"}
    {"op": "build", "id": "c", "kind": "certify", "activation": "silu", "batch": 400, "num": 800, "sigma": 0.25}
    {"op": "time", "id": "t", "n": 3}
    {"op": "autoattack", "arch": "digits_cnn", "arch_kwargs": {"activation": "silu"}, "weights": "w.npz",
     "points": "p.npz", "eps": 0.1255, "version": "standard", "seed": 0, "batch_size": 250, "options": null}
    {"op": "rss"}
    {"op": "quit"}

`seed` (default 0) seeds the weights, the inputs (uniform [0, 1] images, random labels), PGD starts and noise.
`build` replies `{"ok": true, "params": <trainable parameters>}` and runs nothing; `time` runs the built thing `n`
times (a train step, or one `sample(x, num)`) and replies `{"ok": true, "times": [seconds per call], "first":
<seconds of the first call ever made for that id>}` (the first call is in `times` too: the driver drops warm-up);
`autoattack` loads Keras weights (`save_layer_weights`' .npz) into `build_reference_model(arch, **arch_kwargs)`
and NCHW points (.npz with `x`, `y`), runs `run_reference_autoattack` and replies with its dict (`seconds`,
`accuracy` and `attack_seconds` per attack, per-point `robust` flags); `rss` replies `{"ok": true, "max_rss_mb":
...}`; `quit` replies and exits. An error replies `{"ok": false, "error":
"..."}` and the worker keeps serving. `Worker` is the client.
"""

import argparse
import functools
import json
import logging
import os
import re
import resource
import subprocess
import sys
import time
import types

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
# The worker's `build` keys per kind, with defaults (None: required).
BUILD_KEYS = {
    "train": {"activation": "relu", "k": None, "batch": None, "precision": "float32", "seed": 0},
    "certify": {"activation": "relu", "batch": None, "num": None, "sigma": 0.25, "seed": 0},
}


# === Modules (built on first use, so importing this file never imports torch) ===


@functools.cache
def _modules():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SmoothReLU(nn.Module):
        """Our SmoothReLU: `relu(x - log1p(beta * |x|) / beta)`, `beta = beta_raw**2`, one `beta_raw` per site.
        `beta` is cast to the input dtype, as the Keras layer does under mixed precision."""

        def __init__(self, initial_beta_raw=20.0):
            super().__init__()
            self.beta_raw = nn.Parameter(torch.tensor(float(initial_beta_raw)))

        def forward(self, x):
            beta = self.beta_raw.to(x.dtype).square()
            return F.relu(x - torch.log1p(beta * x.abs()) / beta)

    activations = {
        "relu": nn.ReLU,
        "silu": nn.SiLU,
        "gelu": functools.partial(nn.GELU, approximate="tanh"),
        "softplus": nn.Softplus,
        "smooth_relu": SmoothReLU,
    }

    def conv3x3(in_planes, planes, stride=1):
        return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)

    def bn(planes):
        return nn.BatchNorm2d(planes, eps=1e-5, momentum=0.1)

    class BasicBlock(nn.Module):
        """pytorch-cifar's BasicBlock with an activation module per site (`act1`, `act`, as our layer names)."""

        def __init__(self, in_planes, planes, stride, activation):
            super().__init__()
            self.conv1 = conv3x3(in_planes, planes, stride)
            self.bn1 = bn(planes)
            self.act1 = activations[activation]()
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = bn(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), bn(planes))
            self.act = activations[activation]()

        def forward(self, x):
            out = self.act1(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.act(out + self.shortcut(x))

    class ResNet18Cifar(nn.Module):
        """Kuang Liu's pytorch-cifar ResNet18 = our `resnet18_cifar`; input NCHW (channels_last) pixels in [0, 1]."""

        def __init__(self, activation="relu", num_classes=NUM_CLASSES):
            super().__init__()
            if activation not in activations:
                raise ValueError(f"Unknown activation {activation!r}. Known: {sorted(activations)}")
            self.conv1 = conv3x3(3, 64)
            self.bn1 = bn(64)
            self.act1 = activations[activation]()
            in_planes = 64
            for s, (planes, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
                blocks = [BasicBlock(in_planes, planes, stride, activation), BasicBlock(planes, planes, 1, activation)]
                setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
                in_planes = planes
            self.linear = nn.Linear(512, num_classes)

        def forward(self, x):
            out = self.act1(self.bn1(self.conv1(x)))
            out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
            return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    class DigitsCNN(nn.Module):
        """Our `digits_cnn`; input NCHW pixels in [0, 1] (1x8x8 digits by default).

        `(x - mean) / std` inside the model (our `Normalize`; `"sat"` is 0.5 / 0.5, i.e. `2x - 1`, bit-exact as
        ours), then conv3x3(f0)-BN-act, conv3x3/2(f1)-BN-act, conv3x3(f2)-BN-act, global average pool, `fc`.
        `padding=1` everywhere equals ours: `same` at stride 1, and at stride 2 SAT's fixed symmetric padding
        `ZeroPadding2D((1, 1))` + `valid` (not TensorFlow's asymmetric `same`, which would pad only after).
        """

        def __init__(
            self,
            activation="silu",
            filters=(32, 32, 64),
            num_classes=NUM_CLASSES,
            in_channels=1,
            preprocessing=(0.5, 0.5),
            bn_epsilon=1e-5,
            bn_momentum=0.1,
        ):
            super().__init__()
            if activation not in activations:
                raise ValueError(f"Unknown activation {activation!r}. Known: {sorted(activations)}")
            self.preprocessing = None if preprocessing is None else tuple(float(v) for v in preprocessing)
            channels = in_channels
            for i, (f, stride) in enumerate(zip(filters, (1, 2, 1)), start=1):
                setattr(self, f"conv{i}", nn.Conv2d(channels, f, 3, stride=stride, padding=1, bias=False))
                setattr(self, f"bn{i}", nn.BatchNorm2d(f, eps=bn_epsilon, momentum=bn_momentum))
                setattr(self, f"act{i}", activations[activation]())
                channels = f
            self.fc = nn.Linear(channels, num_classes)

        def forward(self, x):
            if self.preprocessing is not None:
                mean, std = self.preprocessing
                x = (x - mean) / std
            for i in (1, 2, 3):
                x = getattr(self, f"act{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            return self.fc(x.mean(dim=(2, 3)))

    class MnistResNet(nn.Module):
        """Our `mnist_resnet` / `mnist_resnet_fast` (the Fashion-MNIST study's network); input NCHW pixels in [0, 1].

        `(x - mean) / std` inside the model (`"sat"`: 0.5 / 0.5), conv3x3(f0, `stem_stride`)-BN-act, one
        BasicBlock stage per filter count (its first block at the stage's stride), global average pool, `fc`.
        `padding=1` equals our fixed symmetric padding at stride 2, as in `DigitsCNN`.
        """

        def __init__(
            self,
            activation="relu",
            filters=(16, 32, 64),
            blocks=1,
            strides=(2, 2, 2),
            stem_stride=2,
            num_classes=NUM_CLASSES,
            in_channels=1,
            preprocessing=(0.5, 0.5),
            bn_epsilon=1e-5,
        ):
            super().__init__()
            if activation not in activations:
                raise ValueError(f"Unknown activation {activation!r}. Known: {sorted(activations)}")
            self.preprocessing = None if preprocessing is None else tuple(float(v) for v in preprocessing)
            self.conv1 = nn.Conv2d(in_channels, filters[0], 3, stride=stem_stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(filters[0], eps=bn_epsilon)
            self.act1 = activations[activation]()
            in_planes = filters[0]
            for s, (planes, stride) in enumerate(zip(filters, strides)):
                stage = [BasicBlock(in_planes, planes, stride, activation)]
                stage += [BasicBlock(planes, planes, 1, activation) for _ in range(blocks - 1)]
                setattr(self, f"layer{s + 1}", nn.Sequential(*stage))
                in_planes = planes
            for module in self.modules():  # our bn_epsilon in the blocks too
                if isinstance(module, nn.BatchNorm2d):
                    module.eps = bn_epsilon
            self.stages = len(filters)
            self.fc = nn.Linear(in_planes, num_classes)

        def forward(self, x):
            if self.preprocessing is not None:
                mean, std = self.preprocessing
                x = (x - mean) / std
            out = self.act1(self.bn1(self.conv1(x)))
            for s in range(self.stages):
                out = getattr(self, f"layer{s + 1}")(out)
            return self.fc(out.mean(dim=(2, 3)))

    class KerasMLP(nn.Module):
        """tests/aa_reference.py's `keras_mlp`: flatten in NHWC order (as Keras), `Linear`-act per hidden layer,
        then a `Linear` of logits; `sizes` = [inputs, hidden..., classes]."""

        def __init__(self, sizes, activation="relu"):
            super().__init__()
            self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            self.act = activations[activation]()

        def forward(self, x):
            h = x.permute(0, 2, 3, 1).flatten(1)
            for linear in self.linears[:-1]:
                h = self.act(linear(h))
            return self.linears[-1](h)

    return types.SimpleNamespace(
        ResNet18Cifar=ResNet18Cifar,
        BasicBlock=BasicBlock,
        DigitsCNN=DigitsCNN,
        MnistResNet=MnistResNet,
        KerasMLP=KerasMLP,
        SmoothReLU=SmoothReLU,
        ACTIVATIONS=activations,
    )


def __getattr__(name):
    if name in ("ResNet18Cifar", "BasicBlock", "DigitsCNN", "MnistResNet", "KerasMLP", "SmoothReLU", "ACTIVATIONS"):
        return getattr(_modules(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def count_params(model):
    """Trainable parameters (Keras `trainable_weights` counts the same tensors)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def keras_layer_weights(keras_model):
    """`{layer name: [NumPy arrays]}` of the Keras layers that have weights, in `get_weights()` order."""
    return {layer.name: layer.get_weights() for layer in keras_model.layers if layer.weights}


def save_layer_weights(path, layer_weights):
    """Writes `keras_layer_weights(...)` to an `.npz` (`"name/index"` keys), for a worker process to load."""
    np.savez(path, **{f"{name}/{i}": value for name, values in layer_weights.items() for i, value in enumerate(values)})


def load_layer_weights(path):
    """Reads `save_layer_weights`' file back into `{layer name: [arrays]}`."""
    with np.load(path) as data:
        keys = sorted(data.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])))
        weights = {}
        for key in keys:
            weights.setdefault(key.rsplit("/", 1)[0], []).append(data[key])
    return weights


def load_keras_weights(torch_model, keras_model):
    """Copies a Keras `resnet18_cifar`, `digits_cnn` or `mnist_resnet` (or its `keras_layer_weights` dict) into `torch_model`
    (same architecture and activation). Every Keras layer with weights must be consumed, so an architecture
    mismatch raises instead of leaving weights at their init."""
    import torch
    from torch import nn

    smooth_relu = _modules().SmoothReLU
    layers = keras_model if isinstance(keras_model, dict) else keras_layer_weights(keras_model)
    used = set()
    with torch.no_grad():
        for path, module in torch_model.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear, smooth_relu)):
                continue
            name = path.replace(".", "_")
            if name not in layers:
                raise ValueError(f"No Keras layer {name!r} for torch module {path!r}")
            weights = layers[name]
            if isinstance(module, nn.Conv2d):
                targets = [(module.weight, weights[0].transpose(3, 2, 0, 1))]  # HWIO -> OIHW
            elif isinstance(module, nn.Linear):
                targets = [(module.weight, weights[0].T), (module.bias, weights[1])]
            elif isinstance(module, nn.BatchNorm2d):  # gamma, beta, moving mean, moving variance
                targets = zip((module.weight, module.bias, module.running_mean, module.running_var), weights)
            else:
                targets = [(module.beta_raw, weights[0])]
            for tensor, value in targets:
                if tuple(tensor.shape) != value.shape:
                    raise ValueError(f"{path}: torch shape {tuple(tensor.shape)} != Keras shape {value.shape}")
                tensor.copy_(torch.tensor(value))
            used.add(name)
    if used != set(layers):
        raise ValueError(f"Keras layers without a torch module: {sorted(set(layers) - used)}")


# === Attack, training step, certification sampling ===


def pgd_linf(model, x, y, *, eps, step_size, steps, random_start=True, generator=None, precision="float32"):
    """attacks/pgd.py's L-inf PGD on the CE summed over the batch; gradients w.r.t. the input only.

    Puts `model` in eval() mode. `precision="bfloat16"` runs the forward passes under CPU autocast; the loss,
    sign, projection and clipping stay float32. `generator` seeds the random start. Returns `x_adv`, detached.
    """
    import torch
    from torch.nn import functional as F

    model.eval()
    x = x.detach().float()
    x_adv = x.clone()
    if random_start:
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps, generator=generator)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def trades_loss(model, x_natural, y, *, start, step_size, epsilon, perturb_steps, beta):
    """yaodongyu/TRADES `trades.py` `trades_loss` (L-inf), line for line, with its random start passed in
    (`start` = `x_natural + 0.001 * randn`, so a test can hand both sides the same draw) and no optimizer call.

    Returns `(loss, x_adv)`: the attack in eval() mode on the summed KL(p(x) || p(x')), then in train() mode
    CE(f(x), y) + beta / B * sum KL(p(x) || p(x')), p(x) not detached (the reference's gradient flows through it).
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    criterion_kl = nn.KLDivLoss(reduction="sum")  # the reference's size_average=False
    model.eval()
    batch_size = len(x_natural)
    x_adv = start.detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(
        F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1)
    )
    return loss_natural + beta * loss_robust, x_adv


def make_optimizer(model, *, lr, weight_decay):
    """Nesterov SGD with `weight_decay` on conv and linear weights only: BN parameters, biases and `beta_raw` get
    none, as our L2 term over kernels."""
    import torch
    from torch import nn

    decayed = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    decayed_ids = {id(p) for p in decayed}
    others = [p for p in model.parameters() if id(p) not in decayed_ids]
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


def make_train_step(model, k, *, eps=8 / 255, step_size=2 / 255, lr=0.01, weight_decay=5e-4, precision="float32"):
    """Returns `step(x, y) -> float` mean CE: PGD-k in eval() mode (k == 0: clean), then one train()-mode SGD step.

    Moves `model` to channels_last; `x` is converted to channels_last on every call (free if it already is).
    """
    import torch
    from torch.nn import functional as F

    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"`precision` must be 'float32' or 'bfloat16'. Received: precision={precision!r}")
    model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay)
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")

    def step(x, y):
        x = x.contiguous(memory_format=torch.channels_last)
        if k > 0:
            x = pgd_linf(model, x, y, eps=eps, step_size=step_size, steps=k, precision=precision)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def make_certify_sampler(model, *, sigma=0.25, batch_size=400, num_classes=NUM_CLASSES):
    """Returns `sample(x, num) -> counts [num_classes]`, Cohen et al.'s `Smooth._sample_noise` for one image `x`
    (`[3, H, W]` or `[1, 3, H, W]`): batches of `x.repeat`, `N(0, sigma^2)` noise, argmax, bincount."""
    import torch

    model.to(memory_format=torch.channels_last)

    def sample(x, num):
        model.eval()
        counts = np.zeros(num_classes, dtype=np.int64)
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                this_batch = min(batch_size, remaining)
                remaining -= this_batch
                batch = x.repeat((this_batch, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
                noise = torch.randn_like(batch) * sigma
                predictions = model(batch + noise).argmax(1)
                counts += torch.bincount(predictions, minlength=num_classes).numpy()
        return counts

    return sample


# === The reference AutoAttack (pyautoattack) on a ported model ===

# Our per-attack options (`sat_tf.attacks.autoattack.plan`) -> (attribute of the reference's `AutoAttack`, its name).
REFERENCE_OPTIONS = {
    ("apgd-ce", "steps"): ("apgd", "n_iter"),
    ("apgd-ce", "restarts"): ("apgd", "n_restarts"),
    ("apgd-t", "steps"): ("apgd_targeted", "n_iter"),
    ("apgd-t", "n_target_classes"): ("apgd_targeted", "n_target_classes"),
    ("fab-t", "steps"): ("fab", "n_iter"),
    ("fab-t", "n_target_classes"): ("fab", "n_target_classes"),
    ("square", "queries"): ("square", "n_queries"),
}
_ACCURACY_LINE = re.compile(r"robust accuracy after ([A-Z-]+): ([0-9.]+)%")


def build_reference_model(arch, layer_weights, **kwargs):
    """A torch module (eval mode) holding Keras weights (a `keras_layer_weights` dict): `arch` is `"digits_cnn"`
    (`DigitsCNN(**kwargs)`), `"mnist_resnet"` (`MnistResNet(**kwargs)`, also `mnist_resnet_fast`'s port) or
    `"mlp"` (`KerasMLP`, tests/aa_reference.py's `keras_mlp`; kwargs: `activation`)."""
    import torch

    ports = {"digits_cnn": _modules().DigitsCNN, "mnist_resnet": _modules().MnistResNet}
    if arch in ports:
        model = ports[arch](**kwargs)
        load_keras_weights(model, layer_weights)
        return model.eval()
    if arch != "mlp":
        raise ValueError(f"`arch` must be 'digits_cnn', 'mnist_resnet' or 'mlp'. Received: {arch!r}")
    names = sorted(n for n in layer_weights if n.startswith("dense")) + ["logits"]
    if set(names) != set(layer_weights):
        raise ValueError(f"mlp: expected layers dense0.. and logits, got {sorted(layer_weights)}")
    sizes = [layer_weights[names[0]][0].shape[0]] + [layer_weights[n][0].shape[1] for n in names]
    model = _modules().KerasMLP(sizes, **kwargs)
    with torch.no_grad():
        for linear, name in zip(model.linears, names):
            kernel, bias = layer_weights[name]
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
            linear.bias.copy_(torch.from_numpy(bias))
    return model.eval()


def run_reference_autoattack(model, x, y, *, eps, version="standard", seed=0, batch_size=250, options=None):
    """The reference's `run_standard_evaluation` (L-inf) on `model`, timed, with what it reports per attack.

    Args:
        model: a torch module in eval mode taking NCHW float32 in [0, 1].
        x: NCHW float32 `[P, C, H, W]` (NumPy); y: int labels `[P]`.
        options: our `{attack: {keyword: value}}` settings (`REFERENCE_OPTIONS` maps them onto the reference's
            attributes), e.g. fewer steps for a smoke run; None: the version's defaults.

    Returns:
        `{"seconds": wall time of run_standard_evaluation (its model checks, clean pass and attacks),
        "accuracy": {"clean": .., attack: ..} robust accuracy after each attack (the reference's log lines),
        "attack_seconds": {attack: ..} (time between its log lines; "clean" = model checks + clean pass),
        "robust": final per-point flags (list of bool)}`. An attack skipped because nothing was left robust
        reports the accuracy before it and 0 s.
    """
    import torch
    from pyautoattack import AutoAttack

    runner = AutoAttack(model, eps=eps, norm="Linf", seed=seed, version=version, device="cpu")
    _apply_reference_options(runner, options or {})
    records = []
    handler = _RecordingHandler(records)
    logger = logging.getLogger("auto-attack")
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its per-batch lines would flood the driver's stderr
    logger.addHandler(handler)
    x_t, y_t = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    try:
        start = time.time()  # log records carry time.time() stamps
        _, y_adv = runner.run_standard_evaluation(x_t, y_t, batch_size=batch_size)
        end = time.time()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    accuracy, attack_seconds = _parse_reference_log(records, runner.attacks_to_run, start, len(y))
    return {
        "seconds": end - start,
        "accuracy": accuracy,
        "attack_seconds": attack_seconds,
        "robust": (y_adv.numpy() == np.asarray(y)).tolist(),
    }


def _apply_reference_options(runner, options):
    for attack, settings in options.items():
        for key, value in settings.items():
            if (attack, key) not in REFERENCE_OPTIONS:
                raise ValueError(
                    f"no reference counterpart for option {attack}.{key}; known: "
                    f"{sorted('.'.join(k) for k in REFERENCE_OPTIONS)}"
                )
            owner, name = REFERENCE_OPTIONS[(attack, key)]
            setattr(getattr(runner, owner), name, value)
    for apgd in (runner.apgd, runner.apgd_targeted):
        # APGD derives its checkpoint schedule from n_iter in its constructor: redo it for a new n_iter.
        apgd.n_iter_2 = max(int(0.22 * apgd.n_iter), 1)
        apgd.n_iter_min = max(int(0.06 * apgd.n_iter), 1)
        apgd.size_decr = max(int(0.03 * apgd.n_iter), 1)


class _RecordingHandler(logging.Handler):
    """Keeps (time, message) of every record."""

    def __init__(self, records):
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record):
        self.records.append((record.created, record.getMessage()))


def _parse_reference_log(records, attacks, start, count):
    """Robust accuracy and seconds per attack from the reference's "initial accuracy" / "robust accuracy after"
    lines (percentages with two decimals: exact counts for up to 10 000 points)."""
    clean_at, clean = next((t, m) for t, m in records if m.startswith("initial accuracy"))
    last_t, last_acc = clean_at, round(float(clean.split(":")[1].strip().rstrip("%")) * count / 100) / count
    accuracy, attack_seconds = {"clean": last_acc}, {"clean": clean_at - start}
    after = {}
    for t, message in records:
        match = _ACCURACY_LINE.match(message)
        if match:
            after[match.group(1).lower()] = (t, round(float(match.group(2)) * count / 100) / count)
    for attack in attacks:
        t, acc = after.get(attack, (last_t, last_acc))
        accuracy[attack], attack_seconds[attack] = acc, t - last_t
        last_t, last_acc = t, acc
    return accuracy, attack_seconds


# === Worker process and its client ===


def _build(msg):
    """The timed callable of one `build` request and its model's parameter count."""
    import torch

    kind = msg.get("kind")
    if kind not in BUILD_KEYS:
        raise ValueError(f"`kind` must be one of {sorted(BUILD_KEYS)}. Received: {kind!r}")
    defaults = BUILD_KEYS[kind]
    unknown = set(msg) - set(defaults) - {"op", "id", "kind"}
    missing = [key for key, value in defaults.items() if value is None and key not in msg]
    if unknown:
        raise ValueError(f"build {kind}: unknown keys {sorted(unknown)}; known: {sorted(defaults)}")
    if missing:
        raise ValueError(f"build {kind}: missing keys {missing}")
    cfg = types.SimpleNamespace(**{**defaults, **msg})
    torch.manual_seed(cfg.seed)  # weights, PGD starts and Gaussian noise
    model = _modules().ResNet18Cifar(cfg.activation)
    generator = torch.Generator().manual_seed(cfg.seed)
    if kind == "train":
        step = make_train_step(model, cfg.k, precision=cfg.precision)
        x = torch.rand((cfg.batch, *IMAGE_SHAPE), generator=generator).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, NUM_CLASSES, (cfg.batch,), generator=generator)
        return functools.partial(step, x, y), count_params(model)
    sample = make_certify_sampler(model, sigma=cfg.sigma, batch_size=cfg.batch)
    x = torch.rand((1, *IMAGE_SHAPE), generator=generator).contiguous(memory_format=torch.channels_last)
    return functools.partial(sample, x, cfg.num), count_params(model)


def _autoattack(msg):
    """One `autoattack` request: the model from `weights` (.npz of `save_layer_weights`), the points from `points`
    (.npz with NCHW `x` and `y`), then `run_reference_autoattack`."""
    keys = {"op", "arch", "arch_kwargs", "weights", "points", "eps", "version", "seed", "batch_size", "options"}
    unknown = set(msg) - keys
    missing = [k for k in ("arch", "weights", "points", "eps") if k not in msg]
    if unknown or missing:
        raise ValueError(f"autoattack: unknown keys {sorted(unknown)}, missing keys {missing}")
    model = build_reference_model(msg["arch"], load_layer_weights(msg["weights"]), **msg.get("arch_kwargs", {}))
    with np.load(msg["points"]) as points:
        x, y = points["x"], points["y"]
    return run_reference_autoattack(
        model,
        x,
        y,
        eps=msg["eps"],
        version=msg.get("version", "standard"),
        seed=msg.get("seed", 0),
        batch_size=msg.get("batch_size", 250),
        options=msg.get("options"),
    )


def _handle(msg, built):
    op = msg.get("op")
    if op == "build":
        fn, params = _build(msg)
        built[msg["id"]] = types.SimpleNamespace(fn=fn, first=None)
        return {"ok": True, "params": params}
    if op == "time":
        if msg.get("id") not in built:
            raise ValueError(f"unknown id {msg.get('id')!r}: build it first")
        entry = built[msg["id"]]
        times = []
        for _ in range(int(msg.get("n", 1))):
            start = time.perf_counter()
            entry.fn()
            times.append(time.perf_counter() - start)
            if entry.first is None:
                entry.first = times[-1]
        return {"ok": True, "times": times, "first": entry.first}
    if op == "autoattack":
        return {"ok": True, **_autoattack(msg)}
    if op == "rss":
        return {"ok": True, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if op == "quit":
        return {"ok": True}
    raise ValueError(f"unknown op {op!r}")


def serve(threads):
    """The worker loop: one JSON reply line per stdin line until `quit` or end of input."""
    import torch

    torch.set_num_threads(threads)
    stdout, sys.stdout = sys.stdout, sys.stderr  # a stray print must not break the protocol
    print(f"torch_reference worker: torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    built = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        op = None
        try:
            msg = json.loads(line)
            op = msg.get("op")
            reply = _handle(msg, built)
        except Exception as e:  # noqa: BLE001 (any failure is a reply; the worker keeps serving)
            reply = {"ok": False, "error": " ".join(f"{type(e).__name__}: {e}".split())}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
        if op == "quit":
            return


class Worker:
    """Client of a `--worker` subprocess; never imports torch in the calling process.

    with Worker(threads=2) as worker:
        worker.request(op="build", id="t", kind="train", activation="relu", k=1, batch=128)
        times = worker.request(op="time", id="t", n=4)["times"]
    """

    def __init__(self, threads=None, python=sys.executable):
        cmd = [python, os.path.abspath(__file__), "--worker"]
        if threads is not None:
            cmd.append(f"--threads={threads}")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def request(self, **msg):
        """Sends one request; returns the reply dict. Raises RuntimeError on `ok: false` or a dead worker."""
        if self._proc.poll() is not None:
            raise RuntimeError(f"torch worker has exited with code {self._proc.returncode}")
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch worker exited with code {self._proc.wait()} during {msg}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"torch worker: {reply.get('error')}")
        return reply

    def close(self):
        if self._proc.poll() is None:
            try:
                self.request(op="quit")
                self._proc.wait(timeout=30)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._proc.stdin.close()
        self._proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help="serve JSON requests on stdin")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if not args.worker:
        parser.error("nothing to do without --worker (see the module docstring)")
    serve(args.threads)


if __name__ == "__main__":
    main()
