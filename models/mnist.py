"""`mnist_resnet`: a small ResNet for 28x28 grey images (Fashion-MNIST, MNIST).

Sized for PGD adversarial training of the full 60 000-image Fashion-MNIST
training set in minutes on a 2-core CPU (BENCHMARKS.md, "Fashion-MNIST"):
the study of issue 16 trains dozens of these.
"""

import keras

from sat_tf.models import cifar, layers, register_model


@keras.saving.register_keras_serializable(package="sat_tf")
class MnistResNet(layers.ImageClassifier):
    """A post-activation ResNet for 28x28x1 inputs (78 042 trainable parameters by default).

    conv3x3(`filters[0]`)-BN-act stem at 28x28; one stage per entry of
    `filters`, each `blocks` BasicBlocks (conv3x3-BN-act, conv3x3-BN,
    + shortcut, act; 1x1 conv + BN projection when the shape changes), the
    first block of each stage at its `strides` entry (default 28 -> 14 -> 7
    -> 4); global average pool, `fc`. No max-pool, so the net is smooth
    wherever its activation is. SAT init.

    Every stage strides by 2, the first too: the same net with a full-size
    first stage (`strides=(1, 2, 2)`) costs ~5x the multiply-adds and trained
    ~3x slower here, too slow for a study of many PGD runs.

    Args:
        filters: channels per stage, ints >= 1. Defaults to `(16, 32, 64)`.
        blocks: BasicBlocks per stage, an int >= 1. Defaults to `1`
            (8 weight layers: a ResNet-8).
        strides: the stride of each stage's first block, 1 or 2 per stage.
            Defaults to `(2, 2, 2)`.
        stem_stride: the stem convolution's stride, 1 or 2. Defaults to `1`
            (`mnist_resnet_fast` uses 2).
        num_classes, input_shape, activation, preprocessing, data_format,
        bn_momentum, bn_epsilon, name: as `resnet.ResNet`. Defaults: 10,
            `(28, 28, 1)`, `"relu"`, `"sat"` (`x * 2 - 1`), `"channels_last"`,
            0.9, 1e-5.
        **kwargs: Base model keyword arguments.
    """

    def __init__(
        self,
        filters=(16, 32, 64),
        blocks=1,
        strides=(2, 2, 2),
        stem_stride=1,
        num_classes=10,
        input_shape=(28, 28, 1),
        activation="relu",
        preprocessing="sat",
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name="mnist_resnet",
        **kwargs,
    ):
        filters = tuple(filters)
        if not filters or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in filters):
            raise ValueError(f"`filters` must be a non-empty sequence of ints >= 1. Received: filters={filters!r}")
        if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
            raise ValueError(f"`blocks` must be an int >= 1. Received: blocks={blocks!r}")
        strides = tuple(strides)
        if len(strides) != len(filters) or not all(s in (1, 2) for s in strides):
            raise ValueError(
                f"`strides` must be one 1 or 2 per stage ({len(filters)} stages). Received: strides={strides!r}"
            )
        if stem_stride not in (1, 2):
            raise ValueError(f"`stem_stride` must be 1 or 2. Received: stem_stride={stem_stride!r}")
        common = layers.common_kwargs(
            num_classes=num_classes,
            input_shape=input_shape,
            activation=activation,
            preprocessing=preprocessing,
            data_format=data_format,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
        )
        args = layers.block_args(common, "sat")

        # === Functional Model ===
        inputs, x = layers.image_input(input_shape, preprocessing, data_format)
        x = layers.conv(x, filters[0], 3, args, strides=stem_stride, name="conv1")
        x = layers.batch_norm(x, args, name="bn1")
        x = layers.act(x, args, name="act1")
        for s, (f, stride) in enumerate(zip(filters, strides)):
            for b in range(blocks):
                x = cifar.apply_cifar_basic_block(x, f, stride if b == 0 else 1, args, name=f"layer{s + 1}_{b}")
        outputs = layers.classifier_head(x, num_classes, args, name="fc")
        super().__init__(inputs, outputs, name=name, **common, **kwargs)

        # === Config ===
        self.filters = filters
        self.blocks = blocks
        self.strides = strides
        self.stem_stride = stem_stride

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": list(self.filters),
                "blocks": self.blocks,
                "strides": list(self.strides),
                "stem_stride": self.stem_stride,
            }
        )
        return config


# === Entry points ===


@register_model
def mnist_resnet(**kwargs):
    return MnistResNet(**kwargs)


@register_model
def mnist_resnet_fast(**kwargs):
    """`mnist_resnet` with a stride-2 stem (28 -> 14 -> 7 -> 4 -> 2): the same 78 042 parameters at ~1/3 of
    the time per image. The Fashion-MNIST study's network: there AutoAttack's 5 000 Square queries per robust
    test image, not training, set the cost of a run (RESULTS.md, "Fashion-MNIST")."""
    return MnistResNet(**{"stem_stride": 2, "name": "mnist_resnet_fast", **kwargs})
