"""The contract in code: every name each backend exports, with its signature.

Nothing here runs. Each backend (`d2lattn/<name>/__init__.py`) exports every
name below with the same parameters, and `tests/test_api.py` holds them to it.
For a class, `__init__` is the constructor and `__call__` the call; a backend
implements the call the way its framework does (`forward` in PyTorch and
Gluon, `call` in Keras, `__call__` in Flax NNX).

Shapes: batch `b`, queries `q`, key-value pairs `k`, feature sizes `d`, `dv`.
`valid_lens`: integers, `(b,)` per sequence or `(b, q)` per query; a length
beyond the number of keys means all keys. `mask`: booleans broadcastable to
the scores `(b, q, k)`, True = may attend. A position is attended only if
both allow it.

`training`: None follows the framework's own mode; True/False overrides it.
"""

# The backend's canonical name, e.g. "torch".
BACKEND = "<name>"


# --- tensor helpers: thin, identical aliases so chapters read the same -----------


def tensor(data, dtype=None):
    """A native array from `data`; float data becomes float32 unless `dtype` says."""


def to_numpy(x):
    """A NumPy copy of `x` (works on arrays that take part in autodiff)."""


def ones(shape):
    """float32 ones."""


def zeros(shape):
    """float32 zeros."""


def arange(start, stop=None, step=1):
    """Like `numpy.arange`; float32 if any bound is a float, else int32."""


def normal(shape, mean=0.0, std=1.0, *, seed=None):
    """float32 normal samples drawn by NumPy, so one seed gives the same numbers
    on every backend."""


def bmm(a, b):
    """Batched matrix product: (b, n, m) @ (b, m, p) -> (b, n, p)."""


def matmul(a, b):
    """Matrix product with broadcasting over leading axes."""


def reshape(x, shape):
    """`x` with a new shape."""


def concat(xs, axis=0):
    """Join arrays along an existing axis."""


def stack(xs, axis=0):
    """Join arrays along a new axis."""


def swapaxes(x, axis1, axis2):
    """`x` with two axes exchanged."""


def exp(x):
    """Elementwise exponential."""


def tanh(x):
    """Elementwise hyperbolic tangent."""


# --- attention ----------------------------------------------------------------


def masked_softmax(X, valid_lens=None, *, mask=None):
    """Softmax over the last axis that gives masked positions weight exactly 0.

    A row with nothing to attend to is all zeros (never NaN, never uniform).
    `valid_lens` indexes the first axis of X ((b,)) or the first and the
    second-to-last ((b, q)). Does not modify X.
    """


def causal_mask(num_queries, num_keys=None):
    """Boolean (q, k): key j may be attended by query i iff j <= i."""


class DotProductAttention:
    """Scaled dot-product attention: softmax(Q K^T / sqrt(d)) V."""

    def __init__(self, dropout=0.0):
        """`dropout` on the attention weights, active only in training."""

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        """(b, q, d), (b, k, d), (b, k, dv) -> (b, q, dv); sets `.attention_weights` (b, q, k)."""


class AdditiveAttention:
    """Additive (MLP) attention: scores w_v^T tanh(W_q q + W_k k), no biases."""

    def __init__(self, query_size, key_size, num_hiddens, dropout=0.0):
        """Parameters W_q (query_size, h), W_k (key_size, h), w_v (h, 1)."""

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        """(b, q, query_size), (b, k, key_size), (b, k, dv) -> (b, q, dv)."""


class MultiHeadAttention:
    """`num_heads` scaled dot-product attentions in parallel on learned projections."""

    def __init__(self, num_hiddens, num_heads, dropout=0.0, bias=False, *,
                 query_size=None, key_size=None, value_size=None):
        """W_q, W_k, W_v (in, num_hiddens), W_o (num_hiddens, num_hiddens), biases if `bias`."""

    def __call__(self, queries, keys, values, valid_lens=None, *, mask=None, training=None):
        """-> (b, q, num_hiddens); `.attention_weights` (b, num_heads, q, k)."""


class PositionalEncoding:
    """Adds sinusoidal position codes: sin in even columns, cos in odd ones."""

    def __init__(self, num_hiddens, dropout=0.0, max_len=1000):
        """`.P` holds the codes, (1, max_len, num_hiddens)."""

    def __call__(self, X, *, training=None):
        """(b, T, num_hiddens) -> X + P[:, :T], then dropout."""


# --- portable parameters --------------------------------------------------------


def get_params(module):
    """{canonical name: np.ndarray}; dense maps are y = x @ W + b, W (in, out)."""


def set_params(module, params):
    """Load canonical parameters; a missing, extra or mis-shaped entry is a ValueError."""


def value_and_grads(fn, inputs, projection, *, compiled=False, **kwargs):
    """Output and gradients of sum(fn(*inputs, **kwargs) * projection), all NumPy.

    `compiled=True` runs forward and backward the way the framework compiles
    (jax.jit, tf.function, hybridized Gluon, torch.compile); NumPy has no
    compiler, so there it is the same computation.

    Returns (output, [d/d input for each input], {canonical name: d/d param})
    for a module's parameters (empty for a plain function). The NumPy
    reference answers with float64 central finite differences.
    """


# --- figures ----------------------------------------------------------------------


def show_heatmaps(matrices, xlabel, ylabel, titles=None, figsize=(2.5, 2.5), cmap="Reds"):
    """Heatmaps of a (rows, cols, q, k) array-like, one figure; returns the figure."""


__all__ = [name for name in dir() if not name.startswith("_")]
