"""Generate the bundled sample dataset in data/sample/ (competition CSV format).

The dialogues are written from templates for this project. Summaries are template sentences
that reuse the slot words of their dialogue (items, times, places), so a tiny model trained
for a few minutes on a CPU can learn them and ROUGE moves visibly during smoke tests.

Deterministic: the same seed gives byte-identical files.

    uv run python scripts/make_sample_data.py            # rewrite data/sample/*.csv
    uv run python scripts/make_sample_data.py --out-dir /tmp/sample --seed 7
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

from dialsum.core.csv_files import write_csv_atomic

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"
DEFAULT_SEED = 20240611
SPLIT_SIZES: dict[str, int] = {"train": 400, "dev": 80, "test": 80}

Turn = tuple[int, str]  # (speaker number, utterance)
Example = tuple[str, list[Turn], str]  # (topic, turns, summary)

# --------------------------------------------------------------------------- Korean particles

# Final-consonant facts of how the tags and digits are read aloud: "#Person1#" is read
# 퍼슨원 (batchim), "#Person2#" 퍼슨투 (none), ...; digits 0/1/3/6/7/8 end in a batchim.
_TAG_BATCHIM = {1: True, 2: False, 3: False, 4: False, 5: False, 6: False, 7: True}
_DIGIT_BATCHIM = {"0": True, "1": True, "3": True, "6": True, "7": True, "8": True}
_DIGIT_RIEUL = {"1", "7", "8"}


def _final(word: str) -> tuple[bool, bool]:
    """(has batchim, batchim is ㄹ) of the last character as read aloud."""
    last = word.rstrip()[-1]
    if "가" <= last <= "힣":
        jong = (ord(last) - ord("가")) % 28
        return jong != 0, jong == 8
    if last.isdigit():
        return _DIGIT_BATCHIM.get(last, False), last in _DIGIT_RIEUL
    return False, False


def j(word: str, pair: str) -> str:
    """Attach the right form of a particle pair such as "을/를" or "으로/로" to ``word``."""
    with_batchim, without = pair.split("/")
    batchim, rieul = _final(word)
    if with_batchim == "으로":
        return word + ("으로" if batchim and not rieul else "로")
    return word + (with_batchim if batchim else without)


def p(n: int, pair: str = "") -> str:
    """Speaker tag ``#PersonN#`` with an optional particle chosen by how the tag is read."""
    tag = f"#Person{n}#"
    if not pair:
        return tag
    with_batchim, without = pair.split("/")
    return tag + (with_batchim if _TAG_BATCHIM[n] else without)


def _listed(speakers: list[int], pair: str) -> str:
    return ", ".join(p(n) for n in speakers[:-1]) + ", " + p(speakers[-1], pair)


# --------------------------------------------------------------------------- shared slots

NAMES = ["김민준", "이서연", "박지우", "최도윤", "정하은", "강시우", "조서아", "윤지호", "장예린",
         "임준서", "한유나", "오태민"]  # fmt: skip
DAYS = ["내일", "모레", "월요일", "화요일", "수요일", "목요일", "금요일", "토요일"]
CLOCK = ["오전 9시", "오전 10시 30분", "오전 11시", "오후 2시", "오후 3시", "오후 4시 30분",
         "오후 5시"]  # fmt: skip
EVENING = ["6시", "6시 30분", "7시", "7시 30분", "8시"]
MONTHS = ["3월", "5월", "7월", "8월", "10월", "12월"]
COUNTS = ["두 명", "세 명", "네 명", "다섯 명"]


