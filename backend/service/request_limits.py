"""Request bodies parsed with bounded cost: size, nesting depth and container count.

The size limit (``MAX_REQUEST_BYTES``) is Flask's ``MAX_CONTENT_LENGTH``: a body whose
``Content-Length`` is too large is refused with 413 before a byte of it is read, and a chunked
body is cut off at the limit. What is left is checked here *before* :func:`json.loads` runs:

* ``MAX_JSON_DEPTH``: the C parser recurses once per nesting level, so ``[`` x 100,000 would
  raise ``RecursionError`` (a 500) or, with a raised recursion limit, crash the process; and every
  later consumer (``jsonify``, ``json.dumps`` into the annotation store, ``copy.deepcopy``)
  recurses again.
* ``MAX_JSON_CONTAINERS``: parsing multiplies memory; an empty ``[]``/``{}`` costs 56-64 bytes
  for 2-3 bytes of body, so 20 MB of ``[],[],...`` would take ~450 MB. One million containers
  (~64 MB) is far above what a real Label Studio payload holds (a polygon point ``[x, y]`` is
  ~40 bytes of body, a brush RLE one array per region).

:func:`json_shape` finds both in one pass over the raw bytes, vectorised in 256 KiB chunks (a few
MB of temporary memory): brackets inside strings are skipped by tracking unescaped
quotes, and a quote is escaped when an odd run of backslashes precedes it. Bytes after a syntax
error may be miscounted, but ``json.loads`` stops at that error before reaching them, so the
bound holds for everything it parses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .webhooks import PayloadError

CHUNK_BYTES = 256 * 1024
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_CLOSE = np.zeros(256, np.int8)
_CLOSE[[ord("]"), ord("}")]] = 1


@dataclass(frozen=True)
class JsonShape:
    """How deep a JSON text nests and how many arrays/objects it opens (strings excluded)."""

    depth: int
    containers: int


def json_shape(data: bytes, *, stop_depth: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> JsonShape:
    """Maximum nesting depth and number of ``[``/``{`` outside strings of a JSON text.

    Linear time, memory bounded by ``chunk_bytes``; stops early once ``stop_depth`` is exceeded.
    """
    depth = max_depth = containers = 0
    in_string = False
    backslash_run = 0  # length of the run of backslashes that ends the previous chunk
    view = memoryview(data)
    for start in range(0, len(data), chunk_bytes):
        chunk = np.frombuffer(view[start : start + chunk_bytes], np.uint8)
        n = chunk.size
        index = np.arange(n, dtype=np.int32)
        is_backslash = chunk == _BACKSLASH
        # last index <= i that is not a backslash (the run before the chunk counts as negative indexes)
        last_other = np.maximum.accumulate(np.where(is_backslash, -1 - backslash_run, index))
        run_ending_here = np.where(is_backslash, index - last_other, 0)  # backslashes ending at i
        previous_run = np.empty(n, np.int32)
        previous_run[0] = backslash_run
        previous_run[1:] = run_ending_here[:-1]
        quotes = (chunk == _QUOTE) & (previous_run % 2 == 0)
        # inside a string *before* byte i: parity of the unescaped quotes before it
        quotes_before = np.cumsum(quotes, dtype=np.int32) - quotes
        outside = (quotes_before + in_string) % 2 == 0
        opens = _OPEN[chunk].astype(bool) & outside
        closes = _CLOSE[chunk].astype(bool) & outside
        steps = opens.astype(np.int32) - closes.astype(np.int32)
        levels = np.cumsum(steps, dtype=np.int32) + depth
        if n:
            max_depth = max(max_depth, int(levels.max()))
            depth = int(levels[-1])
        containers += int(opens.sum())
        in_string = bool((in_string + int(quotes.sum())) % 2)
        backslash_run = int(run_ending_here[-1]) if n else backslash_run
        if stop_depth is not None and max_depth > stop_depth:
            break
    return JsonShape(max_depth, containers)


def parse_json_body(data: bytes, *, max_depth: int, max_containers: int) -> Any:
    """``json.loads`` of a request body, refusing with :class:`PayloadError` (400) anything whose
    parsing would cost more than the limits allow, and anything that is not UTF-8 JSON."""
    if not data.strip():
        raise PayloadError("request body is empty: expected a JSON object")
    shape = json_shape(data, stop_depth=max_depth)  # on the bytes: UTF-8 never hides an ASCII byte
    if shape.depth > max_depth:
        raise PayloadError(f"request body nests JSON arrays/objects more than MAX_JSON_DEPTH={max_depth} levels deep")
    if shape.containers > max_containers:
        raise PayloadError(
            f"request body holds {shape.containers} JSON arrays/objects, more than MAX_JSON_CONTAINERS={max_containers}"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PayloadError(f"request body is not UTF-8 text (byte {error.start}): send JSON encoded as UTF-8") from None
    try:
        return json.loads(text)
    except RecursionError:  # only if MAX_JSON_DEPTH is set above the interpreter's recursion limit
        raise PayloadError(f"request body nests JSON too deeply to parse (MAX_JSON_DEPTH={max_depth})") from None
    except ValueError as error:  # JSONDecodeError, and int() of more than 4300 digits
        raise PayloadError(f"request body must be a JSON object, but it is not valid JSON: {error}") from None
