"""Compare every backend's harness results with every other's: `python -m tests.crosscheck numpy torch ...`.

Each backend's test session writes build/results/<backend>.npz. This prints, per
case, the largest difference between each pair of backends (forward: outputs and
attention weights; backward: gradients), then a backend x backend summary in
units of the tolerance, and fails on any pair above tolerance or on an expected
backend whose results are missing, incomplete or stale (written by other code or
other cases than are here now). It also loads the TransformerLM weights each backend
saved (build/results/<backend>.lm.safetensors) into the reference, which must give the
logits that backend gave: a file written by one framework loads into another.

Tolerance between two float32 backends is twice the one against the float64
reference: each is within it of the reference, so they are within twice it of
each other.
"""

import itertools
import math
import sys

import numpy as np

from d2lattn import numpy as reference
from tests import harness
from tests.cases import CASES


def load(backends):
    results, problems = {}, []
    for name in backends:
        found = harness.read_results(name)
        if found is None:
            problems.append(f"{name}: no results ({harness.RESULTS / name}.npz); run `nox -s tests-{name}`")
            continue
        meta, cases = found
        if meta["cases"] != harness.cases_digest() or meta["source"] != harness.source_digest(name):
            problems.append(f"{name}: stale results from {meta['written']} (the code or the cases changed since); "
                            f"run `nox -s tests-{name}` again")
            continue
        if set(cases) != {c.name for c in CASES}:
            problems.append(f"{name}: results for {len(cases)} of {len(CASES)} cases; run the whole suite")
            continue
        results[name] = cases
    return results, problems


def pair_errors(a, b, scale):
    """{(case, 'forward'|'backward'): (largest difference, largest difference / tolerance)}."""
    errors = {}
    for case in CASES:
        diffs = harness.differences(a[case.name], b[case.name])
        for part, kinds in (("forward", ("output", "weights")), ("backward", ("grad",))):
            fields = [f for f in diffs if harness.kind(f) in kinds]
            worst = max(fields, key=lambda f: diffs[f] / harness.TOLERANCE[harness.kind(f)], default=None)
            if worst is not None:
                tol = harness.TOLERANCE[harness.kind(worst)] * scale
                errors[case.name, part] = (diffs[worst], diffs[worst] / tol)
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


def main(backends):
    results, problems = load(backends)
    problems += lm_files(backends)
    names = list(results)
    pairs = {(a, b): pair_errors(results[a], results[b], 1 if "numpy" in (a, b) else 2)
             for a, b in itertools.combinations(names, 2)}
    for part in ("forward", "backward"):
        print(f"\nlargest |difference| per case, {part} ({'outputs, weights' if part == 'forward' else 'gradients'})")
        print(f"{'case':<24}" + "".join(f"{a[:5] + '~' + b[:5]:<12}" for a, b in pairs))
        for case in CASES:
            cells = [errors.get((case.name, part)) for errors in pairs.values()]
            print(f"{case.name:<24}" + "".join("      -     " if c is None else f"{c[0]:<12.1e}" for c in cells))
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
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"\ncrosscheck passed: {len(names)} backends, {len(CASES)} cases, every pair within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