def shopping(r: random.Random) -> Example:
    item = r.choice(["운동화", "가방", "코트", "청바지", "모자", "우산", "이어폰", "셔츠", "목도리",
                     "장갑", "원피스", "지갑"])  # fmt: skip
    color = r.choice(["검은색", "흰색", "파란색", "회색", "빨간색", "초록색", "베이지색"])
    price = r.choice(["2만 원", "3만 5천 원", "4만 원", "5만 9천 원", "7만 원", "12만 원"])
    if r.random() < 0.6:
        pay = r.choice(["카드", "현금"])
        turns = [
            (1, f"안녕하세요, {item} 좀 보러 왔어요."),
            (2, "어서 오세요. 찾으시는 색이 있나요?"),
            (1, f"{j(color, '으로/로')} 보고 싶어요."),
            (2, f"여기 {color} {item} 있습니다. 가격은 {j(price, '이에요/예요')}."),
            (1, f"마음에 드네요. {j(pay, '으로/로')} 계산할게요."),
            (2, "감사합니다. 영수증 여기 있습니다."),
        ]
        summary = f"{p(1, '은/는')} {color} {j(item, '을/를')} {price}에 {j(pay, '으로/로')} 산다."
    else:
        turns = [
            (1, "네, 온라인 쇼핑몰 고객센터입니다."),
            (2, f"홈페이지에서 본 {j(item, '을/를')} 전화로 주문하고 싶어요."),
            (1, "어떤 색으로 드릴까요?"),
            (2, f"{j(color, '으로/로')} 하나 주세요."),
            (1, f"{price}입니다. 결제는 어떻게 하시겠어요?"),
            (2, "카드로 할게요. 카드 번호는 #CardNumber#예요."),
            (1, "주문되었습니다. #Address#로 보내 드릴게요."),
        ]
        summary = (
            f"{p(2, '은/는')} 전화로 {color} {j(item, '을/를')} 주문하고 "
            f"카드로 {j(price, '을/를')} 결제한다."
        )
    return "쇼핑", turns, summary


def hospital(r: random.Random) -> Example:
    dept, symptom = r.choice([
        ("치과", "이가 아파서"), ("내과", "기침이 심해서"), ("피부과", "피부가 가려워서"),
        ("안과", "눈이 침침해서"), ("정형외과", "허리가 아파서"), ("이비인후과", "목이 아파서"),
    ])  # fmt: skip
    clinic = r.choice(["한빛", "서울", "푸른", "새봄", "행복", "중앙"])
    day = r.choice(DAYS)
    first, second = r.sample(CLOCK, 2)
    name = r.choice(NAMES)
    turns = [
        (1, f"안녕하세요, {clinic} {dept}입니다. 무엇을 도와드릴까요?"),
        (2, f"{symptom} 진료 예약을 하고 싶어요."),
        (1, "성함과 생년월일을 알려 주세요."),
        (2, f"{j(name, '이에요/예요')}. 생년월일은 #DateOfBirth#입니다."),
    ]
    time = first
    if r.random() < 0.4:
        time = second
        turns += [
            (1, f"{day} {j(first, '은/는')} 예약이 찼고 {second}에 가능합니다."),
            (2, f"그럼 {j(second, '으로/로')} 해 주세요. 연락처는 #PhoneNumber#예요."),
        ]
    else:
        turns += [
            (1, f"{day} {first}에 예약이 가능합니다. 괜찮으세요?"),
            (2, "네, 그 시간으로 해 주세요. 연락처는 #PhoneNumber#예요."),
        ]
    turns.append((1, "예약되었습니다. 10분 일찍 와 주세요."))
    summary = f"{p(2, '은/는')} {symptom} {day} {time}에 {clinic} {dept} 진료를 예약한다."
    return "병원 예약", turns, summary


