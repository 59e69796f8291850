"""Merge every framework's executed chapters into one MyST page per chapter: `python book/merge.py`.

Reads build/<backend>/NN_name.ipynb for each framework that has run the chapters and writes
build/book/, the Sphinx source that book/conf.py builds into build/html/:

- NN_name.md: the chapter's markdown once; each code cell's code, then a tab-set with one tab
  per framework (d2l's order) holding that run's outputs, every tab-set of the site in one
  sphinx-design sync group, so choosing a framework anywhere switches them all (and
  `?backend=jax` preselects one). Cells whose outputs are the same on all four show them once,
  cells with no output on any run show none.
- index.md: the chapter list, which framework ran which chapter, how to choose a framework.
- _extra/: figures as PNG files, each run's notebook and each chapter's MyST source, copied
  as they are into the site.
"""

import base64
import json
import pathlib
import re
import shutil
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # d2lattn._backend, which imports no framework
from d2lattn import _backend  # noqa: E402

BUILD = ROOT / "build"
OUT = BUILD / "book"
FRAMEWORKS = {b: _backend.DISPLAY_NAMES[b] for b in _backend.BOOK_TABS}  # {backend: tab title}, d2l's order
SYNC_GROUP = "backend"  # the address parameter: ?backend=jax


def listed(items, last="and"):
    """'a, b, c and d': the items in prose."""
    items = list(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}" if len(items) > 1 else "".join(items)


def fenced(text, info="text"):
    """A code block whose fence is longer than any run of backticks inside it."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"


def tab_set(tabs):
    """A synchronised tab-set from {backend: MyST body}, in FRAMEWORKS' order."""
    items = [f":::{{tab-item}} {FRAMEWORKS[b]}\n:sync: {b}\n\n{body}\n:::" for b, body in tabs.items()]
    return f"::::{{tab-set}}\n:sync-group: {SYNC_GROUP}\n\n" + "\n\n".join(items) + "\n::::"


def png_size(data, metadata):
    """(width, height) in CSS pixels: the notebook's metadata if it has them, else the PNG header."""
    width, height = struct.unpack(">II", data[16:24])
    return metadata.get("width", width), metadata.get("height", height)


def figure(data, metadata, path, alt):
    """Write the PNG under _extra/ and return an <img> whose size is known before it loads."""
    png = base64.b64decode(data)
    (OUT / "_extra" / path).parent.mkdir(parents=True, exist_ok=True)
    (OUT / "_extra" / path).write_bytes(png)
    width, height = png_size(png, metadata)
    return (f'<img class="cell-figure" src="{path}" width="{width}" height="{height}" '
            f'loading="lazy" alt="{alt}">')


def render(outputs, figure_path, alt):
    """One run's outputs of one cell as MyST: text, figures, markdown (show_source), HTML."""
    blocks = []
    for out in outputs:
        kind, data = out["output_type"], out.get("data", {})
        if kind == "stream":
            blocks.append(fenced("".join(out["text"])))
        elif kind == "error":
            blocks.append(fenced(f"{out['ename']}: {out['evalue']}"))
        elif "image/png" in data:
            meta = out.get("metadata", {}).get("image/png", {})
            blocks.append(figure(data["image/png"], meta, figure_path(len(blocks)), alt))
        elif "text/markdown" in data:
            blocks.append("".join(data["text/markdown"]).strip())
        elif "text/html" in data:
            blocks.append("```{raw} html\n" + "".join(data["text/html"]).strip() + "\n```")
        elif "text/plain" in data:
            blocks.append(fenced("".join(data["text/plain"])))
    return "\n\n".join(blocks)


def comparable(outputs):
    """What a reader sees of a cell's outputs, for deciding whether the frameworks agree."""
    return [(o["output_type"], o.get("name"), "".join(o.get("text", "")), o.get("data")) for o in outputs]


def notebooks(stem):
    """{backend: cells} of chapter `stem`'s runs: those with the newest run's cells (older ones are stale)."""
    paths = {b: p for b in FRAMEWORKS if (p := BUILD / b / f"{stem}.ipynb").exists()}
    runs = {b: json.loads(p.read_text())["cells"] for b, p in paths.items()}
    newest = [c["source"] for c in runs[max(paths, key=lambda b: paths[b].stat().st_mtime)]]
    return {b: cells for b, cells in runs.items() if [c["source"] for c in cells] == newest}


