"""One governed request through an inner transport: the attempt loop, async and sync twins.

A request is admitted, sent, and its answer read whole (so that a dropped connection or a
malformed body is caught here, where it can still be retried) unless it is a server-sent event
stream: that is handed to the caller at once, keeps its concurrency slot until it is closed,
and is never retried once bytes reached the caller.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pacekeeper.core.attempts import Attempts, SurfaceAttempts
from pacekeeper.core.classify import OutcomeKind
from pacekeeper.core.concurrency import Signal
from pacekeeper.core.tokens import estimate_request_chars, plain_chat_chars
from pacekeeper.transports._engine import (
    Flavour,
    UsageScanner,
    answer_headers,
    bounded_timeout,
    is_event_stream,
    model_of_path,
    read_request,
    route_of,
    stream_failure,
    usage_from_json,
    verdict_for_answer,
    with_stream_usage,
)

if TYPE_CHECKING:
    from collections.abc import (
        Awaitable,
        Callable,
        Coroutine,
        ItemsView,
        Iterator,
        KeysView,
        Mapping,
        ValuesView,
    )

    from pacekeeper.core.classify import Verdict
    from pacekeeper.core.governor import Governor
    from pacekeeper.providers import Provider
    from pacekeeper.transports._engine import RequestFacts

_T = TypeVar("_T")

__all__ = [
    "ADMITTED",
    "Admitted",
    "attempts_for",
    "run_admitted",
    "UsageOptions",
    "AsyncGovernedTransport",
    "SyncGovernedTransport",
    "handle_async",
    "handle_sync",
    "pool_size",
    "unbounded_pool",
]

RECORD_EXTENSION = "pacekeeper.record"
"""The response extension that carries the request's final :class:`RequestRecord`."""
TAG_EXTENSION = "pacekeeper.tag"
"""A request extension whose value (a str) is copied into the request's records."""


@dataclass(frozen=True, slots=True)
class UsageOptions:
    """How a transport reads usage.

    ``include_usage``: a streamed chat/completions request that did not ask for usage is sent
    with ``stream_options.include_usage``, so that it is reconciled with real usage like any
    other; the extra usage-only chunk is removed before the caller sees it.
    ``cache_reads_count``: False for providers that do not count cached prompt tokens toward
    their input limit (OpenAI-style ``cached_tokens`` are then not charged).
    """

    include_usage: bool = False
    cache_reads_count: bool = True


_DEFAULT_OPTIONS = UsageOptions()