def travel(r: random.Random) -> Example:
    dest = r.choice(
        ["제주도", "부산", "도쿄", "오사카", "방콕", "파리", "다낭", "런던", "싱가포르"]
    )
    month = r.choice(MONTHS)
    nights = r.choice(["2박 3일", "3박 4일", "4박 5일"])
    if r.random() < 0.5:
        count = r.choice(COUNTS[:3])
        abroad = dest not in ("제주도", "부산")
        turns = [
            (1, "안녕하세요, 하늘여행사입니다."),
            (2, f"{month}에 {j(dest, '으로/로')} {nights} 여행을 가고 싶어요."),
            (1, "몇 분이 가시나요?"),
            (2, f"{count}이요. 항공권과 호텔을 같이 예약해 주세요."),
        ]
        if abroad:
            turns.append((1, "해외여행이라 여권 번호가 필요합니다."))
            turns.append((2, "여권 번호는 #PassportNumber#입니다."))
        turns.append((1, "예약 확인 메일은 #Email#로 보내 드릴게요."))
        summary = (
            f"{p(2, '은/는')} {p(1)}에게 {month}에 {count}이 가는 {dest} {nights} 여행의 "
            "항공권과 호텔을 예약한다."
        )
    else:
        reason = r.choice(["음식이 맛있대.", "바다가 예쁘대.", "볼거리가 많대.", "날씨가 좋대."])
        turns = [
            (1, f"이번 {month}에 같이 여행 갈래?"),
            (2, "좋아. 어디로 갈까?"),
            (1, f"{dest} 어때? {reason}"),
            (2, f"좋다. {j(nights, '으로/로')} 가자."),
            (1, "그럼 내가 숙소를 알아볼게."),
            (2, "나는 비행기표를 찾아볼게."),
        ]
        summary = (
            f"{p(1, '과/와')} {p(2, '은/는')} {month}에 {j(dest, '으로/로')} {nights} 여행을 "
            f"가기로 하고, {p(1, '이/가')} 숙소를, {p(2, '이/가')} 비행기표를 알아본다."
        )
    return "여행", turns, summary


DISHES = ["김치찌개", "된장찌개", "비빔밥", "불고기", "냉면", "파스타", "돈가스", "짜장면", "짬뽕",
          "칼국수", "떡볶이"]  # fmt: skip


def restaurant(r: random.Random) -> Example:
    if r.random() < 0.5:
        place = r.choice(["한식당", "이탈리안 식당", "고깃집", "초밥집", "중국집"])
        day, time, count = r.choice(DAYS), r.choice(EVENING), r.choice(COUNTS)
        seat = r.choice(["창가", "룸", "테라스"])
        turns = [
            (1, f"감사합니다, 맛나 {place}입니다."),
            (2, f"{day} 저녁 {time}에 {count} 예약하려고요."),
            (1, "네, 가능합니다. 원하시는 자리가 있나요?"),
            (2, f"{seat} 자리로 부탁해요."),
            (1, "성함과 연락처를 알려 주세요."),
            (2, f"{j(r.choice(NAMES), '이에요/예요')}. 번호는 #PhoneNumber#예요."),
            (1, "예약되었습니다. 그날 뵙겠습니다."),
        ]
        summary = (
            f"{p(2, '은/는')} {day} 저녁 {time}에 {place} {seat} 자리를 "
            f"{j(count, '으로/로')} 예약한다."
        )
    else:
        first, second = r.sample(DISHES, 2)
        drink = r.choice(["콜라", "사이다", "아이스티", "오렌지 주스", "탄산수"])
        turns = [
            (1, "주문하시겠어요?"),
            (2, f"저는 {first} 주세요."),
            (3, f"저는 {j(second, '으로/로')} 할게요."),
            (2, f"음료는 {drink} 두 잔 주세요."),
            (1, "네, 금방 준비해 드릴게요."),
        ]
        summary = (
            f"{p(2, '은/는')} {first}, {p(3, '은/는')} {j(second, '을/를')} 주문하고 "
            f"{drink} 두 잔도 시킨다."
        )
    return "식당", turns, summary


def moving(r: random.Random) -> Example:
    month, date = r.choice(MONTHS), f"{r.randint(1, 28)}일"
    city = r.choice(["대전", "광주", "인천", "수원", "대구", "춘천", "전주"])
    size = r.choice(["원룸", "투룸", "쓰리룸"])
    price = r.choice(["50만 원", "80만 원", "120만 원", "150만 원"])
    turns = [
        (2, f"이삿짐센터죠? {month} {date}에 이사하려고 하는데요."),
        (1, "지금 사시는 곳과 이사 갈 곳을 알려 주세요."),
        (2, f"지금은 #Address#에 살고, {j(city, '으로/로')} 가요."),
        (1, "짐은 얼마나 되나요?"),
        (2, f"{size} 짐이에요."),
        (1, f"견적은 {price}입니다."),
        (2, "좋아요. 그날 오전으로 예약할게요."),
    ]
    summary = (
        f"{p(2, '은/는')} {month} {date} 오전에 {j(city, '으로/로')} 가는 {size} 이사를 "
        f"{price}에 예약한다."
    )
    return "이사", turns, summary


