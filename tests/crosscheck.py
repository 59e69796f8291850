"""Compare the frameworks with each other: `python -m tests.crosscheck [torch jax ...]` (default: all).

Each framework's test session writes build/results/<backend>.harness.npz (every harness case,
eager and compiled), <backend>.training-lm.npz (a language model after six Adam steps,
tests/test_train.py), <backend>.training-vit.npz (a ViT after six Adam steps, tests/test_vision.py)
and <backend>.lm.safetensors (TransformerLM weights, tests/test_params.py). This prints, per
case run, the largest difference between each pair of frameworks (forward: outputs and attention
weights; backward: gradients), a summary in units of the tolerance, the saved weights loaded
into the reference, and the training comparison. It fails on any pair above tolerance, or on a
framework whose results are missing, incomplete, stale (written by other code or other cases
than these) or written under framework versions other than the tested ones
(constraints/<backend>.txt).

What it adds to the single-framework tests: those hold each framework to the reference one case
at a time, so two frameworks that pass are within twice the tolerance of each other (the
triangle inequality), and the harness table here is a summary of that. The rest is not: only
here does a file written by one framework load into the reference and give that framework's
logits, and only here is the same model, trained in each framework from the same start on the
same batches, compared across frameworks (the reference does not train).
"""

import itertools
import math
import re
import sys

import numpy as np

from d2lattn import _backend
from d2lattn import numpy as reference
from tests import harness
from tests.cases import CASES

KEYS = [f"{case.name}@{mode}" for case in CASES for mode in harness.MODES]
# Where a gradient is near Adam's epsilon (an attention's W_q at the start), frameworks that add
# it at different places (_backend.EPSILON_AFTER_CORRECTION) take a different step, so those that
# place it alike are held to the tight bound.
TRAINING_TOLERANCE = {"alike": {"loss": 1e-4, "param": 1e-4}, "unlike": {"loss": 1e-4, "param": 1e-3}}


def pinned(backend):
    """The framework's version in constraints/<backend>.txt (what the suite is tested with)."""
    text = (harness.ROOT / "constraints" / f"{backend}.txt").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M))
    return next((pins[d] for d in _backend.DISTRIBUTIONS[backend] if d in pins), None)


def release(version):
    """A version without its local label: PyTorch's CPU wheel says 2.13.0+cpu for release 2.13.0."""
    return None if version is None else version.split("+")[0]


def fresh(name, meta, kind):
    """Why results written by `name` cannot be compared, or None."""
    if meta["cases"] != harness.cases_digest() or meta["source"] != harness.source_digest(name):
        return (f"{name}: stale {kind} results from {meta['written']} (the code or the cases changed since); "
                f"run `nox -s tests-{name}` again")
    if release(meta["versions"].get(name)) != release(pinned(name)):
        return (f"{name}: {kind} results written under {name} {meta['versions'].get(name)}, not the tested "
                f"{pinned(name)} (constraints/{name}.txt); run `nox -s tests-{name}`")
    return None


def load(backends, kind="harness"):
    results, problems = {}, []
    for name in backends:
        found = harness.read_results(name, kind)
        if found is None:
            problems.append(f"{name}: no {kind} results ({harness.RESULTS / name}.{kind}.npz); "
                            f"run `nox -s tests-{name}`")
            continue
        meta, cases = found
        problem = fresh(name, meta, kind)
        if problem is None and kind == "harness" and set(cases) | set(meta.get("skipped", {})) != set(KEYS):
            problem = f"{name}: results for {len(cases)} of {len(KEYS)} case runs; run the whole suite"
        if problem:
            problems.append(problem)
            continue
        results[name] = cases
    return results, problems


def pair_errors(a, b, scale):
    """{(case@mode, 'forward'|'backward'): (largest difference, largest difference / tolerance)},
    over the case runs both frameworks made (a compiled run a framework declares it cannot make
    is skipped there, with its reason in the results' metadata)."""
    errors = {}
    for key in [k for k in KEYS if k in a and k in b]:
        diffs = harness.differences(a[key], b[key])
        for part, kinds in (("forward", ("output", "weights")), ("backward", ("grad",))):
            fields = [f for f in diffs if harness.kind(f) in kinds]
            worst = max(fields, key=lambda f: diffs[f] / harness.TOLERANCE[harness.kind(f)], default=None)
            if worst is not None:
                tol = harness.TOLERANCE[harness.kind(worst)] * scale
                errors[key, part] = (diffs[worst], diffs[worst] / tol)
    return errors


