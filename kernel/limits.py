"""Bounds on untrusted documents, checked before anything recursive or costly reads them.

JSON and YAML parsers recurse once per level of nesting, and this process runs with a
recursion limit raised far above what its C stack holds (py_ecc sets 100,000 on import):
a request of 100,000 nested ``[`` would overflow the stack and kill the node. Numbers cost
too: ``int()`` of a 100,000-digit literal is quadratic and ``1e999999`` becomes ``inf``,
which no canonical JSON, database column or signature accepts. So every document from
outside is first scanned without recursion — a regular expression walks its tokens once,
counting depth outside strings, the longest string and number literal and the tokens in
all — and refused with :class:`InvalidInput` naming the bound it broke; only then does a
parser see it.

:func:`bound_recursion` puts the interpreter's limit back where the embedded EVM needs it
(12,288 frames), so that a recursive parser reached by some other path fails with a
``RecursionError`` instead of a crash.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, replace
from typing import Any

from kernel.errors import InvalidInput

RECURSION_LIMIT = 12 * 1024  # what py-evm asks for: 1024 EVM call frames


@dataclass(frozen=True)
class JsonLimits:
    """The most a JSON document may hold; the defaults fit every message this node reads."""

    max_depth: int = 64
    max_string: int = 1024 * 1024  # bytes of one string literal as sent (escapes included)
    max_number: int = 100  # characters of one number literal (a uint256 has 78 digits)
    max_tokens: int = 100_000  # strings, numbers, literals and brackets

    def with_max_string(self, max_string: int) -> JsonLimits:
        return replace(self, max_string=max_string)


@dataclass(frozen=True)
class YamlLimits:
    """The most a YAML document (manifest, policy, job spec) may hold."""

    max_depth: int = 64
    max_events: int = 100_000  # scalars, collection starts and ends, aliases
    max_aliases: int = 100
    max_nodes: int = 50_000  # nodes once aliases are expanded (a billion laughs has 10^9)


JSON = JsonLimits()
YAML = YamlLimits()

# One token per match: a complete string, a bracket, a number, a literal, or a lone quote
# (an unterminated string: nothing after it is outside a string).
_TOKEN = re.compile(
    rb'(?=["\[\]{}\-0-9tfnNI])'  # first-character test: skips whitespace and separators in C
    rb'(?:"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]|[\]}]|-?[0-9][0-9.eE+\-]*|true|false|null|NaN|-?Infinity|")',
    re.S,
)
_FLOAT_MARK = re.compile(rb"[.eE]")
# \u0000 and UTF-16 surrogates: legal JSON escapes that no database text column, UTF-8
# encoder or signature over canonical JSON accepts
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def _refuse(what: str, why: str) -> InvalidInput:
    return InvalidInput(f"{what} is refused: {why}")


def check_json(raw: bytes | str, limits: JsonLimits = JSON, *, what: str = "the JSON document") -> None:
    """Raise :class:`InvalidInput` when ``raw`` breaks ``limits`` or is not UTF-8.

    Syntax is left to the parser: valid JSON tokenises here exactly as it parses, and for
    invalid JSON these counts still bound what the parser meets before it gives up.
    """
    if isinstance(raw, str):
        data = raw.encode("utf-8", "surrogatepass")
    else:
        data = bytes(raw)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _refuse(what, f"it is not UTF-8 (byte {exc.start})") from None
    if b"\x00" in data:  # no JSON text holds one; UTF-16 and UTF-32 text does
        raise _refuse(what, "it holds a NUL byte (JSON is sent as UTF-8)")
    depth = 0
    for tokens, match in enumerate(_TOKEN.finditer(data), start=1):
        token = match.group()
        first = token[0]
        if tokens > limits.max_tokens:
            raise _refuse(what, f"it has more than {limits.max_tokens} tokens")
        if first == 0x22:  # "
            length = len(token) - 2 if len(token) > 1 else len(data) - match.start()
            if length > limits.max_string:
                raise _refuse(what, f"a string is longer than {limits.max_string} bytes")
            if len(token) == 1:
                return  # unterminated: the parser stops there
            if b"\\u" in token:
                _check_escapes(token, what)
        elif first in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limits.max_depth:
                raise _refuse(what, f"it nests deeper than {limits.max_depth} levels")
        elif first in (0x5D, 0x7D):  # ] }
            depth -= 1
        elif first == 0x4E or token.endswith(b"Infinity"):  # NaN, Infinity: not JSON
            raise _refuse(what, f"{token.decode()} is not a JSON number")
        elif first == 0x2D or 0x30 <= first <= 0x39:
            _check_number(token, limits, what)


def _check_number(token: bytes, limits: JsonLimits, what: str) -> None:
    if len(token) > limits.max_number:
        raise _refuse(what, f"a number has more than {limits.max_number} characters")
    if _FLOAT_MARK.search(token):
        try:
            value = float(token)
        except ValueError:
            return  # not a number the parser accepts either
        if value in (float("inf"), float("-inf")):
            raise _refuse(what, f"the number {token.decode()} is out of range")


def _check_escapes(token: bytes, what: str) -> None:
    if not _RISKY_ESCAPE.search(token):
        return
    try:
        text = json.loads(token)
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(what, "a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)") from None
    except ValueError:
        return  # malformed: the parser refuses it
    if "\x00" in text:
        raise _refuse(what, "a string holds the character U+0000")


def loads(raw: bytes | str, limits: JsonLimits = JSON, *, what: str = "the JSON document") -> Any:
    """``json.loads`` after :func:`check_json`; malformed JSON is :class:`InvalidInput`."""
    check_json(raw, limits, what=what)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}") from None


def check_yaml(text: str, limits: YamlLimits = YAML, *, what: str = "the document") -> None:
    """Raise :class:`InvalidInput` when ``text`` nests too deep, has too many events or
    aliases, or expands (through aliases) to too many nodes.

    Reads the parser's event stream, which is flat: nothing recursive runs and no alias is
    expanded; an anchor's size is counted once when it closes and added at each alias.
    Syntax errors are left to the loader, which reports them with their line.
    """
    import yaml  # only documents that are YAML pay for the import (the CLI starts without it)

    depth = events = aliases = nodes = 0
    sizes: dict[str, int] = {}
    open_anchors: list[tuple[str | None, int]] = []  # (anchor, nodes before the collection)
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            events += 1
            if events > limits.max_events:
                raise _refuse(what, f"it has more than {limits.max_events} YAML events")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > limits.max_depth:
                    raise _refuse(what, f"it nests deeper than {limits.max_depth} levels")
                open_anchors.append((event.anchor, nodes))
                nodes += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                anchor, before = open_anchors.pop()
                if anchor is not None:
                    sizes[anchor] = nodes - before
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > limits.max_aliases:
                    raise _refuse(what, f"it uses more than {limits.max_aliases} YAML aliases")
                nodes += sizes.get(str(event.anchor), 1)
            if nodes > limits.max_nodes:
                raise _refuse(what, f"it expands to more than {limits.max_nodes} nodes (YAML aliases?)")
    except yaml.YAMLError:
        return


def bound_recursion(limit: int = RECURSION_LIMIT) -> None:
    """Lower the interpreter's recursion limit to ``limit`` (never raise it): deep enough
    for the embedded EVM, shallow enough that a recursive parser stops before the C stack
    does."""
    if sys.getrecursionlimit() > limit:
        sys.setrecursionlimit(limit)