def interview(r: random.Random) -> Example:
    company = r.choice(["한빛전자", "푸른물산", "새봄식품", "미래소프트", "하늘항공", "누리은행"])
    job = r.choice(["마케팅", "영업", "개발", "디자인", "회계", "인사"])
    years = r.choice(["1년", "2년", "3년", "5년"])
    before = r.choice(["작은 스타트업", "무역 회사", "광고 회사", "제조 회사"])
    turns = [
        (1, f"{company} {job} 직무 면접에 오신 것을 환영합니다. 자기소개 부탁드립니다."),
        (2, f"안녕하세요, {r.choice(NAMES)}입니다. {before}에서 {years} 동안 {job} 일을 했습니다."),
        (1, "우리 회사에 지원한 이유는 무엇인가요?"),
        (2, f"{company}에서 더 큰 {job} 일을 배우고 싶기 때문입니다."),
        (1, "좋습니다. 결과는 다음 주에 이메일로 알려 드릴게요. 주소가 맞나요?"),
        (2, "네, #Email#입니다. 감사합니다."),
    ]
    summary = (
        f"{p(2, '은/는')} {company} {job} 직무 면접에서 {before}에서 {years} 동안 일한 경험을 "
        "말하고, 결과는 다음 주에 이메일로 받는다."
    )
    return "면접", turns, summary


def bank(r: random.Random) -> Example:
    kind = r.random()
    amount = r.choice(["10만 원", "20만 원", "30만 원", "50만 원"])
    if kind < 0.34:
        account = r.choice(["적금", "예금", "입출금", "청년 적금"])
        turns = [
            (2, f"안녕하세요, {account} 통장을 만들고 싶어요."),
            (1, "신분증과 주민등록번호가 필요합니다."),
            (2, "여기 신분증이요. 주민등록번호는 #SSN#입니다."),
            (1, "매달 얼마씩 넣으실 건가요?"),
            (2, f"{amount}씩 넣으려고요."),
            (1, "네, 통장이 만들어졌습니다."),
        ]
        summary = f"{p(2, '은/는')} 매달 {amount}씩 넣는 {account} 통장을 만든다."
    elif kind < 0.67:
        money = r.choice(["달러", "엔화", "유로", "위안화"])
        turns = [
            (2, f"{j(money, '으로/로')} 환전하고 싶어요."),
            (1, "얼마나 바꾸시겠어요?"),
            (2, f"{amount} 바꿔 주세요."),
            (1, "여권을 보여 주시겠어요?"),
            (2, "네, 여권 번호는 #PassportNumber#예요."),
            (1, "환전 끝났습니다. 여기 있습니다."),
        ]
        summary = f"{p(2, '은/는')} 은행에서 {j(amount, '을/를')} {j(money, '으로/로')} 환전한다."
    else:
        when = r.choice(["어제 저녁", "오늘 아침", "지난 주말"])
        where = r.choice(["지하철", "버스", "카페", "마트"])
        wait = r.choice(["3일", "5일", "일주일"])
        turns = [
            (2, "카드를 잃어버려서 정지하고 싶어요. 카드 번호는 #CardNumber#예요."),
            (1, "언제 어디서 잃어버리셨나요?"),
            (2, f"{when} {where}에서 잃어버린 것 같아요."),
            (1, f"카드를 바로 정지했습니다. 새 카드는 {wait} 뒤에 도착합니다."),
            (2, "감사합니다."),
        ]
        summary = (
            f"{p(2, '은/는')} {when} {where}에서 잃어버린 카드를 정지하고, "
            f"새 카드는 {wait} 뒤에 받는다."
        )
    return "은행", turns, summary


