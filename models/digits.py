"""`digits_cnn`: a small, fast CNN for scikit-learn's 8x8 handwritten digits.

The built-in real data set of `sat_tf` (1 797 images that ship inside
scikit-learn), so the whole SAT path (attack, training, evaluation, export)
runs on a laptop CPU in seconds.
"""

import keras

from sat_tf.models import layers, register_model


@keras.saving.register_keras_serializable(package="sat_tf")
class DigitsCNN(layers.ImageClassifier):
    """A small, fast CNN for scikit-learn's 8x8x1 digits (~29k parameters).

    conv3x3(f0)-BN-act, conv3x3/2(f1)-BN-act (8x8 -> 4x4, a strided conv
    rather than a max-pool so the net is smooth wherever the activation is),
    conv3x3(f2)-BN-act, global average pool, `fc`. SAT init. Its BatchNorm
    makes the "attack with BN in inference mode" convention observable.

    Args:
        filters: three ints. Defaults to `(32, 32, 64)`.
        num_classes, input_shape, activation, preprocessing, data_format,
        bn_momentum, bn_epsilon, name: as `resnet.ResNet`. Defaults: 10,
            `(8, 8, 1)`, `"relu"`, `"sat"` (`x * 2 - 1`), `"channels_last"`,
            0.9, 1e-5.
        **kwargs: Base model keyword arguments.
    """

    def __init__(
        self,
        filters=(32, 32, 64),
        num_classes=10,
        input_shape=(8, 8, 1),
        activation="relu",
        preprocessing="sat",
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name="digits_cnn",
        **kwargs,
    ):
        filters = tuple(filters)
        if len(filters) != 3 or not all(isinstance(f, int) and f >= 1 for f in filters):
            raise ValueError(f"`filters` must be three ints >= 1. Received: filters={filters!r}")
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
        for i, (f, strides) in enumerate(zip(filters, (1, 2, 1)), start=1):
            x = layers.conv(x, f, 3, args, strides=strides, name=f"conv{i}")
            x = layers.batch_norm(x, args, name=f"bn{i}")
            x = layers.act(x, args, name=f"act{i}")
        outputs = layers.classifier_head(x, num_classes, args, name="fc")
        super().__init__(inputs, outputs, name=name, **common, **kwargs)

        # === Config ===
        self.filters = filters

    def get_config(self):
        config = super().get_config()
        config.update({"filters": list(self.filters)})
        return config


# === Entry points ===


@register_model
def digits_cnn(**kwargs):
    return DigitsCNN(**kwargs)
