"""Wire formats of streamed tokens (issue 18), for :meth:`servingbench.contract.Adapter.stream_tokens`.

Each parser takes the response body's chunks as they arrive (any split: a chunk may hold part of a line or several
lines) and yields token ids as soon as a complete record holds them.

* :func:`ndjson_tokens`: newline-delimited JSON, one ``{"token": <id>}`` (or ``{"tokens": [<id>, ...]}``) per
  line: what servingbench's own servers send.
* :func:`sse_tokens`: server-sent events, ``data: <json>`` lines ended by a blank line (the HTML living standard's
  event-stream format); the JSON is found by ``extract`` (default: the ``token``/``tokens`` keys above).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from servingbench.contract.types import RequestSpec


def json_stream_request(path: str, prompt: Iterable[int], max_tokens: int, headers: Mapping[str, str] | None = None,
                        port: str = "http") -> RequestSpec:
    """``POST path`` with ``{"inputs": [[token ids]], "max_tokens": n}``: the streaming request of servingbench's
    own servers (FastAPI baseline, LitServe, ...); ``headers`` adds e.g. the auth header."""
    body = json.dumps({"inputs": [[int(t) for t in prompt]], "max_tokens": int(max_tokens)}).encode()
    return RequestSpec("POST", path, body, {"Content-Type": "application/json", **(headers or {})}, port=port)


def tokens_of(record: Any) -> list[int]:
    """Token ids of one decoded record: ``{"token": id}``, ``{"tokens": [...]}``, a bare int or list of ints."""
    if isinstance(record, dict):
        if "token" in record:
            return [int(record["token"])]
        if "tokens" in record:
            return [int(t) for t in record["tokens"]]
        raise ValueError(f"a streamed record without 'token' or 'tokens': {str(record)[:200]}")
    if isinstance(record, list):
        return [int(t) for t in record]
    return [int(record)]


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    buf = b""
    for chunk in chunks:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.rstrip(b"\r")
    if buf.strip():
        yield buf


def ndjson_tokens(chunks: Iterable[bytes], extract: Callable[[Any], list[int]] = tokens_of) -> Iterator[int]:
    """Token ids from newline-delimited JSON records."""
    for line in _lines(chunks):
        if line.strip():
            yield from extract(json.loads(line))


def sse_tokens(chunks: Iterable[bytes], extract: Callable[[Any], list[int]] = tokens_of) -> Iterator[int]:
    """Token ids from a server-sent event stream: each event's ``data:`` lines (joined by newlines) are one JSON
    record; comments (``:``), ``event:``/``id:``/``retry:`` fields are skipped; ``data: [DONE]`` ends the stream."""
    data: list[bytes] = []
    for line in _lines(chunks):
        if not line:  # end of an event
            if data:
                payload = b"\n".join(data)
                data = []
                if payload.strip() == b"[DONE]":
                    return
                yield from extract(json.loads(payload))
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)  # one leading space is the separator
    if data and b"\n".join(data).strip() != b"[DONE]":
        yield from extract(json.loads(b"\n".join(data)))
