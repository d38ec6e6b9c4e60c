"""What the httpx and httpx2 transports share: reading requests and answers for the governor.

httpx2 (the HTTP layer of the current openai and anthropic SDKs) and httpx (older SDKs, other
libraries) have the same transport interface but distinct classes, so everything here works
through a :class:`Flavour`, one per library, and the two transports differ only in the base
class they declare.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pacekeeper.core.classify import (
    OutcomeKind,
    Verdict,
    classify_response,
    describe_exception,
    verdict_for_exception,
    verdict_for_failure,
)
from pacekeeper.core.cost import BilledUsage
from pacekeeper.core.tokens import (
    CHARS,
    TokenEstimate,
    estimate_request_chars,
    plain_chat_chars,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pacekeeper.core.lane import Lane


__all__ = [
    "PRIORITY_HEADER",
    "FACTS_EXTENSION",
    "Flavour",
    "RequestFacts",
    "facts_of",
    "flavour_of",
    "model_of_path",
    "parse_body",
    "path_facts",
    "read_request",
    "route_of",
    "billed_usage_of",
    "usage_from_json",
    "usage_of",
]

PRIORITY_HEADER = "x-pacekeeper-priority"
"""A request's priority class, for a pacekeeper proxy (``pacekeeper run`` sends its own)."""

_EMPTY_ESTIMATE = TokenEstimate(prompt_tokens=0, max_completion_tokens=0, method="none")
_USAGE_NUMBER = re.compile(
    rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens|cached_tokens'
    rb"|cache_creation_input_tokens|cache_read_input_tokens|promptTokenCount"
    rb"|candidatesTokenCount|thoughtsTokenCount|toolUsePromptTokenCount"
    rb'|cachedContentTokenCount)"\s*:\s*(\d+)'
)


@dataclass(frozen=True, slots=True)
class Flavour:
    """The classes of one HTTP library (httpx or httpx2) that the transports need."""

    name: str
    module: ModuleType

    def decode(self, raw: bytes, headers: Mapping[str, str]) -> bytes:
        """The body as the caller will see it (gzip/br/zstd undone), for reading usage."""
        encoding = headers.get("content-encoding")
        if not encoding or encoding == "identity":
            return raw
        tmp = self.module.Response(200, headers={"content-encoding": encoding}, content=raw)
        return bytes(tmp.read())

    def verdict_for_exception(self, exc: BaseException) -> Verdict | None:
        return verdict_for_exception(exc, now_wall_s=time.time())


@cache
def flavour_of(module: ModuleType) -> Flavour:
    return Flavour(
        name=module.__name__,
        module=module,
    )


_ID_SEGMENT = re.compile(
    r"[a-z]{2,12}[-_](?=[A-Za-z]*\d)[A-Za-z0-9]{16,}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{24,}|\d{6,}"
)


def route_of(path: str) -> str:
    """The governor's route for a URL path: ids of objects replaced by ``{id}``, so that
    ``/v1/files/file-abc...`` and its kin share one lane (and one set of metric labels)
    instead of making one per object.

    >>> route_of("/v1/files/file-AbC123dEf456GhI789/content")
    '/v1/files/{id}/content'
    >>> route_of("/v1/responses/resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b")
    '/v1/responses/{id}'
    >>> route_of("/v1/models/gpt-4o-2024-08-06"), route_of("/v1/chat/completions")
    ('/v1/models/gpt-4o-2024-08-06', '/v1/chat/completions')
    >>> route_of("/openai/deployments/text-embedding-3-small/embeddings")
    '/openai/deployments/text-embedding-3-small/embeddings'
    """
    folded = _ROUTES.get(path)
    if folded is None:
        folded = _fold_ids(path)
        if len(_ROUTES) < _ROUTES_CACHED:  # paths repeat: remember a bounded number
            _ROUTES[path] = folded
    return folded


_ROUTES: dict[str, str] = {}
_ROUTES_CACHED = 4096


def _fold_ids(path: str) -> str:
    if not any(c.isdigit() for c in path):
        return path
    segments = path.split("/")
    changed = False
    for i, segment in enumerate(segments):
        if len(segment) >= 6 and _ID_SEGMENT.fullmatch(segment):
            segments[i] = "{id}"
            changed = True
    return "/".join(segments) if changed else path


class RequestFacts:
    """What the governor needs to know of a request before it leaves.

    A plain slotted class, not a frozen dataclass: one is made on every request, and a frozen
    dataclass's ``__init__`` calls ``object.__setattr__`` once per field (about a microsecond
    more); it is internal, read once by the transport, and never handed to user code."""

    __slots__ = ("_estimate", "body", "completion", "model", "prompt", "route", "streaming")

    def __init__(  # noqa: PLR0917  # positional: every request
        self,
        route: str,
        model: str | None,
        estimate: TokenEstimate | None,
        streaming: bool,
        body: dict[str, Any] | None = None,
        prompt: int = 0,
        completion: int | None = 0,
    ) -> None:
        self.route = route
        self.model = model
        self._estimate = estimate
        self.streaming = streaming
        self.body = body
        """The parsed JSON body (None for anything else)."""
        if estimate is not None:
            prompt, completion = estimate.prompt_tokens, estimate.max_completion_tokens
        self.prompt = prompt
        """The prompt in characters when :attr:`body` is set (else tokens, 0 for no body)."""
        self.completion = completion
        """The completion budget the body sets (None: none)."""

    @property
    def estimate(self) -> TokenEstimate:
        """In characters (:func:`~pacekeeper.core.tokens.estimate_request_chars`) when
        :attr:`body` is set: the governor counts the body exactly only where the count
        decides when the request leaves. Made when read: the transports pass
        :attr:`prompt` and :attr:`completion` on (``Governor._open``)."""
        estimate = self._estimate
        if estimate is None:
            estimate = self._estimate = TokenEstimate(self.prompt, self.completion, CHARS)
        return estimate

    def __repr__(self) -> str:
        return (
            f"RequestFacts(route={self.route!r}, model={self.model!r}, "
            f"estimate={self.estimate!r}, streaming={self.streaming!r})"
        )


