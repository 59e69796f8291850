"""Each framework in its own environment, installed from its constraints file.

    nox                      every backend's tests, then crosscheck, then the chapters
    nox -s tests-jax         one backend's tests (writes build/results/jax.npz)
    nox -s crosscheck        compare every backend's results with each other
    nox -s bench-torch       ours against the framework's own attention
"""

import nox

BACKENDS = ["numpy", "torch"]
FRAMEWORKS = [b for b in BACKENDS if b != "numpy"]

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = [f"tests-{b}" for b in BACKENDS] + ["crosscheck"]


def install(session, backend, *extras):
    extras = ",".join((backend,) * (backend != "numpy") + extras)
    session.install("-c", f"constraints/{backend}.txt", "-e", f".[{extras}]" if extras else ".")


@nox.session(python="3.11")
@nox.parametrize("backend", BACKENDS, ids=BACKENDS)
def tests(session, backend):
    """The whole suite on one backend; writes its harness results for crosscheck."""
    install(session, backend, "test")
    session.run("pytest", f"--backend={backend}", *session.posargs, env={"D2LATTN_BACKEND": backend})


@nox.session(python="3.11")
def crosscheck(session):
    """Backend x backend table of the largest differences; fails on missing or stale results."""
    install(session, "numpy")
    session.run("python", "-m", "tests.crosscheck", *BACKENDS)


@nox.session(python="3.11")
@nox.parametrize("backend", FRAMEWORKS, ids=FRAMEWORKS)
def bench(session, backend):
    """Our attention against the framework's own, same weights, same process."""
    install(session, backend)
    session.run("python", "-m", f"benchmarks.bench_{backend}", *session.posargs)


@nox.session(python="3.11")
def lint(session):
    session.install("-c", "constraints/numpy.txt", "ruff")
    session.run("ruff", "check", ".")
