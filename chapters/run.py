"""Execute every chapter on one backend: `python -m chapters.run BACKEND [OUTDIR] [CHAPTER ...]`.

Each chapter is a MyST markdown notebook (chapters/NN_name.md). It is run top to
bottom with D2LATTN_BACKEND=BACKEND, and the executed notebook, outputs and
figures included, is written to OUTDIR (default build/BACKEND/) with the time
each chapter took. A failing cell fails the run. Progress bars are tqdm's text
bars, stored as their final line (a widget's saved state would be its first frame).
Chapters run JOBS at a time (one per core, at most four), each kernel on one intra-op thread:
their models are small, and two kernels whose frameworks each spread over every core spend their
time waiting for each other's threads. D2LATTN_CHAPTER_JOBS=1 runs them one after another.
"""

import concurrent.futures
import contextlib
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import threading
import time

import jupytext
import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).resolve().parent
CELL_TIMEOUT = 600
JOBS = int(os.environ.get("D2LATTN_CHAPTER_JOBS", min(4, os.cpu_count() or 1)))
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
              "TF_NUM_INTEROP_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
TEXT_BARS = "--IPKernelApp.exec_lines=import tqdm.auto, tqdm.std; tqdm.auto.tqdm = tqdm.std.tqdm"
# What kernels write to the terminal, or into a notebook's stderr, that tells a learner nothing:
# TensorFlow 2.21 prints its oneDNN notice (and absl's preamble) before its log level is read, so
# TF_CPP_MIN_LOG_LEVEL cannot hide it, and turning oneDNN off would change the kernels' numerics;
# and, logged as an error, that its int32 kernels fall back to Eigen on a CPU without AVX-512 (a
# speed note, raised by integer ops such as generate's token handling). Anything else passes through.
NOISE = re.compile(r"(?:[IWE]\d{4} [^\]\n]*\] (?:oneDNN custom operations are on|oneDNN supports DT_INT32 only "
                   r"on platforms with AVX-512)|WARNING: All log messages before absl::InitializeLog\(\) is called "
                   r"are written to STDERR)[^\n]*\n?")
REDRAWN = re.compile(r"[^\n]*\r(?=[^\n])")  # a line's earlier states, each ended by a carriage return


def chapters(names=()):
    found = sorted(HERE.glob("[0-9][0-9]_*.md"))
    return [p for p in found if not names or any(p.stem.startswith(n) or p.stem == n for n in names)]


class IPCKernelManager(KernelManager):
    """Kernels on IPC sockets in a private folder: nothing listens on the network, and ipykernel
    has no reason to warn, once per chapter, that TCP traffic is unencrypted."""

    folder = tempfile.gettempdir()  # execute() gives each chapter's kernel a folder of its own

    def __init__(self, **kwargs):
        super().__init__(transport="ipc", ip=os.path.join(self.folder, "kernel"), **kwargs)


@contextlib.contextmanager
def quiet_stderr(noise=NOISE):
    """Route this process's stderr, which the kernels inherit, through a filter that drops `noise`."""
    sys.stderr.flush()
    real, (read, write) = os.dup(2), os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump():
        with os.fdopen(read, errors="replace") as lines, os.fdopen(os.dup(real), "w") as out:
            for line in lines:
                if not noise.search(line):
                    out.write(line)
                    out.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)
        os.close(real)
        thread.join(timeout=10)


def final_states(cell):
    """Join adjacent outputs of one stream, drop the NOISE lines, keep the last state of each redrawn
    line, drop blank stderr."""
    outputs = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream" and outputs and outputs[-1].get("name") == out.name:
            outputs[-1].text += out.text
        else:
            outputs.append(out)
    for out in outputs:
        if out.output_type == "stream":  # the kernel's own stderr reaches the notebook too
            out.text = REDRAWN.sub("", NOISE.sub("", out.text))
    cell.outputs = [out for out in outputs if out.get("name") != "stderr" or out.text.strip()]


def execute(path, folder):
    """Run one chapter top to bottom in its own kernel (IPC sockets in `folder`): (notebook, seconds)."""
    notebook = jupytext.read(path)
    kernels = type("Kernels", (IPCKernelManager,), {"folder": folder})
    start = time.perf_counter()
    # shutdown_kernel="immediate": every cell's outputs are in by then, and ipykernel 7.4's graceful
    # shutdown can race its own IOPub pipe and log a ZMQError traceback (seen once on MXNet, two
    # kernels at a time; ipykernel#1518 fixed one path of that race, not the one in `schedule`)
    NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3", kernel_manager_class=kernels,
                   extra_arguments=[TEXT_BARS], resources={"metadata": {"path": str(HERE.parent)}},
                   shutdown_kernel="immediate").execute()
    for cell in notebook.cells:
        final_states(cell)
    return notebook, round(time.perf_counter() - start, 1)


def run(backend, outdir, names=()):
    os.environ["D2LATTN_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines: a log level, not a kernel switch
    if JOBS > 1:
        for key, value in ONE_THREAD.items():
            os.environ.setdefault(key, value)
    outdir.mkdir(parents=True, exist_ok=True)
    timings = {}
    root = tempfile.mkdtemp(prefix="d2lattn-kernels-")
    paths = chapters(names)
    pool = concurrent.futures.ThreadPoolExecutor(JOBS)
    futures = [pool.submit(execute, path, tempfile.mkdtemp(dir=root)) for path in paths]
    try:
        for path, future in zip(paths, futures):  # in chapter order, each as soon as it and those before are done
            notebook, timings[path.stem] = future.result()
            nbformat.write(notebook, outdir / f"{path.stem}.ipynb")
            print(f"{backend:<11} {path.stem:<36} {timings[path.stem]:>7.1f} s", flush=True)
    finally:  # a failed chapter fails the run: the chapters not yet started are not started
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(root, ignore_errors=True)
    (outdir / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"executed {len(timings)} chapters on {backend}: open {outdir}/*.ipynb")


if __name__ == "__main__":
    backend, *rest = sys.argv[1:]
    outdir = pathlib.Path(rest.pop(0)) if rest and not rest[0][:2].isdigit() else pathlib.Path("build") / backend
    with quiet_stderr():
        run(backend, outdir, rest)
