"""The CLI's output helpers."""

from __future__ import annotations

from tether.cli.output import count


def test_a_table_title_counts_in_the_singular_for_one() -> None:
    assert count(1, "tokens") == "1 token"
    assert count(0, "tokens") == "0 tokens"
    assert count(2, "support grants") == "2 support grants"
    assert count(1, "support grants") == "1 support grant"
