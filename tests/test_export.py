"""The CSV cells: what a spreadsheet would run as a formula is neutralised, and no cell is too long."""

import pytest

from musictag.store.export import MAX_CELL, neutralise


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "\n=1", "\uff1d1+1",
                                  "\ufe661+1", "\uff0bA1", "\ufe62A1", "\uff0dA1", "\ufe63A1", "\uff20A1",
                                  "\ufe6bA1", "\u2212A1", " =HYPERLINK(\"x\")", "  \uff1d1", "\u3000=1",
                                  "\u00a0@A1"])
def test_formulas_and_their_look_alikes_are_quoted(cell):
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["Rock", "R&B/Soul", "0.9130", " Rock", "", "a=b", "Q1"])
def test_plain_text_is_left_alone(cell):
    assert neutralise(cell) == cell


def test_no_cell_is_longer_than_a_spreadsheet_allows():
    assert neutralise("x" * MAX_CELL) == "x" * MAX_CELL
    long = neutralise("y" * (MAX_CELL + 10))
    assert len(long) == MAX_CELL and long.endswith("…")
    assert len(neutralise("=" + "z" * MAX_CELL)) == MAX_CELL  # the quote counts too
    assert neutralise(3) == 3