def lm_files(backends):
    """Problems with the TransformerLM weights each backend wrote (tests/test_decoder.py): every
    backend's .safetensors file must load into the NumPy reference and give the logits it gave there."""
    problems, tokens = [], np.array(harness.LM_FILE["tokens"])
    print("\nTransformerLM weights written by each backend, loaded into the reference: largest |logit difference|")
    for name in backends:
        path = harness.RESULTS / f"{name}.lm.safetensors"
        if not path.exists():
            problems.append(f"{name}: no {path}; run `nox -s tests-{name}`")
            continue
        model = reference.TransformerLM(**harness.LM_FILE["args"])
        try:
            reference.load_params(model, path)
        except ValueError as error:
            problems.append(f"{name}: {path.name} does not load into the reference: {error}")
            continue
        gap = float(np.abs(model(tokens, training=False)[0] - np.load(harness.RESULTS / f"{name}.lm-logits.npy")).max())
        print(f"  {name:<12}{gap:.1e}")
        if not gap <= harness.LM_FILE["tolerance"]:
            problems.append(f"{name}: its weights give the reference logits {gap:.2e} away from its own")
    return problems


# The training runs each framework's session writes (kind of results file: key, what it is).
TRAINING_RUNS = {"training-lm": ("lm-adam", "six Adam steps of the same TransformerLM"),
                 "training-vit": ("vit-adam", "six Adam steps of the same ViT on images")}


def training(backends):
    """Compare the models trained in every framework: losses and every parameter."""
    problems = []
    for kind, (key, what) in TRAINING_RUNS.items():
        results, missing = load(backends, kind)
        problems += missing
        print(f"\ntraining: {what}; largest |difference| (tolerance)")
        for a, b in itertools.combinations(results, 2):
            after = _backend.EPSILON_AFTER_CORRECTION
            tol = TRAINING_TOLERANCE["alike" if after[a] == after[b] else "unlike"]
            A, B = results[a][key], results[b][key]
            gaps = {f: float(np.max(np.abs(A[f] - B[f]))) if f in B and A[f].shape == B[f].shape else math.inf
                    for f in A}
            gaps.update({f: math.inf for f in B if f not in A})
            worst = {k: max((g for f, g in gaps.items() if f.split(":")[0] == k), default=math.inf) for k in tol}
            print(f"  {a:>10} ~ {b:<10} loss {worst['loss']:.1e} ({tol['loss']:.0e})  "
                  f"parameters {worst['param']:.1e} ({tol['param']:.0e})")
            problems += [f"training {key} {a} vs {b}: {k} differs by {worst[k]:.2e}, above {tol[k]:.0e}"
                         for k in tol if not worst[k] <= tol[k]]
    return problems


def main(backends):
    results, problems = load(backends)
    problems += lm_files(backends)
    names = list(results)
    pairs = {(a, b): pair_errors(results[a], results[b], 1 if _backend.REFERENCE in (a, b) else 2)
             for a, b in itertools.combinations(names, 2)}
    for part in ("forward", "backward"):
        what = "outputs, weights" if part == "forward" else "gradients"
        print(f"\nlargest |difference| per case run, {part} ({what})")
        print(f"{'case@mode':<34}" + "".join(f"{a[:5] + '~' + b[:5]:<12}" for a, b in pairs))
        for key in KEYS:
            cells = [errors.get((key, part)) for errors in pairs.values()]
            print(f"{key:<34}" + "".join("      -     " if c is None else f"{c[0]:<12.1e}" for c in cells))
    print("\nworst difference / tolerance, over all cases (<= 1 passes)")
    print(f"{'':<12}" + "".join(f"{n:>12}" for n in names))
    for a in names:
        row = []
        for b in names:
            errors = pairs.get((a, b)) or pairs.get((b, a))
            row.append("-" if errors is None else f"{max(e[1] for e in errors.values()):.2f}")
        print(f"{a:<12}" + "".join(f"{cell:>12}" for cell in row))
    for (a, b), errors in pairs.items():
        problems += [f"{a} vs {b}: {case} {part} differs by {err:.2e} ({ratio:.1f}x tolerance)"
                     for (case, part), (err, ratio) in errors.items() if not ratio <= 1 or math.isnan(err)]
    problems += training(backends)
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"\ncrosscheck passed: {len(names)} frameworks, {len(CASES)} cases eager and compiled, and the trained "
          "language model and ViT, every pair within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(_backend.FRAMEWORK_BACKENDS)))
