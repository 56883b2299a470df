from __future__ import annotations

from dialsum.core.errors import first_line


def test_first_line_of_a_message() -> None:
    assert first_line(RuntimeError("CUDA out of memory.\nTried to allocate 2.00 GiB")) == (
        "CUDA out of memory."
    )
    assert first_line(OSError("  \n  repo not found\nmore")) == "repo not found"


def test_first_line_without_a_message_is_the_type() -> None:
    assert first_line(MemoryError()) == "MemoryError"
    assert first_line(ValueError("   ")) == "ValueError"