def parcel(r: random.Random) -> Example:
    item = r.choice(["책", "옷", "과일", "화장품", "노트북", "그릇", "신발"])
    arrive = r.choice(["내일", "모레", "이틀 뒤"])
    if r.random() < 0.5:
        speed = r.choice(["일반 택배", "빠른 택배"])
        price = r.choice(["4천 원", "5천 원", "7천 원"])
        turns = [
            (2, "택배를 보내려고 하는데요."),
            (1, "안에 뭐가 들어 있나요?"),
            (2, f"{j(item, '이에요/예요')}."),
            (1, "받는 분 주소와 연락처를 적어 주세요."),
            (2, "주소는 #Address#이고 전화번호는 #PhoneNumber#예요."),
            (1, f"{j(speed, '으로/로')} 보내면 {price}입니다."),
            (2, "그걸로 할게요. 언제 도착하나요?"),
            (1, f"{arrive} 도착할 거예요."),
        ]
        summary = (
            f"{p(2, '은/는')} {j(item, '을/를')} {j(speed, '으로/로')} {price}에 보내고, "
            f"택배는 {arrive} 도착한다."
        )
    else:
        reason = r.choice(["배송이 하루 늦어지고 있어요", "물류 센터에 도착해 있어요"])
        turns = [
            (2, f"주문한 {j(item, '이/가')} 아직 안 왔어요."),
            (1, "주문하신 분 전화번호를 알려 주세요."),
            (2, "전화번호는 #PhoneNumber#예요."),
            (1, f"확인해 보니 {reason}. {arrive} 받으실 수 있습니다."),
            (2, "알겠습니다. 감사합니다."),
        ]
        summary = (
            f"{p(2, '은/는')} 주문한 {j(item, '이/가')} 오지 않아 문의하고, "
            f"{arrive} 받을 수 있다는 답을 듣는다."
        )
    return "택배", turns, summary


SUBJECTS = ["수학", "영어", "과학", "역사", "국어", "음악", "미술"]


def school(r: random.Random) -> Example:
    subject = r.choice(SUBJECTS)
    if r.random() < 0.5:
        task = r.choice(["보고서", "발표 자료", "숙제", "독후감"])
        due = r.choice(["금요일", "다음 주 월요일", "내일", "이번 주 수요일"])
        excuse = r.choice(["감기에 걸려서 못 했어요.", "자료를 찾느라 늦어졌어요.",
                           "동아리 대회 때문에 바빴어요."])  # fmt: skip
        turns = [
            (1, f"{subject} {j(task, '은/는')} 다 했니?"),
            (2, f"아직이요, 선생님. {excuse}"),
            (1, f"그럼 {due}까지 꼭 내도록 해."),
            (2, f"네, {due}까지 낼게요."),
        ]
        summary = (
            f"{p(2, '은/는')} {subject} {j(task, '을/를')} 아직 못 해서 "
            f"{p(1)}에게 {due}까지 내겠다고 약속한다."
        )
        return "학교", turns, summary
    speakers = list(range(1, r.randint(3, 4) + 1))
    place = r.choice(["도서관", "카페", "스터디룸", "교실"])
    day, time = r.choice(DAYS), r.choice(CLOCK)
    turns = [
        (1, f"다음 주 {subject} 시험 같이 공부할래?"),
        (2, f"좋아. {place}에서 할까?"),
    ]
    turns += [(n, "나도 같이 할래.") for n in speakers[2:]]
    turns += [(speakers[-1], f"{day} {time} 어때?"), (1, "좋아, 그때 보자.")]
    summary = (
        f"{_listed(speakers, '은/는')} {day} {time}에 {place}에서 {subject} 시험공부를 같이 한다."
    )
    return "학교", turns, summary


