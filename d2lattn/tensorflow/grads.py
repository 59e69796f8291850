"""Gradients by tf.GradientTape, in the harness's portable form."""

import keras
import tensorflow as tf

from d2lattn.tensorflow.ops import _records_weights, tensor, to_numpy
from d2lattn.tensorflow.params import _named, _submodules


def _spec(x, batched):
    """A TensorSpec for `x`, its leading (batch) size unknown when `batched`."""
    return tf.TensorSpec((None,) * batched + tuple(x.shape[batched:]), x.dtype)


def value_and_grads(fn, inputs, projection, *, compiled=False, **kwargs):
    """`compiled=True` runs forward and backward in one tf.function whose signature leaves
    the batch size unknown: of the inputs, of integer arguments (lengths, tokens), and of a
    mask with a batch axis. Keyword arrays are not differentiated: pass what needs a gradient
    (a score_bias) as an input. A tuple output takes one projection per element; one that nests
    a cache, (Y, (keys, values)), counts as the flat tuple of its arrays.

    A traced call records graph tensors in `.attention_weights`: the traced function
    returns them, and they are set on their layers, as values, after it ran.
    """
    xs = [tensor(x) for x in inputs]
    layers = [sub for _, sub in _submodules(fn)] if isinstance(fn, keras.layers.Layer) else []
    named = _named(fn) if layers else {}
    params = [v for v, _ in named.values()]
    recorders = [sub for sub in layers if _records_weights(sub)]
    arrays = {k: tensor(v) for k, v in kwargs.items() if v is not None and not isinstance(v, bool)}
    flags = {k: v for k, v in kwargs.items() if k not in arrays}  # None, training=True/False

    def step(xs, arrays):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = fn(*xs, **arrays, **flags)
            several = isinstance(out, (tuple, list))
            outs, projections = (tf.nest.flatten(out), projection) if several else ((out,), (projection,))
            objective = tf.add_n([tf.reduce_sum(o * tensor(p)) for o, p in zip(outs, projections)])
        grads = tape.gradient(objective, xs + params)
        grads = [tf.zeros_like(t) if g is None else tf.convert_to_tensor(g)  # an embedding's are IndexedSlices
                 for t, g in zip(xs + params, grads)]
        return out, grads, [sub.attention_weights for sub in recorders]

    if compiled:
        rank = len(xs[0].shape) if xs else None
        signature = ([_spec(x, True) for x in xs],
                     {k: _spec(v, v.dtype.is_integer or len(v.shape) == rank) for k, v in arrays.items()})
        step = tf.function(step, input_signature=signature)
    out, grads, weights = step(xs, arrays)
    for sub, w in zip(recorders, weights):
        sub.attention_weights = w
    param_grads = {name: to_numpy(layout(g)) for (name, (_, layout)), g in zip(named.items(), grads[len(xs):])}
    output = tuple(to_numpy(o) for o in tf.nest.flatten(out)) if isinstance(out, (tuple, list)) else to_numpy(out)
    return output, [to_numpy(g) for g in grads[: len(xs)]], param_grads