def downloads(stem, runs):
    """The page's first tab-set: each framework's executed notebook and the MyST source."""
    source = f'<a href="sources/{stem}.md" download>{stem}.md</a>'
    tabs = {}
    for b, name in FRAMEWORKS.items():
        if b in runs:
            tabs[b] = (f'Run on {name}: <a class="notebook-link" href="notebooks/{b}/{stem}.ipynb" download>'
                       f"{stem}.ipynb</a> (executed, with its outputs) · MyST source: {source} "
                       f"(open it in JupyterLab through jupytext, with `D2LATTN_BACKEND={b}`).")
        else:
            tabs[b] = not_run(stem, b) + f" MyST source: {source}."
    return tab_set(tabs)


def not_run(stem, backend):
    """What a framework's tab says when build/<backend>/ has no run of this version of the chapter."""
    ran = "has not run" if not (BUILD / backend / f"{stem}.ipynb").exists() else "ran an older version of"
    return f"*{FRAMEWORKS[backend]} {ran} this chapter: `nox -s chapters-{backend}` runs it.*"


def chapter(stem):
    """Write build/book/<stem>.md and its files under _extra/; return its title and frameworks."""
    runs, source = notebooks(stem), ROOT / "chapters" / f"{stem}.md"
    (OUT / "_extra" / "sources").mkdir(parents=True, exist_ok=True)
    shutil.copy(source, OUT / "_extra" / "sources" / source.name)
    for b in runs:
        (OUT / "_extra" / "notebooks" / b).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUILD / b / f"{stem}.ipynb", OUT / "_extra" / "notebooks" / b)
    cells = next(iter(runs.values()))
    title = next(line[2:] for c in cells for line in "".join(c["source"]).splitlines() if line.startswith("# "))
    blocks = []
    for i, cell in enumerate(cells):
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            blocks.append(text.replace(f"# {title}", f"# {title}\n\n{downloads(stem, runs)}", 1))
            continue
        blocks.append(fenced(text, "python"))
        outputs = {b: runs[b][i].get("outputs", []) for b in runs}
        seen = {json.dumps(comparable(o), sort_keys=True) for o in outputs.values()}
        if not any(outputs.values()):
            continue
        if len(runs) == len(FRAMEWORKS) and len(seen) == 1:
            blocks.append(render(outputs["torch"], lambda k, i=i: f"figures/{stem}/all-{i}-{k}.png",
                                 "figure, the same on every framework"))
            continue
        tabs = {b: render(outputs[b], lambda k, b=b, i=i: f"figures/{stem}/{b}-{i}-{k}.png",
                          f"figure from the {FRAMEWORKS[b]} run") or "*(no output)*"
                if b in runs else not_run(stem, b) for b in FRAMEWORKS}
        blocks.append(tab_set(tabs))
    (OUT / f"{stem}.md").write_text("\n\n".join(blocks) + "\n")
    return title, list(runs)


def index(chapters):
    """The front page: how to choose a framework, then the chapters and who ran them."""
    rows = "\n".join(f"| [{title}]({stem}.md) | " + " | ".join("✓" if b in ran else "–" for b in FRAMEWORKS) + " |"
                     for stem, (title, ran) in chapters.items())
    (OUT / "index.md").write_text(f"""# d2lattn: attention, on the framework you use

Each chapter runs unchanged on {listed(FRAMEWORKS.values())}. Its text and code appear
once; under every code cell, one tab per framework holds that framework's own outputs: its
numbers, its figures, its source code where a cell shows it.

**Choosing a framework.** Click a framework's tab under any cell: every cell of the page
switches to it, and the choice is remembered on every other page (in your browser's local
storage). To link to one directly, add `?{SYNC_GROUP}=` and {listed([f"`{b}`" for b in FRAMEWORKS], "or")}
to a chapter's address, for example `{next(iter(chapters))}.html?{SYNC_GROUP}=jax`. At the top of each
chapter, the same tabs link that framework's executed notebook and the chapter's MyST source, to
run in Jupyter. A framework's tabs fill in once it has run the chapters: `nox -s chapters-jax book`
runs them on JAX and rebuilds this site.

| chapter | {" | ".join(FRAMEWORKS.values())} |
|---|{"---|" * len(FRAMEWORKS)}
{rows}

```{{toctree}}
:hidden:
:maxdepth: 1

{chr(10).join(chapters)}
```
""")


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    stems = sorted({p.stem for b in FRAMEWORKS for p in (BUILD / b).glob("[0-9][0-9]_*.ipynb")
                    if (ROOT / "chapters" / f"{p.stem}.md").exists()})
    if not stems:
        raise SystemExit("no executed chapters under build/<backend>/: run `nox -s chapters-torch` first")
    chapters = {stem: chapter(stem) for stem in stems}
    index(chapters)
    print(f"merged {len(chapters)} chapters into {OUT}:",
          ", ".join(f"{FRAMEWORKS[b]} {sum(b in ran for _, ran in chapters.values())}" for b in FRAMEWORKS))


if __name__ == "__main__":
    main()