def exercise(r: random.Random) -> Example:
    if r.random() < 0.5:
        sport = r.choice(["헬스", "요가", "수영", "필라테스", "클라이밍"])
        months = r.choice(["1", "3", "6", "12"])
        price = r.choice(["10만 원", "25만 원", "45만 원", "80만 원"])
        when = r.choice(["아침", "점심", "저녁"])
        lesson = r.random() < 0.5
        turns = [
            (2, f"{sport} 등록하려고 왔어요."),
            (1, f"{months}개월 등록하시면 {price}입니다."),
            (2, f"{months}개월로 할게요. {when}에 주로 올 거예요."),
            (1, "개인 수업도 원하세요?"),
            (2, "네, 개인 수업도 받을게요." if lesson else "아니요, 혼자 할게요."),
        ]
        summary = (
            f"{p(2, '은/는')} {j(sport, '을/를')} {months}개월 {price}에 등록하고 "
            f"주로 {when}에 운동한다."
        )
        if lesson:
            summary += " 개인 수업도 신청한다."
    else:
        place = r.choice(["한강", "공원", "학교 운동장"])
        activity = r.choice(["달리기", "자전거", "배드민턴", "걷기"])
        weekdays = ["월요일", "화요일", "수요일", "목요일", "금요일", "토요일"]
        day1, day2 = (weekdays[i] for i in sorted(r.sample(range(len(weekdays)), 2)))
        when = r.choice(["아침", "저녁"])
        turns = [
            (1, "요즘 살이 쪄서 운동을 시작하려고."),
            (2, f"나랑 같이 {place}에서 {activity} 할래?"),
            (1, "좋아. 언제 할까?"),
            (2, f"매주 {j(day1, '과/와')} {day2} {when}에 하자."),
            (1, "그래, 잊지 말고 연락해."),
        ]
        summary = (
            f"{p(1, '과/와')} {p(2, '은/는')} 매주 {j(day1, '과/와')} {day2} {when}에 "
            f"{place}에서 {j(activity, '을/를')} 같이 하기로 한다."
        )
    return "운동", turns, summary


def movie(r: random.Random) -> Example:
    title = r.choice(["별빛 기차", "마지막 여름", "푸른 바다의 노래", "도시의 밤", "작은 용사",
                      "시간 여행자", "바람의 검"])  # fmt: skip
    time = r.choice(["오후 2시", "오후 4시", "저녁 7시", "밤 9시"])
    if r.random() < 0.5:
        genre = r.choice(["액션", "코미디", "공포", "로맨스", "애니메이션"])
        day = r.choice(DAYS)
        turns = [
            (1, f"{day}에 영화 볼래?"),
            (2, "좋아. 무슨 영화?"),
            (1, f"{j(title, '이/가')} 재밌대. {genre} 영화야."),
            (2, "좋다. 몇 시에 볼까?"),
            (1, f"{time} 표가 있어. 내가 예매할게."),
            (2, "그럼 팝콘은 내가 살게."),
        ]
        summary = (
            f"{p(1, '과/와')} {p(2, '은/는')} {day} {time}에 {genre} 영화 {j(title, '을/를')} "
            f"보기로 하고, {p(1, '이/가')} 표를 예매하고 {p(2, '이/가')} 팝콘을 산다."
        )
    else:
        count = r.choice(["두", "세", "네"])
        seat = r.choice(["가운데", "뒷줄", "앞줄", "통로 쪽"])
        price = r.choice(["2만 원", "3만 원", "4만 원"])
        turns = [
            (1, f"{title} {time} 표 {count} 장 주세요."),
            (2, f"좌석은 {j(seat, '으로/로')} 드릴까요?"),
            (1, "네, 좋아요."),
            (2, f"모두 {price}입니다. 상영관은 3층이에요."),
        ]
        summary = f"{p(1, '은/는')} {title} {time} 표 {count} 장을 {seat} 좌석으로 {price}에 산다."
    return "영화", turns, summary


