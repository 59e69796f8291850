"""Each framework in its own environment, installed from its constraints file.

    nox                      every backend's tests, then crosscheck, the chapters, and lint
    nox -s tests-jax         one backend's tests (writes build/results/jax.npz)
    nox -s crosscheck        compare every backend's results with each other
    nox -s bench-torch       ours against the framework's own attention
    nox -s book              the chapters that have run, every framework's in tabs: build/html/index.html
    nox -s book-test         the book in headless Chromium (Debian's chromium package, installed if missing)
"""

import functools
import os
import pathlib
import re
import shutil
import sys

import nox

sys.path.insert(0, os.path.dirname(__file__))  # d2lattn._backend, which imports no framework
from d2lattn import _backend  # noqa: E402

FRAMEWORKS = list(_backend.FRAMEWORK_BACKENDS)
BACKENDS = [_backend.REFERENCE, *FRAMEWORKS]  # the reference's session first: it is the quickest

# What chapters.run prints: one line per chapter, then where the notebooks are.
CHAPTER_LOG = re.compile(r"^\S+ +\d\d_\w+ +[\d.]+ s$|^executed \d+ chapters on \w+: open ")
# TensorFlow's C++ INFO lines tell a learner nothing (a logging level, not a kernel switch).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = [
    *(f"tests-{b}" for b in BACKENDS), "crosscheck", *(f"chapters-{b}" for b in FRAMEWORKS), "book", "book-test",
    "lint",
]
# pinned in constraints/book.txt
BOOK = ["sphinx", "myst-parser", "sphinx-design", "sphinxcontrib-bibtex", "furo", "django-static-mathjax"]
CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")  # where Debian's chromium package puts the browser


def install(session, backend, *extras):
    """`backend`'s one environment, .nox/<backend>, shared by its sessions (tests, chapters, bench,
    mutants: the framework is installed once), with `extras` added from constraints/<backend>.txt.
    Returns run(program, *args, **kwargs): session.run with the environment's program."""
    root = pathlib.Path(".nox", backend).resolve()
    if not (root / "bin" / "python").exists():
        session.run_install(sys.executable, "-m", "venv", str(root), external=True, silent=True)
    extras = ",".join((backend,) * (backend != _backend.REFERENCE) + extras)
    session.run_install(str(root / "bin" / "python"), "-m", "pip", "install", "-c", f"constraints/{backend}.txt",
                        "-e", f".[{extras}]" if extras else ".", external=True, silent=True)

    def run(program, *args, env=None, **kwargs):
        env = {"VIRTUAL_ENV": str(root), "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}", **(env or {})}
        return session.run(str(root / "bin" / program), *args, env=env, external=True, **kwargs)

    return run


# The suite on one pytest-xdist worker per core, the tests handed out one by one (each process saves
# its share of the harness results, merged into one file at the end: tests/harness.py), and each
# framework on one intra-op thread: the suite's tensors are small, and two workers whose frameworks
# each spread over both cores spend their time waiting for each other's threads. `nox -s tests-jax --
# -n 0` runs it in one process.
WORKERS = ("-n", "auto")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
              "TF_NUM_INTEROP_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}


def tests(session, backend):
    """The whole suite on one backend; writes its harness results for crosscheck."""
    run = install(session, backend, "test", *_backend.TEST_EXTRAS.get(backend, ()))
    run("pytest", f"--backend={backend}", *WORKERS, *session.posargs, env={"D2LATTN_BACKEND": backend, **ONE_THREAD})


@nox.session(venv_backend="none")
def crosscheck(session):
    """Backend x backend table of the largest differences; fails on missing or stale results."""
    install(session, _backend.REFERENCE)("python", "-m", "tests.crosscheck", *FRAMEWORKS)


def bench(session, backend):
    """Our attention against the framework's own, same weights, same process."""
    run = install(session, backend, *_backend.TEST_EXTRAS.get(backend, ()))  # PyTorch's: transformers, the peer
    run("python", "-m", f"benchmarks.bench_{backend}", *session.posargs)


def per_backend(run, backends):
    """Register `run` once per backend as session `<run>-<backend>` (tests-torch, bench-jax, ...)."""
    for backend in backends:
        session = functools.partial(run, backend=backend)
        session.__doc__ = f"{backend}: {run.__doc__}"
        nox.session(venv_backend="none", name=f"{run.__name__}-{backend}")(session)


def chapters(session, backend):
    """Execute every chapter notebook; the executed notebooks go to build/<backend>/."""
    log = install(session, backend, "notebooks")("python", "-m", "chapters.run", backend, *session.posargs, silent=True)
    if log is None:  # nox --install-only runs nothing
        return
    print(log, end="")
    noise = [line for line in log.splitlines() if line.strip() and not CHAPTER_LOG.match(line)]
    if noise:  # a learner's run shows one line per chapter; a new warning is worth a look, so it fails here
        session.error("the chapters printed more than one line per chapter:\n" + "\n".join(noise))


per_backend(tests, BACKENDS)
per_backend(chapters, FRAMEWORKS)
per_backend(bench, FRAMEWORKS)


@nox.session(python="3.11")
def book(session):
    """Merge build/<backend>/*.ipynb into one page per chapter and build the site in build/html/."""
    session.install("-c", "constraints/book.txt", *BOOK)
    session.run("python", "book/merge.py")
    shutil.rmtree("build/html", ignore_errors=True)
    # -W: a warning (a new chapter's MyST problem, say) fails the build instead of being published
    session.run("sphinx-build", "-q", "-W", "--keep-going", "-c", "book", "build/book", "build/html")
    session.log("open build/html/index.html")


def install_chromium(session):
    """Debian's chromium through apt where it is missing: as root, or an error that gives the command."""
    if any(os.access(path, os.X_OK) for path in CHROMIUM):
        return
    command = "apt-get update && apt-get install -y chromium"
    if shutil.which("apt-get") is None:
        session.error(f"book-test needs Chromium at {' or '.join(CHROMIUM)} (Debian's chromium package)")
    if os.geteuid() != 0:
        session.error(f"book-test needs Debian's chromium package: run `sudo sh -c '{command}'`, then book-test again")
    session.run_install("apt-get", "update", "-q", external=True)
    session.run_install("apt-get", "install", "-y", "-q", "chromium", external=True,
                        env={"DEBIAN_FRONTEND": "noninteractive"})


@nox.session(name="book-test", python="3.11")
def book_test(session):
    """The built book in headless Chromium through Playwright; screenshots go to build/book-test/."""
    install_chromium(session)
    session.install("-c", "constraints/book.txt", "playwright", "pytest")
    session.run("pytest", "book/tests", *session.posargs)


@nox.session(venv_backend="none")
def mutants(session):
    """Planted bugs, one at a time, against one backend's suite (not a default session: one run each).
    `nox -s mutants -- --backend jax --tests tests/test_decoder.py` picks the backend and the tests."""
    backend = session.posargs[session.posargs.index("--backend") + 1] if "--backend" in session.posargs else "torch"
    run = install(session, backend, "test", *_backend.TEST_EXTRAS.get(backend, ()))
    run("python", "-m", "tests.mutants", *session.posargs, env={"D2LATTN_BACKEND": backend})


@nox.session(python="3.11")
def lint(session):
    """ruff over the library, tests and benchmarks."""
    session.install("-c", f"constraints/{_backend.REFERENCE}.txt", "ruff")
    session.run("ruff", "check", ".")
