"""One normal form for every text field read from a CSV: dialogues, summaries, predictions.

Training data, references and prediction files all go through ``clean_text``, so that
``dialsum evaluate`` scores exactly what training-time evaluation scores.
"""

from __future__ import annotations

import re

_LITERAL_NEWLINE = re.compile(r"\\r\\n|\\n")  # the two characters backslash + n
_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_MANY_NEWLINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Normalise a dialogue or summary field.

    Scraped and re-exported data carries newlines as literal ``\\n`` or ``<br>``; models and
    ROUGE should see real newlines. Speaker tags like ``#Person1#:`` are left untouched.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _LITERAL_NEWLINE.sub("\n", text)
    text = _BR_TAG.sub("\n", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def clean_counted(value: str) -> tuple[str, bool]:
    """Clean ``value``; the flag says whether content changed beyond line endings.

    CRLF inside quoted fields is what every Windows export produces, so counting it would
    make the "cleaned N fields" message noise for most users.
    """
    cleaned = clean_text(value)
    return cleaned, cleaned != value.replace("\r\n", "\n")
