"""Execute every chapter on one backend: `python -m chapters.run BACKEND [OUTDIR] [CHAPTER ...]`.

Each chapter is a MyST markdown notebook (chapters/NN_name.md). It is run top to
bottom with D2LATTN_BACKEND=BACKEND, and the executed notebook, outputs and
figures included, is written to OUTDIR (default build/BACKEND/) with the time
each chapter took. A failing cell fails the run.
"""

import json
import os
import pathlib
import sys
import time

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).resolve().parent
CELL_TIMEOUT = 600


def chapters(names=()):
    found = sorted(HERE.glob("[0-9][0-9]_*.md"))
    return [p for p in found if not names or any(p.stem.startswith(n) or p.stem == n for n in names)]


def run(backend, outdir, names=()):
    os.environ["D2LATTN_BACKEND"] = backend
    outdir.mkdir(parents=True, exist_ok=True)
    timings = {}
    for path in chapters(names):
        notebook = jupytext.read(path)
        start = time.perf_counter()
        NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE.parent)}}).execute()
        timings[path.stem] = round(time.perf_counter() - start, 1)
        nbformat.write(notebook, outdir / f"{path.stem}.ipynb")
        print(f"{backend:<11} {path.stem:<36} {timings[path.stem]:>7.1f} s", flush=True)
    (outdir / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"executed {len(timings)} chapters on {backend}: open {outdir}/*.ipynb")


if __name__ == "__main__":
    backend, *rest = sys.argv[1:]
    outdir = pathlib.Path(rest.pop(0)) if rest and not rest[0][:2].isdigit() else pathlib.Path("build") / backend
    run(backend, outdir, rest)