_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")
_PATH_MODEL = re.compile(r"/models/([^/:]+):")


def model_of_path(path: str) -> str | None:
    """The model a path names: an Azure deployment (the lane key of a deployment route) or a
    Gemini model (``/v1beta/models/gemini-2.0-flash:generateContent``).

    >>> model_of_path("/openai/deployments/gpt4o-prod/chat/completions")
    'gpt4o-prod'
    >>> model_of_path("/v1beta/models/gemini-2.0-flash:streamGenerateContent")
    'gemini-2.0-flash'
    >>> model_of_path("/v1/chat/completions") is None
    True
    """
    if "/deployments/" in path:
        found = _DEPLOYMENT.search(path)
        if found:
            return found.group(1)
    if ":" in path:
        found = _PATH_MODEL.search(path)
        if found:
            return found.group(1)
    return None


_PATH_FACTS: dict[str, tuple[str, str | None]] = {}
"""(route, model named by the path) of the paths and URLs seen, a bounded number of them:
the one cache of :func:`path_facts`, read inline by :func:`facts_of`."""


def path_facts(target: str) -> tuple[str, str | None]:
    """(route, model named by the path) of a URL path or an absolute URL, worked out once per
    distinct string (a bounded number of them): the transports (by the request's path),
    ``wrap()`` (by the URL an SDK call posts to) and ``pacekeeper run`` (by its URL) share
    this one cache. An absolute URL's path is read percent-decoded, as httpx reads it.

    >>> path_facts("/openai/deployments/gpt4o-prod/chat/completions")
    ('/openai/deployments/gpt4o-prod/chat/completions', 'gpt4o-prod')
    >>> path_facts("https://api.test/v1/files/file-AbC123dEf456GhI789/content")
    ('/v1/files/{id}/content', None)
    >>> path_facts("http://127.0.0.1:8000/v1beta/models/gemini-2.0-flash%3AgenerateContent")
    ('/v1beta/models/gemini-2.0-flash:generateContent', 'gemini-2.0-flash')
    """
    known = _PATH_FACTS.get(target)
    if known is None:
        path = target
        if "://" in target:
            path = unquote(urlsplit(target).path) or "/"
        known = (route_of(path), model_of_path(path))
        if len(_PATH_FACTS) < _ROUTES_CACHED:  # paths repeat: remember a bounded number
            _PATH_FACTS[target] = known
    return known


FACTS_EXTENSION = "pacekeeper.facts"
"""A request extension holding the :class:`RequestFacts` its sender already worked out (the
proxy parses each body once, for both itself and the governor)."""


def read_request(request: Any) -> RequestFacts:
    """Route (the URL path, object ids folded), model and token estimate of a request.

    Only JSON bodies are parsed; anything else (a file upload, a GET) costs no tokens and goes
    on the lane of (route, None). On an Azure deployment route the model is the deployment
    (its own quota), whatever the body says.
    """
    known = request.extensions.pop(FACTS_EXTENSION, None)
    if isinstance(known, RequestFacts):
        return known
    path = request.url.path
    if request.method != "POST":
        return facts_of("GET", path, None)
    try:
        content = request.content
    except Exception:  # a streaming upload that was not read: nothing to estimate
        return facts_of("POST", path, None)
    return facts_of("POST", path, parse_body(content))


