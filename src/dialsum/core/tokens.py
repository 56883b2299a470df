"""Special tokens of the competition data.

Speaker tags and PII masks are single tokens: the tokenizer must never split them, the
model learns one embedding each, and predictions keep them (they are scored as words).
"""

from __future__ import annotations

SPEAKER_TOKENS: tuple[str, ...] = tuple(f"#Person{i}#" for i in range(1, 8))
PII_TOKENS: tuple[str, ...] = (
    "#PhoneNumber#",
    "#Address#",
    "#PassportNumber#",
    "#DateOfBirth#",
    "#SSN#",
    "#CardNumber#",
    "#CarNumber#",
    "#Email#",
)
SPECIAL_TOKENS: tuple[str, ...] = SPEAKER_TOKENS + PII_TOKENS