def car_repair(r: random.Random) -> Example:
    symptom, reason, fix = r.choice([
        ("브레이크에서 소리가 나요", "브레이크에서 소리가 나서", "브레이크 패드를 교체"),
        ("엔진 경고등이 켜졌어요", "엔진 경고등이 켜져서", "엔진을 점검"),
        ("타이어에 바람이 빠져요", "타이어에 바람이 빠져서", "타이어를 교체"),
        ("에어컨이 시원하지 않아요", "에어컨이 시원하지 않아서", "에어컨 가스를 충전"),
        ("시동이 잘 안 걸려요", "시동이 잘 안 걸려서", "배터리를 교체"),
    ])  # fmt: skip
    price = r.choice(["5만 원", "12만 원", "20만 원", "35만 원"])
    hours = r.choice(["한", "두", "세"])
    turns = [
        (2, f"안녕하세요, 차에서 문제가 생겼어요. {symptom}."),
        (1, "차 번호가 어떻게 되나요?"),
        (2, "#CarNumber#입니다."),
        (1, f"확인해 보니 {fix}해야 합니다. 비용은 {price}이고 {hours} 시간 걸려요."),
        (2, "그럼 수리해 주세요. 끝나면 #PhoneNumber#로 연락 주세요."),
    ]
    summary = f"{p(2, '은/는')} {reason} 정비소에 오고, {p(1, '은/는')} {price}에 {fix}하기로 한다."
    return "자동차 수리", turns, summary


def meeting(r: random.Random) -> Example:
    project = r.choice(["신제품 출시", "홈페이지 개편", "연말 행사", "고객 설문", "광고 캠페인"])
    deadline = r.choice(["이번 주 금요일", "다음 주 화요일", "월말"])
    size = r.randint(3, 5)
    tasks = r.sample(["디자인", "예산", "일정표", "발표 자료", "보도 자료", "설문지"], size - 1)
    turns = [(1, f"오늘은 {project} 준비 상황을 이야기해 봅시다. 누가 무엇을 맡을까요?")]
    turns += [(n, f"저는 {j(task, '을/를')} 맡을게요.") for n, task in enumerate(tasks, start=2)]
    turns += [(1, f"좋아요. 모두 {deadline}까지 끝내 주세요."), (2, "네, 알겠습니다.")]
    jobs = ", ".join(f"{p(n, '은/는')} {task}" for n, task in enumerate(tasks[:-1], start=2))
    last = f"{p(size, '은/는')} {j(tasks[-1], '을/를')}"
    summary = (
        f"{p(1, '은/는')} {project} 회의에서 {deadline}까지 일을 끝내자고 하고, "
        f"{jobs}, {last} 맡는다."
    )
    return "회의", turns, summary


def gathering(r: random.Random) -> Example:
    occasion = r.choice(["동창", "가족", "동아리", "송년"])
    size = r.randint(4, 7)
    foods = ["삼겹살", "피자", "초밥", "치킨", "한정식", "파스타", "칼국수"]
    chosen = r.choice(foods)
    day, time = r.choice(DAYS), r.choice(EVENING)
    place = r.choice(["강남역", "시청 앞", "학교 앞", "홍대입구역"])
    turns = [(1, f"이번 {occasion} 모임에서 뭐 먹을지 정하자.")]
    turns += [(n, f"나는 {j(r.choice(foods), '이/가')} 좋아.") for n in range(2, size)]
    turns += [
        (size, f"다들 {chosen} 어때? 나는 {chosen} 먹고 싶어."),
        (1, f"좋아, {j(chosen, '으로/로')} 정하자. {day} 저녁 {time}에 {place}에서 보자."),
    ]
    summary = (
        f"{p(1, '과/와')} 일행은 {occasion} 모임으로 {day} 저녁 {time}에 {place}에서 "
        f"{j(chosen, '을/를')} 먹기로 한다."
    )
    return "모임", turns, summary


