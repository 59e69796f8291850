"""The TensorFlow backend: Keras 3 layers, tf.GradientTape, the Keras training context as the mode.

Keras 3 runs on whichever framework $KERAS_BACKEND names, and reads it once, when
Keras (or TensorFlow, which loads part of Keras) is first imported. This backend
needs Keras on TensorFlow whatever the variable says: imported first, it pins
the variable to "tensorflow" while both load, then restores it; imported after
Keras was loaded on another framework, it raises an ImportError saying so.
"""

import contextlib
import os
import sys

from d2lattn import _backend

BACKEND = "tensorflow"


@contextlib.contextmanager
def _keras_on_tensorflow():
    config = sys.modules.get("keras.src.backend.config")  # set when Keras or TensorFlow was imported
    if config is not None and config.backend() != "tensorflow":
        raise ImportError(
            f"the d2lattn backend 'tensorflow' needs Keras on TensorFlow, but Keras was already "
            f"loaded with KERAS_BACKEND={config.backend()!r} (by an earlier `import keras` or "
            f"`import tensorflow`); import d2lattn's TensorFlow backend before Keras and TensorFlow, "
            f"or set KERAS_BACKEND=tensorflow"
        )
    saved = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["KERAS_BACKEND"]
        else:
            os.environ["KERAS_BACKEND"] = saved


# TensorFlow's C++ INFO lines at startup (CPU features, ...); warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


with _backend.requires("tensorflow"), _keras_on_tensorflow():
    __all__ = _backend.export(globals())