_JSON_SPACE = " \t\n\r"
# set by JSONDecoder.__init__, which typeshed does not declare
_SCAN_JSON: Callable[[str, int], tuple[object, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""The C scanner ``json.loads`` ends in: called directly, a UTF-8 object costs no Python
frame (``loads``, ``detect_encoding``, ``decode`` and ``raw_decode`` are four)."""


def parse_body(content: bytes) -> object:
    """A POST body as the governor reads it: JSON when it starts as an object, else None.

    >>> parse_body(b'{"model": "m", "n": [1, 2.5, null]}')
    {'model': 'm', 'n': [1, 2.5, None]}
    >>> parse_body(b'{"model": "m"} trailing') is None, parse_body(b"{nope") is None
    (True, True)
    >>> parse_body(b' {"spaced": true} ')
    {'spaced': True}
    """
    if not content:
        return None
    first = content[:1]
    if first == b"{":
        try:
            text = content.decode()
            body, end = _SCAN_JSON(text, 0)
        except (ValueError, StopIteration, RecursionError):
            pass  # not UTF-8, or not JSON: json.loads says which, below
        else:
            return body if end == len(text) or not text[end:].strip(_JSON_SPACE) else None
    elif first not in (b" ", b"\n"):
        return None
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None


def facts_of(method: str, path: str, body: object) -> RequestFacts:
    """The facts of a request to ``path`` whose body parsed (by :func:`parse_body`) to
    ``body``."""
    # path_facts, its cache read inline: this runs on every request
    known = _PATH_FACTS.get(path)
    route, path_model = known if known is not None else path_facts(path)
    if method != "POST" or not isinstance(body, dict):
        return RequestFacts(route, path_model, _EMPTY_ESTIMATE, False)
    model = body.get("model")
    model = path_model or (model if isinstance(model, str) else None)
    streaming = body.get("stream") is True or route.endswith(":streamGenerateContent")
    # The commonest body's counts without a TokenEstimate (see RequestFacts.estimate).
    plain = plain_chat_chars(body)
    if plain is not None:
        return RequestFacts(route, model, None, streaming, body, plain[0], plain[1])
    return RequestFacts(route, model, estimate_request_chars(body), streaming, body)


_USAGE_OPTION_ROUTES = ("/chat/completions", "/completions")


def with_stream_usage(request: Any, facts: RequestFacts, module: ModuleType) -> Any | None:
    """A copy of a streamed chat/completions request that asks for usage in the stream
    (``stream_options.include_usage``), or None when it already does, or does not apply
    (the Responses API and Anthropic always report usage in their streams)."""
    body = facts.body
    if body is None or body.get("stream") is not True:
        return None
    if not facts.route.endswith(_USAGE_OPTION_ROUTES):
        return None
    options = body.get("stream_options")
    if isinstance(options, dict) and "include_usage" in options:
        return None  # the client chose, either way
    if options is not None and not isinstance(options, dict):
        return None
    content = _with_usage_option(request.content) if "stream_options" not in body else None
    if content is None:
        new_body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
        content = json.dumps(new_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    spliced = _spliced(request, content, module)
    if spliced is not None:
        return spliced
    # The body as a stream and its length set here: with content=, httpx rebuilds the headers.
    # Headers given as Headers are copied as they are, not checked and normalised again.
    copy = module.Request(
        request.method,
        request.url,
        headers=request.headers,
        stream=module.ByteStream(content),
        extensions=request.extensions,
    )
    headers = copy.headers
    # Scanned rather than looked up: a lookup first works out the headers' encoding, by
    # decoding every one of them.
    if any(name.lower() == b"transfer-encoding" for name, _ in headers.raw):
        del headers["transfer-encoding"]
    headers["Content-Length"] = str(len(content))
    copy.read()
    return copy


def _spliced(request: Any, content: bytes, module: ModuleType) -> Any | None:
    """A copy of an httpx/httpx2 ``request`` with ``content`` as its body, made without
    building a new Request: the URL, method and extensions are shared (a new Request parses
    the URL again and checks every header: about a hundred calls per stream), the header
    entries are copied as they are with the length set and no ``transfer-encoding``. None
    for a Request class whose insides are not the library's own (the slower copy then)."""
    cls: Any = module.Request
    headers = request.headers
    entries = getattr(headers, "_list", None)
    if type(request) is not cls or type(headers) is not module.Headers or entries is None:
        return None
    length = str(len(content)).encode("ascii")
    kept: list[tuple[bytes, bytes, bytes]] = []
    placed = False
    for entry in entries:
        lowered = entry[1]
        if lowered == b"content-length":
            if not placed:  # where it was, as Headers.__setitem__ puts it
                kept.append((b"Content-Length", lowered, length))
                placed = True
        elif lowered != b"transfer-encoding":
            kept.append(entry)
    if not placed:
        kept.append((b"Content-Length", b"content-length", length))
    copied = module.Headers()
    copied._list = kept
    copied._encoding = headers._encoding
    copy: Any = object.__new__(cls)
    copy.__dict__.update(request.__dict__)
    copy.headers = copied
    copy.stream = module.ByteStream(content)
    copy._content = content
    return copy


_USAGE_OPTION = b',"stream_options":{"include_usage":true}'


def _with_usage_option(content: bytes) -> bytes | None:
    """A JSON object's bytes (UTF-8, without ``stream_options``) with the option added before
    its closing brace, the client's bytes otherwise unchanged: encoding the whole body again
    cost as much as a prompt is long. None: not such an object.

    >>> _with_usage_option(b'{"model": "m", "stream": true}\\n')
    b'{"model": "m", "stream": true,"stream_options":{"include_usage":true}}\\n'
    """
    end = len(content.rstrip())
    # A NUL among the first bytes: UTF-16 or UTF-32, which json reads and this would break.
    if end < 2 or content[end - 1] != 0x7D or content.find(b"\x00", 0, 4) >= 0:  # "}"
        return None
    return content[: end - 1] + _USAGE_OPTION + content[end - 1 :]


_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_SPACE = b" \t\n\r\x0b\x0c"  # what \s matches in a bytes pattern
_CHOICES = b'"choices"'
_CHOICES_LEN = len(_CHOICES)


def _empty_choices(data: bytes, start: int) -> int:
    """Where the first match of ``_EMPTY_CHOICES`` at or after ``start`` begins (-1: none).

    Found from its empty array back, the arrays' openings found by ``bytes.find`` of one
    byte (memchr: a few hundred instructions over a whole stream in one chunk, where a
    regular expression's search for ``[`` cost about 30,000): a stream's events each hold
    ``"choices"`` and a dozen quotes, but one array or two, and an empty one is rare.

    >>> _empty_choices(b'{"choices": [{}]} {"choices" :\\n[ ]}', 0)
    19
    >>> _empty_choices(b'{"choices": [{}]} {"choices" :\\n[ ]}', 20), _empty_choices(b"[]", 0)
    (-1, -1)
    """
    size = len(data)
    find = data.find
    opening = find(b"[", start)
    while opening >= 0:
        close = opening + 1
        if close < size and data[close] == 0x7B:  # "{": an array of objects, most of them
            opening = find(b"[", close)
            continue
        while close < size and data[close] in _SPACE:
            close += 1
        if close < size and data[close] == 0x5D:  # "]": an empty array
            end = opening
            while end > start and data[end - 1] in _SPACE:
                end -= 1
            if end > start and data[end - 1] == 0x3A:  # ":"
                end -= 1
                while end > start and data[end - 1] in _SPACE:
                    end -= 1
                begin = end - _CHOICES_LEN
                if begin >= start and data[begin:end] == _CHOICES:
                    return begin
        opening = find(b"[", opening + 1)
    return -1


def _is_usage_only(event: bytes) -> bool:
    """Whether an event is an OpenAI usage-only chunk: its first ``data:`` line a JSON object
    with empty ``choices`` and a ``usage`` object."""
    # Only an event with empty choices and a usage object is parsed (a JSON parse per event
    # was a quarter of the proxy's CPU when streaming).
    if not _EMPTY_CHOICES.search(event) or not _USAGE_OBJECT.search(event):
        return False
    if event.startswith(b"data:"):  # the first line is the data line: no splitlines
        cut = len(event)
        for eol in (event.find(b"\n"), event.find(b"\r")):
            if 0 <= eol < cut:
                cut = eol
        line = event[:cut]
    else:
        for line in event.splitlines():
            if line.startswith(b"data:"):
                break
        else:
            return False
    # json's C scanner (parse_body): json.loads adds four Python frames
    data = parse_body(line[5:].lstrip())
    return (
        isinstance(data, dict) and data.get("choices") == [] and isinstance(data.get("usage"), dict)
    )


def _whole_events_end(data: bytes, start: int, stop: int) -> int:
    """Where the last whole event that ends by ``stop`` ends, events cut at their blank
    lines from ``start`` on as :func:`_event_end` cuts them (``start``: none).

    >>> _whole_events_end(b"a\\n\\nb\\n\\n\\nc", 0, 8), _whole_events_end(b"a\\n\\nb", 0, 4)
    (6, 3)
    """
    # A CRLF blank line matters only after the last LF one: looked for from there.
    last = data.rfind(b"\n\n", start, stop)
    crlf = data.rfind(b"\r\n\r\n", last if last > start else start, stop)
    if crlf > last:  # noqa: PLR1730 - max() is a call, on every stream
        last = crlf
    if last < 0:
        return start
    # A blank line is made of CR and LF only, so the cut within the run of them holding the
    # last one is the same whether the events before it are cut one by one or not.
    run = last
    while run > start and data[run - 1] in _CRLF:
        run -= 1
    end = last
    while end < stop and data[end] in _CRLF:
        end += 1
    cut = run
    while True:
        found, sep = _event_end(data, cut)
        if found < 0 or found + sep > end:
            return cut
        cut = found + sep


_CRLF = b"\r\n"


def _event_end(data: bytes, start: int) -> tuple[int, int]:
    """The end of the next whole event in ``data`` and the length of its blank line."""
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2 if lf >= 0 else 0


def usage_from_json(
    body: bytes, cache_reads_count: bool = True
) -> tuple[int | None, int | None, bool, BilledUsage | None]:
    """(input tokens counted, output tokens, body is valid JSON, usage as billed) of a JSON
    answer. The usage as billed is None when it is no more than the two counts (no cache
    reads): :meth:`~pacekeeper.core.governor.Call.settle` bills those counts itself.

    The answer is not parsed when it is whole (an object, ``{`` to ``}``: a cut answer is
    not) and its usage object, found from the end, names counts: they are read off as they
    are written (every dialect puts usage last or nearly, and a count quoted inside a string
    is escaped, so it cannot be mistaken for one). Parsing a whole answer to read three
    numbers cost more than the rest of its handling; the caller's SDK parses it anyway.

    >>> usage_from_json(b'{"choices": [], "usage": {"prompt_tokens": 12, '
    ...                 b'"completion_tokens": 3, "total_tokens": 15}}')
    (12, 3, True, None)
    >>> usage_from_json(b'{"usage": {"prompt_tokens": 12, "completion_tokens": 3, '
    ...                 b'"prompt_tokens_details": {"cached_tokens": 10}}}')
    (12, 3, True, BilledUsage(input_tokens=12, output_tokens=3, cached_input_tokens=10))
    >>> usage_from_json(b'{"choices": [], "usage": {"prompt_tokens": 12, "compl')[2]
    False
    """
    fast = _usage_at_end(body, cache_reads_count)
    if fast is not None:
        return fast
    try:
        data = json.loads(body)
    except ValueError:
        return None, None, False, None
    prompt, completion = usage_of(data, cache_reads_count=cache_reads_count)
    return prompt, completion, True, billed_usage_of(data)


_OPENAI_NAMES = frozenset({b"prompt_tokens", b"completion_tokens", b"cached_tokens"})
_OPENAI_COUNTS = len(_OPENAI_NAMES)


def _usage_at_end(
    body: bytes, cache_reads_count: bool
) -> tuple[int | None, int | None, bool, BilledUsage | None] | None:
    """The usage of a whole JSON object read without parsing it, or None (parse it)."""
    if body[:1] != b"{" or not (body.endswith(b"}") or body.rstrip().endswith(b"}")):
        return None
    start = body.rfind(b'"usage')
    if start < 0:
        return None
    found = _USAGE_NUMBER.findall(body, start)
    if not found:
        return None
    # The names and their digits as written (the last of a repeated name wins, as in a
    # parse); only the counts read are converted: no comprehension's frame on every answer.
    written = dict(found)
    if len(written) <= _OPENAI_COUNTS and _OPENAI_NAMES.issuperset(written):
        # OpenAI's chat, completions and embeddings: what usage_of and billed_usage_of give.
        digits = written.get(b"prompt_tokens")
        if digits is not None:
            prompt = int(digits)
            digits = written.get(b"completion_tokens")
            completion = int(digits) if digits is not None else None
            digits = written.get(b"cached_tokens")
            cached = int(digits) if digits is not None else 0
            counted = prompt if cache_reads_count else max(0, prompt - cached)
            if cached or completion is None:
                billed = BilledUsage(
                    input_tokens=prompt, output_tokens=completion or 0, cached_input_tokens=cached
                )
                return counted, completion, True, billed
            # No cache reads: the bill is the counts, which the settle prices itself (and only
            # for a model with a price): no object made on every answer for nobody.
            return counted, completion, True, None
    scanner = UsageScanner(cache_reads_count=cache_reads_count)
    scanner.take({name: int(value) for name, value in found})
    return scanner.prompt_tokens, scanner.completion_tokens, True, scanner.billed


def billed_usage_of(data: object) -> BilledUsage | None:
    """The usage as it is billed: every input token with the cache reads among them apart
    (billed at the cached price), and every output token (reasoning included).

    >>> billed_usage_of({"usage": {"prompt_tokens": 120, "completion_tokens": 30,
    ...                  "prompt_tokens_details": {"cached_tokens": 100}}})
    BilledUsage(input_tokens=120, output_tokens=30, cached_input_tokens=100)
    >>> billed_usage_of({"usage": {"input_tokens": 10, "cache_creation_input_tokens": 200,
    ...                  "cache_read_input_tokens": 5000, "output_tokens": 7}})
    BilledUsage(input_tokens=5210, output_tokens=7, cached_input_tokens=5000)
    """
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if not isinstance(usage, dict):
        inner = data.get("response")
        usage = inner.get("usage") if isinstance(inner, dict) else None
    if not isinstance(usage, dict):
        meta = data.get("usageMetadata")
        if not isinstance(meta, dict):
            return None
        return _billed({k.encode(): v for k, v in meta.items() if _count(v) is not None})
    counts = {k.encode(): v for k, v in usage.items() if _count(v) is not None}
    for details in ("prompt_tokens_details", "input_tokens_details"):
        inner_details = usage.get(details)
        if isinstance(inner_details, dict) and _count(inner_details.get("cached_tokens")):
            counts[b"cached_tokens"] = inner_details["cached_tokens"]
    return _billed(counts)


def _billed(counts: Mapping[bytes, int]) -> BilledUsage | None:
    """From token counts by name, as a usage object or the stream scanner holds them."""
    if b"promptTokenCount" in counts:
        g = counts
        return BilledUsage(
            input_tokens=g[b"promptTokenCount"] + g.get(b"toolUsePromptTokenCount", 0),
            output_tokens=g.get(b"candidatesTokenCount", 0) + g.get(b"thoughtsTokenCount", 0),
            cached_input_tokens=g.get(b"cachedContentTokenCount", 0),
        )
    output = counts.get(b"completion_tokens", counts.get(b"output_tokens"))
    if b"prompt_tokens" in counts:
        prompt = counts[b"prompt_tokens"]
        return BilledUsage(
            input_tokens=prompt,
            output_tokens=output or 0,
            cached_input_tokens=counts.get(b"cached_tokens", 0),
        )
    if b"input_tokens" not in counts:
        return None
    prompt = counts[b"input_tokens"]
    if b"cache_creation_input_tokens" in counts or b"cache_read_input_tokens" in counts:
        # Anthropic leaves cache reads and writes out of input_tokens.
        reads = counts.get(b"cache_read_input_tokens", 0)
        writes = counts.get(b"cache_creation_input_tokens", 0)
        return BilledUsage(
            input_tokens=prompt + reads + writes,
            output_tokens=output or 0,
            cached_input_tokens=reads,
        )
    return BilledUsage(
        input_tokens=prompt,
        output_tokens=output or 0,
        cached_input_tokens=counts.get(b"cached_tokens", 0),
    )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of(data: object, *, cache_reads_count: bool = True) -> tuple[int | None, int | None]:
    """(input tokens counted toward the input limit, output tokens) of any dialect's answer.

    * OpenAI chat, completions and embeddings: ``usage.prompt_tokens`` (which includes cached
      tokens, ``prompt_tokens_details.cached_tokens``) and ``usage.completion_tokens`` (which
      includes reasoning tokens).
    * OpenAI Responses: ``usage.input_tokens`` (cached tokens included, in
      ``input_tokens_details.cached_tokens``) and ``usage.output_tokens`` (reasoning
      included); a streamed ``response.completed`` event carries it under ``response``.
    * Anthropic Messages: ``input_tokens`` leaves cache reads and writes out; the input
      counted is ``input_tokens + cache_creation_input_tokens``, never
      ``cache_read_input_tokens`` (Anthropic does not count cache reads toward ITPM).
    * Gemini: ``usageMetadata.promptTokenCount`` (+ ``toolUsePromptTokenCount``) and
      ``candidatesTokenCount + thoughtsTokenCount``.

    ``cache_reads_count=False`` (providers that do not count cached prompt tokens, such as
    Groq) takes ``cached_tokens`` out of OpenAI-style input counts.

    >>> usage_of({"usage": {"input_tokens": 10, "cache_creation_input_tokens": 200,
    ...                     "cache_read_input_tokens": 5000, "output_tokens": 7}})
    (210, 7)
    >>> usage_of({"usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3,
    ...                             "thoughtsTokenCount": 40}})
    (12, 43)
    """
    if not isinstance(data, dict):
        return None, None
    usage = data.get("usage")
    if not isinstance(usage, dict):
        inner = data.get("response")  # Responses API stream events, response.completed
        if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
            usage = inner["usage"]
        else:
            meta = data.get("usageMetadata")
            if isinstance(meta, dict):
                return _gemini_usage(meta)
            return None, None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt = _count(usage.get("prompt_tokens"))
        details = usage.get("prompt_tokens_details")
        if prompt is not None and not cache_reads_count and isinstance(details, dict):
            prompt = max(0, prompt - (_count(details.get("cached_tokens")) or 0))
        return prompt, _count(usage.get("completion_tokens"))
    prompt = _count(usage.get("input_tokens"))
    completion = _count(usage.get("output_tokens"))
    if "cache_creation_input_tokens" in usage or "cache_read_input_tokens" in usage:
        writes = _count(usage.get("cache_creation_input_tokens")) or 0
        if prompt is not None:
            prompt += writes
        return prompt, completion
    details = usage.get("input_tokens_details")
    if prompt is not None and not cache_reads_count and isinstance(details, dict):
        prompt = max(0, prompt - (_count(details.get("cached_tokens")) or 0))
    return prompt, completion


def _gemini_usage(meta: dict[str, Any]) -> tuple[int | None, int | None]:
    prompt = _count(meta.get("promptTokenCount"))
    if prompt is not None:
        prompt += _count(meta.get("toolUsePromptTokenCount")) or 0
    candidates = _count(meta.get("candidatesTokenCount"))
    thoughts = _count(meta.get("thoughtsTokenCount"))
    completion = (
        None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    )
    return prompt, completion


_SCAN_TAIL = 64
"""Bytes of the previous chunk searched again with the next one: more than the longest
count as it is written (`"cache_creation_input_tokens": ` and ten digits), so a count cut
between two chunks is found whole in the second search."""


_NAME_LEAD = 32
"""Bytes from a count's opening quote to its ``_tokens`` or ``TokenCount``, at most: more
than the longest name's lead (``"cache_creation_input`` and ``"cachedContent``)."""

_NAMED_OVERLAP = len(b"TokenCount") - 1
"""How far past the first ``_tokens`` a ``TokenCount`` is looked for: one starting before it."""


class UsageScanner:
    """Picks the token counts out of a server-sent event stream as it passes and, with
    ``strip``, removes the usage-only chunk that ``include_usage`` added for a client that did
    not ask for it (from an OpenAI stream: ``"choices": []`` with ``"usage"``), in one pass
    over each chunk: both read the same window, made once.

    Counts: OpenAI sends usage in the last chunk (with ``stream_options.include_usage``), the
    Responses API in ``response.completed``, Anthropic in ``message_start`` (input, cache
    writes and reads) and ``message_delta`` (output), Gemini in every chunk's
    ``usageMetadata``. Only chunks that name a count are searched, and the end of the previous
    chunk is searched with each one, so a count split between two chunks is still found. The
    last value of each count wins; the counted input follows :func:`usage_of`.

    The usage-only chunk: events are cut at their blank line; a partial event waits for the
    rest of it (a few hundred bytes at most), every other byte passes unchanged and in order.
    Only an event holding empty choices can be the one: the whole events before the next such
    place pass in one piece, unchecked (checking every event of a stream one by one cost more
    than the rest of the stream's handling).
    """

    __slots__ = ("_counts", "_held", "_waiting", "cache_reads_count", "removed", "strip")

    def __init__(self, *, cache_reads_count: bool = True, strip: bool = False) -> None:
        self._counts: dict[bytes, int] = {}
        self._held = b""
        """The bytes searched again with the next chunk: the last ``_SCAN_TAIL`` of the
        stream, or the event waiting for its end (``_waiting``, a suffix) if longer."""
        self._waiting = 0
        self.cache_reads_count = cache_reads_count
        self.strip = strip
        self.removed = 0
        """Usage-only chunks removed."""

    def feed(self, chunk: bytes) -> bytes:
        """Read a chunk; what of the stream reaches the caller now (b"": wait for more)."""
        held = self._held
        window = held + chunk if held else chunk
        # Searched from just before the first place a count can be named: every count's
        # name holds one of these two, at most _NAME_LEAD bytes after its opening quote.
        # The same counts as searching the whole window, without trying the names at every
        # quote of the text before (a whole stream in one chunk: most of its quotes). The
        # second name is looked for only before the first one's place: each byte is looked
        # at once per name. bytes.find, never `in`: a bytes needle `in` bytes is first tried
        # as an int, and the TypeError made and dropped costs about 1,800 instructions.
        first = window.find(b"_tokens")
        if first >= 0:
            named = window.find(b"TokenCount", 0, first + _NAMED_OVERLAP)
            if 0 <= named < first:
                first = named
        else:
            first = window.find(b"TokenCount")
        if first >= 0:
            first -= _NAME_LEAD
            counts = self._counts
            for name, value in _USAGE_NUMBER.findall(window, first if first > 0 else 0):
                counts[name] = int(value)
        if not self.strip:
            self._held = window[-_SCAN_TAIL:]
            return chunk
        # The usage-only chunk, from the first byte not passed yet.
        return self._strip(window, len(held) - self._waiting)

    def _strip(self, window: bytes, start: int) -> bytes:
        """What of ``window`` from ``start`` reaches the caller now, the usage-only event
        removed; the rest (an event not whole yet) is held for the next chunk."""
        out: list[bytes] = []
        # Without a CR (a memchr), events end at their first "\n\n": cut as _whole_events_end
        # and _event_end cut them, with a find or two instead of their ten.
        lf_only = window.find(b"\r") < 0
        while True:
            hit = _empty_choices(window, start)
            stop = hit if hit >= 0 else len(window)
            if lf_only:
                last = window.rfind(b"\n\n", start, stop)
                if last < 0:
                    whole = start
                elif last == start or window[last - 1] != 0x0A:
                    # A blank line of two LFs just after a byte of an event's: the event
                    # holding that byte ends there, however the events before were cut.
                    whole = last + 2
                else:  # a longer run of LFs: where it is cut depends on the events before
                    whole = _whole_events_end(window, start, stop)
            else:
                whole = _whole_events_end(window, start, stop)
            if whole > start:
                out.append(window[start:whole])
                start = whole
            if hit < 0:
                break
            # the event holding the hit
            if lf_only:
                end = window.find(b"\n\n", start)
                sep = 2
            else:
                end, sep = _event_end(window, start)
            if end < 0:
                break  # not whole yet: it waits for the rest
            event = window[start : end + sep]
            if _is_usage_only(event):
                self.removed += 1
            else:
                out.append(event)
            start = end + sep
        waiting = len(window) - start
        self._waiting = waiting
        self._held = window[start:] if waiting > _SCAN_TAIL else window[-_SCAN_TAIL:]
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def flush(self) -> bytes:
        """At the end of the stream: what waits for the end of its event (once)."""
        waiting, self._waiting = self._waiting, 0
        if not waiting:
            return b""
        rest = self._held[-waiting:]
        self._held = self._held[-_SCAN_TAIL:]
        return b"" if _is_usage_only(rest) else rest

    def take(self, counts: dict[bytes, int]) -> None:
        """Counts found elsewhere (the last value of each wins)."""
        self._counts.update(counts)

    @property
    def prompt_tokens(self) -> int | None:
        counts = self._counts
        if b"promptTokenCount" in counts:
            return counts[b"promptTokenCount"] + counts.get(b"toolUsePromptTokenCount", 0)
        prompt = counts.get(b"prompt_tokens", counts.get(b"input_tokens"))
        if prompt is None:
            return None
        if b"cache_creation_input_tokens" in counts or b"cache_read_input_tokens" in counts:
            return prompt + counts.get(b"cache_creation_input_tokens", 0)
        if not self.cache_reads_count:
            prompt = max(0, prompt - counts.get(b"cached_tokens", 0))
        return prompt

    @property
    def billed(self) -> BilledUsage | None:
        """The usage as billed (see :func:`billed_usage_of`)."""
        return _billed(self._counts)

    @property
    def completion_tokens(self) -> int | None:
        counts = self._counts
        if b"candidatesTokenCount" in counts or b"thoughtsTokenCount" in counts:
            return counts.get(b"candidatesTokenCount", 0) + counts.get(b"thoughtsTokenCount", 0)
        return counts.get(b"completion_tokens", counts.get(b"output_tokens"))


def is_json(headers: Mapping[str, str]) -> bool:
    return "json" in headers.get("content-type", "")


def is_event_stream(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").startswith("text/event-stream")


def request_id(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-request-id") or headers.get("request-id")


_PLAIN_OK: dict[int, Verdict] = {}


def verdict_for_answer(
    status: int,
    headers: Mapping[str, str],
    body: bytes | None,
    json_valid: bool = True,
    read_limits: bool = True,
) -> Verdict:
    """Classify a complete answer; a 2xx whose JSON does not parse is MALFORMED."""
    if not read_limits and 200 <= status < 300 and (json_valid or body is None):
        # The commonest answer of all: the same verdict every time, made once per status.
        verdict = _PLAIN_OK.get(status)
        if verdict is None:
            verdict = classify_response(status, {}, None, now_wall_s=0.0, read_limits=False)
            _PLAIN_OK[status] = verdict
        return verdict
    if status < 300 and not json_valid and body is not None:
        return verdict_for_failure(
            OutcomeKind.MALFORMED,
            f"{status} with a body that is not valid JSON ({len(body)} bytes)",
        )
    return classify_response(status, headers, body, now_wall_s=time.time(), read_limits=read_limits)


_STATED_LIMITS = (
    "x-ratelimit-limit-requests",
    "anthropic-ratelimit-requests-limit",
    "x-ratelimit-limit",
)
"""Where a requests limit is stated: read on every answer, to see it change between reads."""

_ESSENTIAL = {
    name.encode(): name
    for name in ("content-type", "content-encoding", "x-request-id", "request-id", *_STATED_LIMITS)
}


def stated_limit(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """Which header states the requests limit, and its text (None: none does).

    >>> stated_limit({"x-ratelimit-limit-requests": "600", "x-ratelimit-limit": "60"})
    ('x-ratelimit-limit-requests', '600')
    """
    for name in _STATED_LIMITS:
        text = headers.get(name)
        if text is not None:
            return name, text
    return None


def answer_headers(
    raw: Any, lane: Lane, status: int, read_limits: bool
) -> tuple[dict[str, str], bool]:
    """An answer's headers as a plain dict with lower-case names, and whether its rate-limit
    headers are read this time (``read_limits``: an error, or ``Lane.limits_due``).

    Not read this time, only the few a successful answer needs: decoding the other fifteen
    costs more than the rest of the answer's handling. Those few include the stated requests
    limit: an answer stating another than the last read is read whole at once (a limit
    halved shows on the next answers, and waiting for the next read cost a 429).

    httpx and httpx2 keep each header as (name, lower-case name, value): read there, the
    names are neither copied into a new list nor lowered again (``raw`` does both).

    >>> import httpx2
    >>> import time
    >>> from pacekeeper import Limits, RetryPolicy
    >>> from pacekeeper.core.lane import Lane
    >>> lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(),
    ...     clock=time.monotonic)
    >>> answer_headers(httpx2.Headers({"X-Ratelimit-Limit-Requests": "60", "X-A": "1"}),
    ...     lane, status=200, read_limits=True)
    ({'x-ratelimit-limit-requests': '60', 'x-a': '1'}, True)
    >>> answer_headers(httpx2.Headers({"X-Ratelimit-Limit-Requests": "60", "X-A": "1"}),
    ...     lane, status=200, read_limits=False)
    ({'x-ratelimit-limit-requests': '60'}, False)
    >>> answer_headers(httpx2.Headers({"X-Ratelimit-Limit-Requests": "30", "X-A": "1"}),
    ...     lane, status=200, read_limits=False)
    ({'x-ratelimit-limit-requests': '30', 'x-a': '1'}, True)
    """
    if read_limits:
        headers = plain_headers(raw)
        if status < 300:
            lane.stated_limit_text = stated_limit(headers)
        return headers, True
    # essential headers only, inlined: one call fewer on every answer between reads
    headers = {}
    entries = getattr(raw, "_list", None)
    if entries is None:  # another Headers class: the public raw pairs
        entries = [(name, name.lower(), value) for name, value in raw.raw]
    for _, lowered, value in entries:
        if lowered in _ESSENTIAL:
            headers[_ESSENTIAL[lowered]] = value.decode("latin-1")
    stated = lane.stated_limit_text
    if stated is not None and stated[0] in headers and headers[stated[0]] != stated[1]:
        headers = plain_headers(raw)
        lane.stated_limit_text = stated_limit(headers)
        return headers, True
    return headers, False


def plain_headers(headers: Any) -> dict[str, str]:
    """The headers as a plain dict with lower-case names, read once: httpx's Headers.get is
    a scan of the list, and an answer's headers are read several times.

    ASCII headers (all but a rare few) are decoded at once; ``multi_items`` first works out
    the encoding by decoding every header, then decodes each again.

    >>> import httpx2
    >>> plain_headers(httpx2.Headers({"X-Ratelimit-Limit-Requests": "60"}))
    {'x-ratelimit-limit-requests': '60'}
    """
    # httpx's own (name, lower-case name, value) entries: no list copied, no name lowered.
    entries = getattr(headers, "_list", None)
    try:
        if entries is not None:
            return {lowered.decode("ascii"): value.decode("ascii") for _, lowered, value in entries}
        return {name.decode("ascii").lower(): value.decode("ascii") for name, value in headers.raw}
    except UnicodeDecodeError:
        return dict(headers.multi_items())


def bounded_timeout(extensions: dict[str, Any], attempt_timeout_s: float | None) -> None:
    """Apply the policy's per-attempt timeout on top of the client's own timeouts."""
    if attempt_timeout_s is None:
        return
    current = extensions.get("timeout") or {}
    extensions["timeout"] = {
        phase: attempt_timeout_s
        if current.get(phase) is None
        else min(current[phase], attempt_timeout_s)
        for phase in ("connect", "read", "write", "pool")
    }


def stream_failure(error: BaseException | None) -> Verdict:
    """What a streamed answer that did not end well means: it broke (``error``), or it was
    abandoned (None: the caller stopped reading without closing it)."""
    if error is not None:
        return verdict_for_failure(
            OutcomeKind.CONNECTION_ERROR,
            f"stream broke after the answer began: {describe_exception(error)}",
        )
    return verdict_for_failure(
        OutcomeKind.OTHER, "stream abandoned: the caller stopped reading without closing it"
    )