def phone_plan(r: random.Random) -> Example:
    device = r.choice(["최신 스마트폰", "폴더폰", "태블릿"])
    plan = r.choice(["데이터 무제한 요금제", "월 3만 원 요금제", "월 5만 원 요금제", "학생 요금제"])
    keep = r.random() < 0.6
    turns = [
        (2, f"휴대폰을 바꾸려고요. {j(device, '으로/로')} 하고 싶어요."),
        (1, "요금제는 어떤 걸로 하시겠어요?"),
        (2, f"{j(plan, '으로/로')} 해 주세요."),
        (1, "번호는 그대로 쓰시나요?"),
        (2, "네, #PhoneNumber# 그대로 쓸게요." if keep else "아니요, 새 번호로 바꿀게요."),
        (1, "가입 안내는 #Email#로 보내 드리겠습니다."),
    ]
    number = "번호를 그대로 두고" if keep else "번호를 새로 받고"
    summary = f"{p(2, '은/는')} {number} {j(device, '으로/로')} 바꾸면서 {plan}에 가입한다."
    return "휴대폰 개통", turns, summary


def hotel(r: random.Random) -> Example:
    name = r.choice(["바다호텔", "한강호텔", "별빛리조트", "숲속펜션"])
    room = r.choice(["스탠다드룸", "디럭스룸", "스위트룸", "온돌방"])
    nights = r.choice(["1박", "2박", "3박"])
    start = r.choice(["이번 주 금요일", "다음 달 5일", "크리스마스", "설 연휴"])
    price = r.choice(["9만 원", "15만 원", "22만 원"])
    breakfast = r.random() < 0.5
    turns = [
        (1, f"감사합니다, {name}입니다."),
        (2, f"{start}부터 {nights} 방을 예약하고 싶어요."),
        (1, "어떤 방을 원하세요?"),
        (2, f"{j(room, '으로/로')} 주세요." + (" 조식도 포함해 주세요." if breakfast else "")),
        (1, f"1박에 {price}입니다. 결제할 카드 번호를 알려 주세요."),
        (2, "#CardNumber#입니다. 확인 메일은 #Email#로 보내 주세요."),
        (1, "예약이 끝났습니다."),
    ]
    summary = f"{p(2, '은/는')} {name}에 {start}부터 {nights} 동안 {j(room, '을/를')} 예약한다."
    if breakfast:
        summary += " 조식도 포함한다."
    return "호텔 예약", turns, summary


TOPICS: tuple[Callable[[random.Random], Example], ...] = (
    shopping, hospital, travel, restaurant, moving, interview, bank, parcel, school, exercise,
    movie, car_repair, meeting, gathering, phone_plan, hotel,
)  # fmt: skip


# --------------------------------------------------------------------------- writing


def format_dialogue(turns: list[Turn]) -> str:
    return "\n".join(f"{p(speaker)}: {text}" for speaker, text in turns)


def generate_split(
    split: str, size: int, seed: int, seen: set[str]
) -> list[tuple[str, str, str, str]]:
    """Rows (fname, dialogue, summary, topic); ``seen`` keeps dialogues unique across splits."""
    # A string seed is hashed with SHA-512 by random.Random: stable across runs and platforms.
    rng = random.Random(f"{seed}:{split}")
    rows: list[tuple[str, str, str, str]] = []
    while len(rows) < size:
        topic, turns, summary = rng.choice(TOPICS)(rng)
        dialogue = format_dialogue(turns)
        if dialogue in seen:
            continue  # an exact repeat would leak train text into dev/test
        seen.add(dialogue)
        rows.append((f"{split}_{len(rows)}", dialogue, summary, topic))
    return rows


def write_sample(out_dir: Path, seed: int, sizes: dict[str, int] = SPLIT_SIZES) -> None:
    seen: set[str] = set()
    for split, size in sizes.items():
        rows = generate_split(split, size, seed, seen)
        path = out_dir / f"{split}.csv"
        if split == "test":
            write_csv_atomic(path, ["fname", "dialogue"], [row[:2] for row in rows])
        else:
            write_csv_atomic(path, ["fname", "dialogue", "summary", "topic"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    write_sample(args.out_dir, args.seed)
    print(f"wrote {', '.join(f'{s}.csv ({n} rows)' for s, n in SPLIT_SIZES.items())} "
          f"to {args.out_dir}")  # fmt: skip


if __name__ == "__main__":
    main()
