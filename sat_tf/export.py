"""SavedModel export for serving: raw images in, logits and probabilities out.

The preprocessing (SAT `2x - 1`, mean/std) is a layer inside the model, so the
signatures only convert pixels to [0, 1]:

- `serving_default` / `serve_uint8`: uint8 images [B, H, W, C] (0..255).
- `serve_float`: float32 images [B, H, W, C] in [0, 1].

Both return `{"logits", "probabilities", "classes"}` (classes = top-1 index).
The result reloads with plain `tf.saved_model.load` and needs no sat_tf.
"""

import keras
import tensorflow as tf


def _outputs(model, images):
    logits = tf.cast(model(images, training=False), tf.float32)
    return {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits, axis=-1),
        "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
    }


def export_saved_model(model, path, *, image_shape=None):
    """Writes a SavedModel with uint8 and float serving signatures to `path`.

    Args:
        model: a Keras model taking float [0, 1] NHWC images.
        path: output directory (created).
        image_shape: (H, W, C); defaults to the model's input shape.
    """
    if image_shape is None:
        image_shape = tuple(model.input_shape[1:])
    if any(d is None for d in image_shape):
        raise ValueError(
            f"`image_shape` must be fully defined for export. Received: {image_shape}"
        )
    uint8_spec = tf.TensorSpec((None, *image_shape), tf.uint8, name="images")
    float_spec = tf.TensorSpec((None, *image_shape), tf.float32, name="images")

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve_uint8(images):
        return _outputs(model, tf.cast(images, tf.float32) / 255.0)

    def serve_float(images):
        return _outputs(model, images)

    archive.add_endpoint("serve_uint8", serve_uint8, input_signature=[uint8_spec])
    archive.add_endpoint("serve_float", serve_float, input_signature=[float_spec])
    archive.add_endpoint("serve", serve_uint8, input_signature=[uint8_spec])
    archive.write_out(path, verbose=False)
    return path
