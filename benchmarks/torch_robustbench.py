"""PyTorch twins of the RobustBench architectures `sat_tf.zoo.robustbench` converts, for the offline tests.

What it is: the networks RobustBench instantiates, written again here from their reference sources (not from
our Keras code), so a random state dict saved from them has the exact names and shapes of a published
checkpoint and the logits a converted Keras model must reproduce. Test-only (tests/test_robustbench.py);
the package never imports it. Importing this file does not import torch: the builders import it.

- `dm_wide_resnet(...)`: RobustBench `robustbench/model_zoo/architectures/dm_wide_resnet.py` `DMWideResNet`
  (DeepMind's port): `mean`/`std` buffers, `init_conv`, `layer.G.block.B.{batchnorm_0, relu_0, conv_0,
  batchnorm_1, relu_1, conv_1, shortcut}`, `batchnorm`, `relu`, `logits`; stride-2 convs see the input padded
  (0, 1, 0, 1), stride-1 ones (1, 1, 1, 1); the shortcut (1x1 conv) exists when the channel count changes and
  then reads the activated input. `avg_pool2d(out, 8)` in the reference is the global pool at 32x32; the twin
  pools globally so small test inputs work (the same function at 32x32).
- `convnext(...)`: timm's `ConvNeXt` (`timm/models/convnext.py`, `conv_mlp=False`, `ls_init_value=1e-6`):
  `stem.0` 4x4/4 conv + `stem.1` LayerNorm2d; `stages.N.downsample.{0,1}` (LayerNorm2d + 2x2/2 conv) for
  N >= 1; `stages.N.blocks.M.{conv_dw (7x7 depthwise, padding 3), norm (LayerNorm on NHWC), mlp.fc1, mlp.act,
  mlp.fc2, gamma}`; `head.norm` (LayerNorm2d after the global average pool), `head.fc`. LayerNorm eps 1e-6,
  `nn.GELU()` (exact erf).
- `convstem(...)`: RobustBench `convstem_models.py` `ConvBlock1` / `ConvBlock3` assigned to `model.stem`
  (keys `stem.stem.K`): 3x3 convs with padding 1 and bias, each followed by the reference's channels-first
  `LayerNorm` (mean and biased variance over channels, eps 1e-6, `weight`/`bias`) and `nn.GELU()`.
- `normalize_model(model, mean, std)`: RobustBench `utils_architectures.normalize_model`, an `nn.Sequential`
  of `normalize` (an `ImageNormalizer` with `mean`/`std` buffers) and `model`, as the ImageNet entries
  (Liu et al. 2023) are wrapped, so its state dict carries the `model.` prefix.
- `randomize_(module, seed)`: every parameter and BatchNorm statistic drawn at random (positive variances,
  layer-scale gammas of order 0.1-1), so no weight is left at an initial value that a wrong mapping could
  still reproduce (e.g. timm's 1e-6 layer scale hides the whole block).
"""

import numpy as np

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _activation(name):
    import torch

    table = {
        "silu": torch.nn.SiLU,
        "swish": torch.nn.SiLU,
        "relu": torch.nn.ReLU,
        "softplus": torch.nn.Softplus,
        "gelu_erf": torch.nn.GELU,
        "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"),
    }
    if name not in table:
        raise ValueError(f"no torch twin for activation {name!r}; known: {sorted(table)}")
    return table[name]


