"""Each framework in its own environment, installed from its constraints file.

    nox                      every backend's tests, then crosscheck, the chapters, and lint
    nox -s tests-jax         one backend's tests (writes build/results/jax.npz)
    nox -s crosscheck        compare every backend's results with each other
    nox -s bench-torch       ours against the framework's own attention
"""

import functools

import nox

BACKENDS = ["numpy", "torch", "jax", "tensorflow", "mxnet"]
FRAMEWORKS = [b for b in BACKENDS if b != "numpy"]

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = [
    *(f"tests-{b}" for b in BACKENDS), "crosscheck", *(f"chapters-{b}" for b in FRAMEWORKS), "lint",
]


def install(session, backend, *extras):
    extras = ",".join((backend,) * (backend != "numpy") + extras)
    session.install("-c", f"constraints/{backend}.txt", "-e", f".[{extras}]" if extras else ".")


def tests(session, backend):
    """The whole suite on one backend; writes its harness results for crosscheck."""
    install(session, backend, "test")
    session.run("pytest", f"--backend={backend}", *session.posargs, env={"D2LATTN_BACKEND": backend})


@nox.session(python="3.11")
def crosscheck(session):
    """Backend x backend table of the largest differences; fails on missing or stale results."""
    install(session, "numpy")
    session.run("python", "-m", "tests.crosscheck", *BACKENDS)


def bench(session, backend):
    """Our attention against the framework's own, same weights, same process."""
    install(session, backend)
    session.run("python", "-m", f"benchmarks.bench_{backend}", *session.posargs)


def per_backend(run, backends):
    """Register `run` once per backend as session `<run>-<backend>` (tests-torch, bench-jax, ...)."""
    for backend in backends:
        session = functools.partial(run, backend=backend)
        session.__doc__ = f"{backend}: {run.__doc__}"
        nox.session(python="3.11", name=f"{run.__name__}-{backend}")(session)


def chapters(session, backend):
    """Execute every chapter notebook; the executed notebooks go to build/<backend>/."""
    install(session, backend, "notebooks")
    session.run("python", "-m", "chapters.run", backend, *session.posargs)


per_backend(tests, BACKENDS)
per_backend(chapters, FRAMEWORKS)
per_backend(bench, FRAMEWORKS)


@nox.session(python="3.11")
def lint(session):
    """ruff over the library, tests and benchmarks."""
    session.install("-c", "constraints/numpy.txt", "ruff")
    session.run("ruff", "check", ".")
