"""Framework-specific test code, one module per backend, the same function names in the same order.

A test that must do something the framework's own way (enter its training mode, build an array
with its own constructor, stop a gradient) asks the `adapter` fixture (tests/conftest.py), never
`if backend_name == ...`. Each module here defines, in this order:

- `call_in_mode(module, train, *inputs, **kwargs)`: call `module` with training=None after
  putting the framework in its training (train=True) or evaluation (False) state, the way a user
  of that framework does;
- `array(values)`: the framework's own array constructor applied to a Python list (what a
  learner writes, with whatever dtype the framework gives it);
- `stop_gradient(x)`: the framework's own stop-gradient;
- `run_left_in_mode(module, train, fn)`: `fn()` run with `module` left in its training (True) or
  evaluation (False) state, the state a user's earlier code left it in;
- `eagerly()`: a context in which the backend's compiled functions run as plain Python, so that
  a test can see the concrete shapes of every call (what a traced function computes);
- `transforms()`: the framework's own transformations, `{name: (capability, transform)}`.
  `transform(fn, module)` turns `fn(module, *arrays)` into a function of the arrays alone, as the
  framework's users apply it (to a closure over the module, or with the module passed in where
  the framework lifts its state); the capability (what `_backend.LACKS` names) says what comes
  back: "compiled" fn's outputs, "vmap" fn mapped over a new leading axis of every array,
  "autodiff" the gradients of fn (a scalar) with respect to every array, "container" fn's outputs
  with the module inside the framework's own container of modules, as its users compose and keep
  them (a keras.Model saved to a .keras file and loaded back, a user's hybridized Gluon block, a
  module of one's own through torch.save and torch.load, nnx.split and nnx.merge).

tests/test_api.py checks that the modules mirror one another.
"""

import importlib

from d2lattn import _backend


def load(backend_name):
    """The adapter module of `backend_name` (imports that framework)."""
    return importlib.import_module(f"tests.adapters.{_backend.canonical(backend_name)}")
