"""The notebook helpers say what README says they do, on every backend: check_shape,
show_heatmaps and show_source return or raise what they promise."""

import pathlib
import re

import matplotlib
import numpy as np
import pytest

import d2lattn

matplotlib.use("Agg")  # no display in tests


def test_check_shape_returns_its_input_or_fails_loudly(d2l):
    x = d2l.zeros((2, 3))
    assert d2l.check_shape(x, (2, 3)) is x
    with pytest.raises(AssertionError, match=r"expected shape \(3, 2\), got \(2, 3\)"):
        d2l.check_shape(x, (3, 2))


def test_show_heatmaps_draws_one_panel_per_matrix_on_one_scale(d2l):
    weights = d2l.masked_softmax(d2l.normal((2, 3, 4, 5), seed=0))           # (rows, cols, q, k)
    fig = d2l.show_heatmaps(weights, "keys", "queries", titles=["a", "b", "c"])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 6 and all(im.get_array().shape == (4, 5) for im in images)
    np.testing.assert_allclose(images[4].get_array(), d2l.to_numpy(weights)[1, 1], atol=1e-6)
    assert len({im.get_clim() for im in images}) == 1                         # one colour scale
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    assert fig.axes[3].get_xlabel() == "keys" and fig.axes[0].get_ylabel() == "queries"
    with pytest.raises(ValueError, match=r"matrices must have 4 axes \(rows, cols, q, k\), got shape \(4, 5\)"):
        d2l.show_heatmaps(np.zeros((4, 5)), "keys", "queries")


@pytest.mark.parametrize("name, computation", [
    ("DotProductAttention", ["sqrt", "softmax"]),  # the scores and their softmax, even beside a fused kernel
    ("PositionalEncoding", ["sin(", "cos("]),      # the sinusoids, wherever they are computed
    ("flex_attention", ["exp(", "lse"]),           # the online softmax and its log-sum-exp (blockwise calls it)
])
def test_show_source_shows_the_computation_with_its_files_helpers(d2l, capsys, name, computation):
    source = d2l.show_source(getattr(d2l, name))
    printed = capsys.readouterr().out
    assert printed.startswith("# d2lattn/") and source in printed
    for word in computation:
        assert word in printed, f"show_source({name}) shows no {word!r}"


def test_show_source_leaves_public_names_to_their_own_call(d2l, capsys):
    d2l.show_source(d2l.MultiHeadAttention)                                    # it uses DotProductAttention
    assert "class DotProductAttention" not in capsys.readouterr().out


# --- show_source against the file it reads --------------------------------------------------------
# show_source shows the active backend's code, read here straight from its file.


PACKAGE = pathlib.Path(d2lattn.__file__).parent


def test_show_source_shows_the_class_as_written_in_the_backends_file(d2l, backend_name, capsys):
    text = (PACKAGE / backend_name / "attention.py").read_text()
    # from its `class` line to the last indented line before the next top-level statement
    expected = re.search(r"^class MultiHeadAttention\b.*?\n(?=\S)", text + "\nEND", re.S | re.M).group(0)
    expected = expected.rstrip("\n") + "\n"
    assert d2l.show_source(d2l.MultiHeadAttention) == expected
    printed = capsys.readouterr().out                                          # no notebook: printed
    head = f"# d2lattn/{backend_name}/attention.py\n{expected}"
    assert printed == head + "\n" or printed.startswith(head + "\n# with, from the same file:\n"), printed[:200]


@pytest.mark.parametrize("name", ["greedy_decode", "generate", "train_lm", "blockwise_attention"])
def test_show_source_names_the_file_the_code_is_written_in(d2l, backend_name, capsys, name):
    """A decorated function (PyTorch's torch.no_grad(), say) is shown from its own file, with its
    own file's helpers, not from the decorator's."""
    source = d2l.show_source(getattr(d2l, name))
    printed = capsys.readouterr().out
    assert printed.startswith(f"# d2lattn/{backend_name}/"), printed.splitlines()[0]
    assert f"def {name}(" in source
