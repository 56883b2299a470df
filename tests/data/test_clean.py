"""Tests for dialsum.data.clean: the one normal form of every text field read from a CSV."""

from __future__ import annotations

from dialsum.data.clean import clean_text


def test_clean_text_newline_forms() -> None:
    raw = "#Person1#: 안녕\\n#Person2#: 네<br>#Person1#: 좋아<BR />#Person2#: 응<br/>끝"
    assert clean_text(raw) == "#Person1#: 안녕\n#Person2#: 네\n#Person1#: 좋아\n#Person2#: 응\n끝"


def test_clean_text_whitespace() -> None:
    raw = "  \r\n#Person1#: 가   \r\n\r\n\r\n\r\n#Person2#: 나  \n"
    assert clean_text(raw) == "#Person1#: 가\n\n#Person2#: 나"
    assert clean_text("#Person1#: #PhoneNumber#로 연락") == "#Person1#: #PhoneNumber#로 연락"