def dm_wide_resnet(
    num_classes=10, depth=28, width=10, activation="silu", mean=CIFAR10_MEAN, std=CIFAR10_STD, padding=0
):
    """RobustBench's `DMWideResNet` with `activation_fn` = the torch module of `activation`."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    act = _activation(activation)

    class Block(nn.Module):
        def __init__(self, in_planes, out_planes, stride):
            super().__init__()
            self.batchnorm_0 = nn.BatchNorm2d(in_planes)
            self.relu_0 = act()
            self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
            self.batchnorm_1 = nn.BatchNorm2d(out_planes)
            self.relu_1 = act()
            self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
            self.has_shortcut = in_planes != out_planes
            self.shortcut = (
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if self.has_shortcut else None
            )
            self.stride = stride

        def forward(self, x):
            if self.has_shortcut:
                x = self.relu_0(self.batchnorm_0(x))
                v = x
            else:
                v = self.relu_0(self.batchnorm_0(x))
            v = F.pad(v, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
            out = self.relu_1(self.batchnorm_1(self.conv_0(v)))
            out = self.conv_1(out)
            return (self.shortcut(x) if self.has_shortcut else x) + out

    class BlockGroup(nn.Module):
        def __init__(self, num_blocks, in_planes, out_planes, stride):
            super().__init__()
            self.block = nn.Sequential(
                *[
                    Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                    for i in range(num_blocks)
                ]
            )

        def forward(self, x):
            return self.block(x)

    class DMWideResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(3, 1, 1))
            channels = [16, 16 * width, 32 * width, 64 * width]
            n = (depth - 4) // 6
            self.init_conv = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
            self.layer = nn.Sequential(
                BlockGroup(n, channels[0], channels[1], 1),
                BlockGroup(n, channels[1], channels[2], 2),
                BlockGroup(n, channels[2], channels[3], 2),
            )
            self.batchnorm = nn.BatchNorm2d(channels[3])
            self.relu = act()
            self.logits = nn.Linear(channels[3], num_classes)

        def forward(self, x):
            if padding > 0:
                x = F.pad(x, (padding,) * 4)
            out = self.init_conv((x - self.mean) / self.std)
            out = self.relu(self.batchnorm(self.layer(out)))
            return self.logits(out.mean(dim=(2, 3)))

    return DMWideResNet().eval()


def _layer_norm_2d(channels):
    """timm `LayerNorm2d`: nn.LayerNorm over the channel axis of NCHW."""
    from torch import nn
    from torch.nn import functional as F

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            x = x.permute(0, 2, 3, 1)
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)

    return LayerNorm2d(channels, eps=1e-6)


def convnext(
    depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_classes=1000, activation="gelu_erf", ls_init_value=1e-6
):
    """timm's `ConvNeXt` (patchify stem); `convstem(...)` replaces its stem as RobustBench does."""
    import torch
    from torch import nn

    act = _activation(activation)

    class Mlp(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc1 = nn.Linear(c, 4 * c)
            self.act = act()
            self.fc2 = nn.Linear(4 * c, c)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c, bias=True)
            self.norm = nn.LayerNorm(c, eps=1e-6)
            self.mlp = Mlp(c)
            self.gamma = nn.Parameter(ls_init_value * torch.ones(c))

        def forward(self, x):
            shortcut = x
            x = self.conv_dw(x).permute(0, 2, 3, 1)
            x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)
            return x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut

    class Stage(nn.Module):
        def __init__(self, cin, cout, blocks):
            super().__init__()
            if cin != cout:
                self.downsample = nn.Sequential(_layer_norm_2d(cin), nn.Conv2d(cin, cout, 2, stride=2, bias=True))
            else:
                self.downsample = nn.Identity()
            self.blocks = nn.Sequential(*[Block(cout) for _ in range(blocks)])

        def forward(self, x):
            return self.blocks(self.downsample(x))

    class Head(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.norm = _layer_norm_2d(c)
            self.fc = nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.norm(x.mean(dim=(2, 3), keepdim=True))
            return self.fc(x.flatten(1))

    class ConvNeXt(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4, bias=True), _layer_norm_2d(dims[0]))
            self.stages = nn.Sequential(*[Stage(dims[max(i - 1, 0)], dims[i], depths[i]) for i in range(4)])
            self.head = Head(dims[-1])

        def forward(self, x):
            return self.head(self.stages(self.stem(x)))

    return ConvNeXt().eval()


def convstem(convs):
    """RobustBench's ConvStem (`ConvBlock1(48)`: ((48, 2), (96, 2)); `ConvBlock3(64)`: ((64, 2), (96, 2),
    (128, 1)); `ConvBlock3(96)`: ((96, 2), (144, 2), (192, 1))) as a module with a `stem` Sequential."""
    import torch
    from torch import nn

    class LayerNorm(nn.Module):  # convstem_models.LayerNorm, data_format="channels_first"
        def __init__(self, c, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(c))
            self.bias = nn.Parameter(torch.zeros(c))
            self.eps = eps

        def forward(self, x):
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(s + self.eps)
            return self.weight[:, None, None] * x + self.bias[:, None, None]

    class ConvStem(nn.Module):
        def __init__(self):
            super().__init__()
            modules, cin = [], 3
            for c, stride in convs:
                modules += [nn.Conv2d(cin, c, 3, stride=stride, padding=1), LayerNorm(c), nn.GELU()]
                cin = c
            self.stem = nn.Sequential(*modules)

        def forward(self, x):
            return self.stem(x)

    return ConvStem()


def convnext_convstem(depths, dims, convs, num_classes=1000):
    """`convnext(...)` with `model.stem = convstem(convs)`, as RobustBench's `get_convstem_models`."""
    model = convnext(depths, dims, num_classes=num_classes)
    model.stem = convstem(convs)
    return model.eval()


def normalize_model(model, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """RobustBench `normalize_model`: Sequential(normalize=ImageNormalizer(mean, std), model=model)."""
    from collections import OrderedDict

    import torch
    from torch import nn

    class ImageNormalizer(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.as_tensor(std).view(1, 3, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std

    return nn.Sequential(OrderedDict([("normalize", ImageNormalizer()), ("model", model)])).eval()


def randomize_(module, seed=0, scale=1.0):
    """Draws every parameter and BatchNorm running statistic at random, in place; returns `module`.

    Kernels ~ N(0, scale * 2 / fan_in) (He), biases ~ N(0, 0.1), norm weights ~ U(0.5, 1.5), layer-scale
    `gamma` ~ U(0.1, 1), BN running means ~ N(0, 0.1) and variances ~ U(0.5, 2). Normalisation buffers
    (`mean`/`std`) are left alone.
    """
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            shape = tuple(tensor.shape)
            if leaf == "num_batches_tracked" or leaf in ("mean", "std"):
                continue
            if leaf == "running_var":
                value = rng.uniform(0.5, 2.0, shape)
            elif leaf == "running_mean":
                value = rng.normal(0, 0.1, shape)
            elif leaf == "gamma":
                value = rng.uniform(0.1, 1.0, shape)
            elif leaf == "weight" and len(shape) == 1:
                value = rng.uniform(0.5, 1.5, shape)
            elif leaf == "weight":
                fan_in = int(np.prod(shape[1:]))
                value = rng.normal(0, np.sqrt(scale * 2.0 / fan_in), shape)
            else:
                value = rng.normal(0, 0.1, shape)
            tensor.copy_(torch.from_numpy(value.astype(np.float32)))
    return module