class _RecordExtensions(dict[str, Any]):
    """A response's extensions whose :data:`RECORD_EXTENSION` is the request's record, built
    when first looked at.

    A frozen record (and the decision that carried it) cost about an eighth of what the
    governed transport adds to a request, and most responses' extensions are never read for
    it (httpx itself reads only ``http_version`` and ``reason_phrase``, which the C lookup
    finds without a call here when the inner transport set them). Until then the key is
    missing from the dict's own storage: a lookup reaches :meth:`__missing__`, and every other
    way of reading the whole mapping (``in``, ``len``, iteration, views, copies, ``==``)
    builds it first, so the mapping reads as a plain dict holding the record.
    """

    __slots__ = ("_call",)

    _call: Any  # the Call whose record is pending; None once it is in the dict

    def _settle(self) -> None:
        call = self._call
        if call is not None:
            self._call = None
            if not dict.__contains__(self, RECORD_EXTENSION):  # one set by hand stays
                dict.__setitem__(self, RECORD_EXTENSION, call.record)

    def __missing__(self, key: str) -> Any:
        if key == RECORD_EXTENSION and self._call is not None:
            self._settle()
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._settle()
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        self._settle()
        return dict.__contains__(self, key)

    def __len__(self) -> int:
        self._settle()
        return dict.__len__(self)

    def __iter__(self) -> Iterator[str]:
        # Defined so that dict(), {**...} and update() read through keys() and lookups
        # rather than the storage, which may still lack the record.
        self._settle()
        return dict.__iter__(self)

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        self._settle()
        return dict.keys(self)

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        self._settle()
        return dict.values(self)

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        self._settle()
        return dict.items(self)

    def pop(self, key: str, *default: Any) -> Any:
        self._settle()
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._settle()
        return dict.popitem(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._settle()
        return dict.setdefault(self, key, default)

    def __delitem__(self, key: str) -> None:
        self._settle()
        dict.__delitem__(self, key)

    def copy(self) -> dict[str, Any]:
        self._settle()
        return dict(dict.items(self))

    def __eq__(self, other: object) -> bool:
        self._settle()
        if isinstance(other, _RecordExtensions):
            other._settle()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # as dict's

    def __repr__(self) -> str:
        self._settle()
        return dict.__repr__(self)

    def __or__(self, other: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        return self.copy() | other

    def __ror__(self, other: Any) -> dict[str, Any]:  # type: ignore[override]
        self._settle()
        return other | dict(dict.items(self))  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (self.copy(),)


class Admitted:
    """A call admitted before its request was built (``wrap()`` admits at the SDK method, so
    a queued call holds no request), on its way to the transport, which sends its first
    attempt in the same attempt loop instead of admitting it again. Claimed at most once."""

    __slots__ = ("attempts", "governor")

    def __init__(self, governor: Governor, attempts: Attempts) -> None:
        self.governor = governor
        self.attempts: Attempts | None = attempts
        """The loop, its first attempt admitted (None: claimed or given back)."""

    def claim(self, gov: Governor, request: Any) -> Attempts | None:
        """The loop, when ``request`` is the one admitted (same governor, route and model);
        else None, and a permit admitted on another lane is given back at once (the
        request is admitted on its own lane: holding both could wait on itself)."""
        attempts = self.attempts
        if attempts is None or gov is not self.governor:
            return None
        self.attempts = None
        call = attempts.call
        path = request.url.path
        path_model = model_of_path(path)
        if route_of(path) != call.route or (path_model is not None and path_model != call.model):
            permit = attempts.permit
            attempts.permit = None
            if permit is not None:
                permit.release(Signal.NEUTRAL)
            return None
        if call.tag is None:
            call.tag = request.extensions.get(TAG_EXTENSION)
        return attempts

    def unclaimed(self, exc: BaseException | None) -> None:
        """The method returned or failed without its request reaching the transport: free the
        slot (a cancelled caller is recorded as cancelled, as the transport would)."""
        attempts = self.attempts
        if attempts is None:
            return
        self.attempts = None
        permit = attempts.permit
        attempts.permit = None
        if permit is None:
            return
        if isinstance(exc, asyncio.CancelledError):
            attempts.call.cancelled(permit)
        else:
            permit.release(Signal.NEUTRAL)

    def __repr__(self) -> str:
        attempts = self.attempts
        if attempts is None:
            return "<Admitted: claimed>"
        call = attempts.call
        return f"<Admitted {call.route} model={call.model}: waiting for its request>"


ADMITTED: ContextVar[Admitted | None] = ContextVar("pacekeeper_admitted", default=None)
"""The call the current task's SDK method admitted, if any (see :class:`Admitted`)."""


async def run_admitted(
    gov: Governor,
    attempts: Attempts,
    send: Callable[..., Awaitable[_T]],
    /,
    *args: Any,
    **kwargs: Any,
) -> _T:
    """Await ``send(*args, **kwargs)`` with ``attempts`` (its first attempt admitted) handed
    to the transport that sends its request; a slot the request never reached the transport
    with is given back."""
    admitted = Admitted(gov, attempts)
    token = ADMITTED.set(admitted)
    try:
        return await send(*args, **kwargs)
    except BaseException as exc:
        admitted.unclaimed(exc)
        raise
    finally:
        ADMITTED.reset(token)
        admitted.unclaimed(None)


def attempts_for(
    gov: Governor, route: str, path_model: str | None, body: Mapping[str, Any]
) -> Attempts:
    """The attempt loop of a JSON request to ``route`` not built yet, on the lane the
    transport would put it on (the model in the path, else the body's), so that it can be
    admitted first and hold no request while it queues (see :class:`Admitted`)."""
    body_model = body.get("model")
    model = path_model or (body_model if isinstance(body_model, str) else None)
    # The counts in characters without a frozen TokenEstimate (as facts_of reads them), the
    # call opened positionally from them (Governor.call with a "chars" estimate and its body)
    plain = plain_chat_chars(body)
    if plain is None:
        estimate = estimate_request_chars(body)
        plain = estimate.prompt_tokens, estimate.max_completion_tokens
    return SurfaceAttempts(gov._open(route, model, plain[0], plain[1], None, body))


def _prepare(
    request: Any, flavour: Flavour, options: UsageOptions
) -> tuple[Any, RequestFacts, bool]:
    """(request to send, its facts, whether an added usage chunk must be removed)."""
    facts = read_request(request)
    if options.include_usage and facts.streaming:
        rewritten = with_stream_usage(request, facts, flavour.module)
        if rewritten is not None:
            return rewritten, facts, True
    return request, facts, False


def _start(
    gov: Governor, request: Any, flavour: Flavour, options: UsageOptions
) -> tuple[Any, Attempts, bool]:
    """One logical request begins: the request as it will be sent (with stream usage asked
    for where the options say so), its attempt loop, and whether to strip the usage chunk.
    The loop is the one ``wrap()`` admitted at the SDK method when this is its request (its
    body is then not parsed again, unless usage must be asked for)."""
    at_sdk = ADMITTED.get()
    if at_sdk is not None:
        attempts = at_sdk.claim(gov, request)
        if attempts is not None:
            strip = False
            if options.include_usage:
                request, _, strip = _prepare(request, flavour, options)
            bounded_timeout(request.extensions, gov.retry.attempt_timeout_s)
            return request, attempts, strip
    facts = read_request(request)  # _prepare, inlined: this runs on every request
    strip = False
    if options.include_usage and facts.streaming:
        rewritten = with_stream_usage(request, facts, flavour.module)
        if rewritten is not None:
            request, strip = rewritten, True
    call = gov._open(  # Governor.call from the facts' counts, positionally
        facts.route,
        facts.model,
        facts.prompt,
        facts.completion,
        request.extensions.get(TAG_EXTENSION),
        facts.body,
    )
    if gov.retry.attempt_timeout_s is not None:
        bounded_timeout(request.extensions, gov.retry.attempt_timeout_s)
    return request, SurfaceAttempts(call), strip


async def handle_async(
    gov: Governor,
    inner: Any,
    flavour: Flavour,
    request: Any,
    options: UsageOptions = _DEFAULT_OPTIONS,
) -> Any:
    request, attempts, strip = _start(gov, request, flavour, options)
    lane = attempts.call.lane
    classify = flavour.verdict_for_exception
    # `async for _ in attempts`, without its __aiter__ call: the loop ends only by a return
    # or a raise below (an outcome not retried returns or raises), never by StopAsyncIteration.
    # The first turn is stepped without an await when it needs no wait (Attempts.first_turn).
    admitted = attempts.first_turn() is not None
    while True:
        if not admitted:
            await attempts.__anext__()
        admitted = False
        try:
            response = await inner.handle_async_request(request)
        except BaseException as exc:
            if attempts.raised(exc, classify):
                continue
            raise
        status = response.status_code
        # read once, into a dict: httpx's Headers.get scans the list every time
        headers, read_limits = answer_headers(  # positionally: every request
            response.headers, lane, status, status >= 300 or lane.limits_due(gov.clock())
        )
        # is_event_stream, inlined (as the reads in _after_answer): once per request
        if status < 300 and headers.get("content-type", "").startswith("text/event-stream"):
            return _stream_response(
                attempts,
                flavour,
                request,
                response,
                headers=headers,
                read_limits=read_limits,
                sync=False,
                strip_usage=strip,
                options=options,
            )
        try:
            raw = b"".join([chunk async for chunk in response.stream])
        except BaseException as exc:
            retried = attempts.raised(exc, classify)  # the slot is freed before the close
            await response.stream.aclose()
            if retried:
                continue
            raise
        await response.stream.aclose()
        if not _after_answer(attempts, flavour, response, headers, raw, read_limits, options):
            return response


def handle_sync(
    gov: Governor,
    inner: Any,
    flavour: Flavour,
    request: Any,
    options: UsageOptions = _DEFAULT_OPTIONS,
) -> Any:
    request, attempts, strip = _start(gov, request, flavour, options)
    lane = attempts.call.lane
    classify = flavour.verdict_for_exception
    for _ in attempts:
        try:
            response = inner.handle_request(request)
        except BaseException as exc:  # KeyboardInterrupt: the slot freed, never retried
            if attempts.raised(exc, classify):
                continue
            raise
        status = response.status_code
        # read once, into a dict: httpx's Headers.get scans the list every time
        headers, read_limits = answer_headers(  # positionally: every request
            response.headers, lane, status, status >= 300 or lane.limits_due(gov.clock())
        )
        if status < 300 and is_event_stream(headers):
            return _stream_response(
                attempts,
                flavour,
                request,
                response,
                headers=headers,
                read_limits=read_limits,
                sync=True,
                strip_usage=strip,
                options=options,
            )
        try:
            raw = b"".join(list(response.stream))
        except BaseException as exc:
            retried = attempts.raised(exc, classify)
            response.stream.close()
            if retried:
                continue
            raise
        response.stream.close()
        if not _after_answer(attempts, flavour, response, headers, raw, read_limits, options):
            return response
    raise AssertionError("the attempt loop ended without an outcome")  # pragma: no cover


def _after_answer(  # noqa: PLR0917  # positional: every request
    attempts: Attempts,
    flavour: Flavour,
    response: Any,
    headers: dict[str, str],
    raw: bytes,
    read_limits: bool,
    options: UsageOptions,
) -> bool:
    """Report a complete answer; True: it is retried, else ``response`` (its body read here)
    goes back to the caller."""
    status = response.status_code
    # is_json, request_id and the identity case of Flavour.decode, inlined: the hot path
    expect_json = "json" in headers.get("content-type", "")
    body = None
    if status >= 300 or expect_json:
        encoding = headers.get("content-encoding")
        identity = not encoding or encoding == "identity"
        body = raw if identity else flavour.decode(raw, headers)
    prompt = completion = billed = None
    valid = True
    if status < 300 and expect_json and body is not None:
        prompt, completion, valid, billed = usage_from_json(body, options.cache_reads_count)
    verdict: Verdict = verdict_for_answer(status, headers, body, valid, read_limits)
    decision = attempts._report(  # Attempts.answered without its frame: every request
        verdict,
        prompt,
        completion,
        headers.get("x-request-id") or headers.get("request-id"),
        billed,
        attempts.final,
    )
    if decision.retry:
        return True
    if verdict.kind is OutcomeKind.MALFORMED and decision.error is not None:
        # Handing the unreadable 200 over would make the SDK fail on a bare JSONDecodeError
        # and lose why; the error says what happened and how often it was tried.
        raise decision.error
    # The inner transport's response goes back up with its body, read here, as a byte stream:
    # building a new Response would normalise every header again, on every request.
    module = flavour.module
    try:
        response.stream = _WHOLE_BODIES[module](raw)
    except KeyError:
        response.stream = _whole_body_class(module)(raw)
    call = attempts.call
    record = decision.record or call._made
    if record is not None:
        response.extensions[RECORD_EXTENSION] = record
    else:
        extensions = _RecordExtensions(response.extensions)
        extensions._call = call
        response.extensions = extensions
    return False


class _WholeBody:
    """A body read whole, handed back as the library's ``ByteStream`` (its subclass, made per
    library by :func:`_whole_body_class`: the library and the proxy check for that class)
    whose async iteration is an iterator object, not an async generator.

    The event loop registers every async generator in a weak set when it starts and removes
    it when it is collected (two Python calls and a weak reference), and the client closes
    one it iterated (an ``athrow`` round): a ``ByteStream``'s one chunk cost that on every
    answer. This yields the same one chunk, from each ``__aiter__`` anew, as it does."""

    __slots__ = ()

    _stream: bytes  # ByteStream's

    def __iter__(self) -> Iterator[bytes]:
        return iter((self._stream,))

    def __aiter__(self) -> _OneChunk:
        return _OneChunk(self._stream)


class _OneChunk:
    """One chunk, then the end: an async iterator without a generator (see :class:`_WholeBody`)."""

    __slots__ = ("_chunk", "_given")

    def __init__(self, chunk: bytes) -> None:
        self._chunk = chunk
        self._given = False

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        if self._given:
            raise StopAsyncIteration
        self._given = True
        return self._chunk


_WHOLE_BODIES: dict[Any, Any] = {}


def _whole_body_class(module: Any) -> Any:
    cls = type("WholeBody", (_WholeBody, module.ByteStream), {})
    return _WHOLE_BODIES.setdefault(module, cls)


def _stream_response(
    attempts: Attempts,
    flavour: Flavour,
    request: Any,
    response: Any,
    *,
    headers: dict[str, str],
    read_limits: bool,
    sync: bool,
    strip_usage: bool = False,
    options: UsageOptions = _DEFAULT_OPTIONS,
) -> Any:
    # A stream's rate-limit headers are read as a complete answer's are: at most every 0.1 s
    # of its lane's clock (``Lane.limits_due``), not on every stream of a busy lane.
    ok = verdict_for_answer(response.status_code, headers, None, read_limits=read_limits)
    attempts.streaming(ok.limits)
    # request_id, inlined (as in _after_answer): once per stream
    state = _StreamState(attempts, ok, headers.get("x-request-id") or headers.get("request-id"))
    usage = state.usage
    usage.cache_reads_count = options.cache_reads_count
    if strip_usage and headers.get("content-encoding", "identity") == "identity":
        usage.strip = True
    # Looked up by the library's module, whose hash is C's: a Flavour's (a dataclass's) is
    # a Python call, and functools.cache another.
    try:
        cls = (_SYNC_STREAMS if sync else _ASYNC_STREAMS)[flavour.module]
    except KeyError:
        cls = _sync_stream_class(flavour) if sync else _async_stream_class(flavour)
    # The inner transport's response goes back up with the governed stream, as a complete
    # answer does: a new Response would normalise every header again.
    response.stream = cls(response.stream, state)
    return response


class _StreamState:
    __slots__ = (
        "attempts",
        "done",
        "ended",
        "ok",
        "request_id",
        "usage",
        "watch",
    )

    def __init__(self, attempts: Attempts, ok: Verdict, rid: str | None) -> None:
        self.attempts = attempts
        self.ok = ok
        self.request_id = rid
        # The counts read and, when asked, the added usage chunk removed: one pass a chunk.
        self.usage = UsageScanner()
        self.ended = False
        self.done = False
        # Left when the stream ends: the watch holds the stream, its call and the request's
        # parsed body for as long as it is there (a minute of every stream served).
        self.watch: _IdleWatch | None = None

    def rest(self) -> bytes:
        """At the end of the stream: what the usage chunk's filter still holds (once)."""
        if not self.usage.strip or self.ended:
            return b""
        self.ended = True
        return self.usage.flush()

    def finish(self, error: BaseException | None = None, *, abandoned: bool = False) -> None:
        if self.done:
            return
        self.done = True
        if self.watch is not None:
            self.watch.streams.pop(self, None)
            self.watch = None
        # The stream's outcome, reported to its attempt loop: it ended, broke or was abandoned.
        usage = self.usage
        self.attempts.ended(
            self.ok if error is None and not abandoned else stream_failure(error),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            request_id=self.request_id,
            billed=usage.billed,
        )


class _GovernedAsyncStream:
    """Passes a streamed answer through chunk by chunk; frees the slot when it ends.

    It is an iterator object, not an async generator, on purpose: an abandoned async generator
    is closed by the event loop's finalizer in no particular order with the generators around
    it, and can stay suspended (holding its slot) when one of those closes fails. A plain
    object is simply collected, and ``__del__`` frees the slot.
    """

    def __init__(self, inner: Any, state: _StreamState) -> None:
        self._inner = inner
        self._state = state
        self._chunks: Any = None
        self._reading = False
        self._idle_since = time.monotonic()
        # A caller that walks away without closing may leave the stream in a reference
        # cycle that is never collected; the slot must come back anyway: its loop's watch
        # finishes it once it sat idle this long.
        self._idle_limit_s = limit_s = state.attempts.call.governor.stream_idle_timeout_s
        loop = asyncio.get_running_loop()
        watch = _WATCHES.get(loop)
        if watch is None:
            watch = _WATCHES[loop] = _IdleWatch()
        state.watch = watch
        watch.add(loop, state, self, limit_s)

    def check_idle(self, now: float) -> None:
        """Finish the stream as abandoned when nobody read it for its idle limit."""
        if not self._reading and now - self._idle_since >= self._idle_limit_s:
            self._state.finish(abandoned=True)

    def __aiter__(self) -> _GovernedAsyncStream:
        if self._chunks is None:
            self._chunks = self._inner.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        while True:
            self._reading = True
            try:
                chunk: bytes = await self._chunks.__anext__()
            except StopAsyncIteration:
                rest = self._state.rest()
                if rest:
                    return rest
                raise
            except asyncio.CancelledError:
                self._state.finish(abandoned=True)
                raise
            except Exception as exc:
                self._state.finish(exc)
                raise
            finally:
                self._reading = False
                self._idle_since = time.monotonic()
            passed = self._state.usage.feed(chunk)
            if passed or not chunk:
                return passed

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._state.finish()

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None and not state.done:
            state.finish(abandoned=True)


class _IdleWatch:
    """The unfinished streams of one event loop, looked at by one timer for those nobody
    reads any more (:meth:`_GovernedAsyncStream.check_idle`), every quarter of the shortest
    idle limit seen (at most every second): a timer of each stream's own, made and cancelled,
    cost about twenty calls a stream. It holds each stream until it ends, as that timer did."""

    __slots__ = ("every_s", "streams", "timer")

    def __init__(self) -> None:
        self.streams: dict[_StreamState, _GovernedAsyncStream] = {}
        self.every_s = _WATCH_EVERY_MAX_S
        self.timer: asyncio.TimerHandle | None = None

    def add(
        self,
        loop: asyncio.AbstractEventLoop,
        state: _StreamState,
        stream: _GovernedAsyncStream,
        idle_limit_s: float,
    ) -> None:
        self.streams[state] = stream
        if idle_limit_s < 4.0 * self.every_s:
            self.every_s = max(_WATCH_EVERY_MIN_S, idle_limit_s / 4.0)
        if self.timer is None:
            self.timer = loop.call_later(self.every_s, self._look, loop)

    def _look(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        now = time.monotonic()
        for stream in list(self.streams.values()):
            stream.check_idle(now)  # an abandoned one finishes, and leaves
        if self.streams:
            self.timer = loop.call_later(self.every_s, self._look, loop)

    def __repr__(self) -> str:
        return f"<_IdleWatch streams={len(self.streams)} every={self.every_s:g}s>"


_WATCH_EVERY_MAX_S = 1.0
_WATCH_EVERY_MIN_S = 0.05
_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _IdleWatch] = (
    weakref.WeakKeyDictionary()
)
"""Each event loop's watch (gone with its loop)."""


class _GovernedSyncStream:
    """The blocking twin of :class:`_GovernedAsyncStream`."""

    def __init__(self, inner: Any, state: _StreamState) -> None:
        self._inner = inner
        self._state = state
        self._chunks: Any = None

    def __iter__(self) -> _GovernedSyncStream:
        if self._chunks is None:
            self._chunks = iter(self._inner)
        return self

    def __next__(self) -> bytes:
        while True:
            try:
                chunk: bytes = next(self._chunks)
            except StopIteration:
                rest = self._state.rest()
                if rest:
                    return rest
                raise
            except Exception as exc:
                self._state.finish(exc)
                raise
            passed = self._state.usage.feed(chunk)
            if passed or not chunk:
                return passed

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._state.finish()

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None and not state.done:
            state.finish(abandoned=True)


_ASYNC_STREAMS: dict[Any, Any] = {}
_SYNC_STREAMS: dict[Any, Any] = {}


def _async_stream_class(flavour: Flavour) -> Any:
    # The library checks isinstance(stream, AsyncByteStream) of its own module.
    cls = type("GovernedAsyncStream", (_GovernedAsyncStream, flavour.module.AsyncByteStream), {})
    return _ASYNC_STREAMS.setdefault(flavour.module, cls)


def _sync_stream_class(flavour: Flavour) -> Any:
    cls = type("GovernedSyncStream", (_GovernedSyncStream, flavour.module.SyncByteStream), {})
    return _SYNC_STREAMS.setdefault(flavour.module, cls)


class _GovernedTransport:
    """What the async and sync transports share: the governor, the usage options, the inner
    transport (an unbounded pool unless given) and the cap its pool puts on concurrency."""

    _flavour: Flavour
    _inner_class: str
    """The library's inner transport class: ``AsyncHTTPTransport`` or ``HTTPTransport``."""

    def __init__(
        self,
        governor: Governor | None = None,
        *,
        transport: Any = None,
        include_usage: bool = False,
        provider: str | Provider | None = None,
    ) -> None:
        from pacekeeper.core.governor import Governor

        self.governor = governor if governor is not None else Governor()
        self.usage = usage_options(include_usage=include_usage, provider=provider)
        module = self._flavour.module
        inner_class = getattr(module, self._inner_class)
        self._inner = transport or inner_class(limits=unbounded_pool(module))
        ceiling = pool_size(self._inner)
        if ceiling is not None:
            self.governor.cap_concurrency(ceiling)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} over {type(self._inner).__name__} {self.governor!r}>"


class AsyncGovernedTransport(_GovernedTransport):
    """The library-agnostic body of the async transports; subclasses name the library."""

    _inner_class = "AsyncHTTPTransport"

    def handle_async_request(self, request: Any) -> Coroutine[Any, Any, Any]:
        # The coroutine of handle_async itself, not one awaiting it: the client awaits it
        # all the same, and each request runs (and resumes) one frame fewer.
        return handle_async(self.governor, self._inner, self._flavour, request, self.usage)

    async def aclose(self) -> None:
        await self._inner.aclose()


class SyncGovernedTransport(_GovernedTransport):
    """The library-agnostic body of the sync transports."""

    _inner_class = "HTTPTransport"

    def handle_request(self, request: Any) -> Any:
        return handle_sync(self.governor, self._inner, self._flavour, request, self.usage)

    def close(self) -> None:
        self._inner.close()


def usage_options(*, include_usage: bool, provider: str | Provider | None) -> UsageOptions:
    """The usage options of a transport: ``provider`` says whether cached tokens count."""
    if provider is None:
        return UsageOptions(include_usage=include_usage)
    from pacekeeper.providers import get_provider

    return UsageOptions(
        include_usage=include_usage,
        cache_reads_count=get_provider(provider).cache_reads_count,
    )


def unbounded_pool(module: Any) -> Any:
    """Connection limits that never queue: concurrency is the governor's job, not the pool's
    (a pool that queues turns a burst into PoolTimeouts instead of paced requests)."""
    return module.Limits(max_connections=None, max_keepalive_connections=256)


def pool_size(transport: object) -> int | None:
    """The connection pool's size, when the transport has a bounded httpcore pool."""
    pool = getattr(transport, "_pool", None)
    size = getattr(pool, "_max_connections", None)
    if isinstance(size, int) and size < 1 << 30:
        return size
    return None
