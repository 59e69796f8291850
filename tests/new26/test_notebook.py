"""show_source shows the active backend's code, read here straight from its file."""

import pathlib
import re

import d2lattn

PACKAGE = pathlib.Path(d2lattn.__file__).parent


def test_show_source_shows_the_class_as_written_in_the_backends_file(d2l, backend_name, capsys):
    text = (PACKAGE / backend_name / "attention.py").read_text()
    # from its `class` line to the last indented line before the next top-level statement
    expected = re.search(r"^class MultiHeadAttention\b.*?\n(?=\S)", text + "\nEND", re.S | re.M).group(0)
    expected = expected.rstrip("\n") + "\n"
    assert d2l.show_source(d2l.MultiHeadAttention) == expected
    printed = capsys.readouterr().out
    assert printed == f"# d2lattn/{backend_name}/attention.py\n{expected}\n"
