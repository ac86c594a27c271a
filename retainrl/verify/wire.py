"""The channel between the trusted judge and the program process: framing and tagged literals.

Messages are length-prefixed JSON objects (4-byte big-endian length, at most MAX_MESSAGE bytes,
ASCII JSON). A request carries "op"; a reply does not. Either side may, while waiting for the
reply to its own request, receive and serve requests from the other side (the program calling
back a function the tests passed to it), so `Channel.request` is re-entrant.

Values travel as tagged literals. JSON scalars are themselves (None, bool, str, float incl.
NaN/Infinity, int within +-2**62); everything else is a JSON list whose first element is a tag:

    ["I", hex]                 int outside +-2**62 (hex: no int-to-str digit limit, linear)
    ["l"|"t"|"s"|"fs", ...]    list, tuple, set, frozenset
    ["d", k1, v1, k2, v2, ...] dict; "C" Counter, "OD" OrderedDict, "dd" defaultdict
    ["dq", maxlen, ...]        deque
    ["b"|"ba", latin-1 str]    bytes, bytearray
    ["c", re, im]              complex
    ["r", start, stop, step]   range;  ["sl", a, b, c] slice;  ["E"] Ellipsis
    ["D", str]                 Decimal; ["F", num, den] Fraction
    ["date", y, m, d]; ["dt", y, m, d, H, M, S, us, utcoffset_s|None, fold];
    ["tm", H, M, S, us, utcoffset_s|None, fold]; ["td", days, seconds, us]
    ["nt", name, [fields], ...] a namedtuple; ["kv", "keys"|"values"|"items", ...] dict views
    ["M", string, [[group, start, end], ...], {name: index}]   a re.Match (read-only data)
    ["h", id, kind, type name] a program object (kind "f" callable, "o" other)
    ["g", id]                  a program iterator (generator, map, ...): iterated in batches
    ["T", id]                  a trusted object (a function or object of the tests), by reference
    ["B", name]                a builtin class (int, str, ...), by name
    ["mod", name]              a module (only in the reply that binds the tests' names)

This module only frames and checks shapes; each side builds its own objects from the tags
(judge.py on the trusted side, program.py in the program process).
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import json
import os
import select
import struct
import time

HEADER = struct.Struct("!I")
MAX_MESSAGE = 32 * 2**20   # bytes per message; a larger header means a broken or hostile peer
SMALL_INT = 2**62
MAX_HEX_DIGITS = 200_000   # an int of up to 800,000 bits
MAX_DEPTH = 200            # nesting of tagged values

_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode
_loads = json.JSONDecoder().decode


class ChannelClosed(Exception):
    """The peer closed the channel (the program process exited or was killed)."""


class Malformed(Exception):
    """The peer sent something that is not a well-formed message or value."""


class Deadline(BaseException):
    """The job's wall-clock limit passed. BaseException: test code's `except Exception` must
    not swallow it."""


def encode_message(obj: dict) -> bytes:
    data = _dumps(obj).encode("ascii")
    if len(data) > MAX_MESSAGE:
        raise Malformed(f"message of {len(data)} bytes over the {MAX_MESSAGE}-byte limit")
    return HEADER.pack(len(data)) + data


class Channel:
    """One end of a stream socket (or pipe pair) carrying messages, with an optional deadline
    (time.monotonic() value) on every read. `serve(msg) -> reply dict` answers the peer's
    requests that arrive while this side waits for a reply."""

    def __init__(self, rfd: int, wfd: int | None = None, deadline: float | None = None, serve=None):
        self.rfd, self.wfd = rfd, rfd if wfd is None else wfd
        self.deadline, self.serve = deadline, serve
        self._buf = bytearray()

    # -- framing ---------------------------------------------------------------------------
    def send(self, obj: dict) -> None:
        data = memoryview(encode_message(obj))
        while data:
            try:
                data = data[os.write(self.wfd, data):]
            except BrokenPipeError:
                raise ChannelClosed("peer closed the channel") from None
            except ConnectionResetError:
                raise ChannelClosed("peer reset the channel") from None

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise Deadline()
                ready, _, _ = select.select([self.rfd], [], [], left)
                if not ready:
                    raise Deadline()
            try:
                chunk = os.read(self.rfd, max(65536, n - len(self._buf)))
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ChannelClosed("peer closed the channel")
            self._buf += chunk

    def recv(self) -> dict:
        self._fill(HEADER.size)
        (n,) = HEADER.unpack_from(self._buf)
        if n > MAX_MESSAGE:
            raise Malformed(f"message header announces {n} bytes")
        self._fill(HEADER.size + n)
        body = bytes(self._buf[HEADER.size:HEADER.size + n])
        del self._buf[:HEADER.size + n]
        try:
            msg = _loads(body.decode("ascii"))
        except (ValueError, RecursionError, MemoryError) as e:  # includes the int digit limit
            raise Malformed(f"undecodable message: {type(e).__name__}") from None
        if type(msg) is not dict:
            raise Malformed("a message must be a JSON object")
        return msg

    # -- request / reply -------------------------------------------------------------------
    def request(self, obj: dict) -> dict:
        """Send a request and return its reply, serving the peer's requests meanwhile."""
        self.send(obj)
        while True:
            msg = self.recv()
            if "op" not in msg:
                return msg
            if self.serve is None:
                raise Malformed("unexpected request from the peer")
            self.send(self.serve(msg))


