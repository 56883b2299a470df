"""Shared by the model tests: dialogue-like texts, and the tiny models built on them once."""

from __future__ import annotations

import pytest

from dialsum.models.tiny import build_tiny_model

TEXTS = [
    "#Person1#: 안녕하세요, 오늘 날씨가 정말 좋네요.",
    "#Person2#: 네, 산책하기 좋은 날이에요.",
    "#Person1#: 제 전화번호는 #PhoneNumber# 입니다.",
    "#Person2#: 알겠습니다. 내일 다시 연락드릴게요.",
    "#Person1#: 주소는 #Address# 로 보내 주세요.",
    "#Person2#: 회의는 오후 세 시에 시작합니다.",
    "#Person1#: 점심으로 비빔밥을 먹을까요?",
    "#Person2#: 좋아요, 근처 식당에 가요.",
    "두 사람은 날씨와 산책에 대해 이야기한다.",
    "#Person1#은 #Person2#에게 전화번호를 알려준다.",
    "두 사람은 오후 회의 시간을 확인한다.",
    "#Person1#과 #Person2#는 점심 메뉴를 정한다.",
]


@pytest.fixture
def texts() -> list[str]:
    return list(TEXTS)


@pytest.fixture(scope="session")
def tiny_t5():
    return build_tiny_model(TEXTS, family="t5", vocab_size=500)


@pytest.fixture(scope="session")
def tiny_bart():
    return build_tiny_model(TEXTS, family="bart", vocab_size=500)