# ------------------------------------------------------------------------------ shape checks
def check_int(x, lo: int = 0, hi: int = 2**31) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise Malformed(f"expected an int in [{lo}, {hi}], got {type(x).__name__}")
    return x


def check_str(x, limit: int = MAX_MESSAGE) -> str:
    if type(x) is not str or len(x) > limit:
        raise Malformed(f"expected a str of at most {limit} characters")
    return x


def big_int(hexstr) -> int:
    """An int from its ["I", hex] form, bounded before conversion."""
    check_str(hexstr, MAX_HEX_DIGITS + 1)
    try:
        return int(hexstr, 16)
    except ValueError:
        raise Malformed("bad hex int") from None


def int_tag(x: int):
    return x if -SMALL_INT < x < SMALL_INT else ["I", hex(x)]


def pairs(e, tag: str, mapping, d: int) -> list:
    """[tag, k1, v1, k2, v2, ...] with keys and values encoded by `e`."""
    out = [tag]
    for k, v in mapping.items():
        out.append(e(k, d))
        out.append(e(v, d))
    return out


def enc_plain(e, x, t, d: int):
    """The tagged form of a plain-data container or value type (both sides encode these alike),
    or None for anything else. `e(value, depth)` encodes the items; `t` is type(x)."""
    if t is list:
        return ["l", *[e(v, d) for v in x]]
    if t is tuple:
        return ["t", *[e(v, d) for v in x]]
    if t is dict:
        return pairs(e, "d", x, d)
    if t is set:
        return ["s", *[e(v, d) for v in x]]
    if t is frozenset:
        return ["fs", *[e(v, d) for v in x]]
    if t is bytes:
        return ["b", x.decode("latin-1")]
    if t is bytearray:
        return ["ba", x.decode("latin-1")]
    if t is complex:
        return ["c", x.real, x.imag]
    if t is range:
        return ["r", e(x.start, d), e(x.stop, d), e(x.step, d)]
    if t is slice:
        return ["sl", e(x.start, d), e(x.stop, d), e(x.step, d)]
    if x is Ellipsis:
        return ["E"]
    if t is decimal.Decimal:
        return ["D", str(x)]
    if t is fractions.Fraction:
        return ["F", e(x.numerator, d), e(x.denominator, d)]
    if t is datetime.datetime:
        off = x.utcoffset()
        return ["dt", x.year, x.month, x.day, x.hour, x.minute, x.second, x.microsecond,
                None if off is None else off.total_seconds(), x.fold]
    if t is datetime.date:
        return ["date", x.year, x.month, x.day]
    if t is datetime.time:
        off = x.utcoffset()
        return ["tm", x.hour, x.minute, x.second, x.microsecond, None if off is None else off.total_seconds(), x.fold]
    if t is datetime.timedelta:
        return ["td", x.days, x.seconds, x.microseconds]
    if t is collections.Counter:
        return pairs(e, "C", x, d)
    if t is collections.OrderedDict:
        return pairs(e, "OD", x, d)
    if t is collections.defaultdict:
        return pairs(e, "dd", x, d)
    if t is collections.deque:
        return ["dq", x.maxlen, *[e(v, d) for v in x]]
    return None
