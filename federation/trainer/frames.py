"""The frames of the warm trainer's channel, as both ends write them.

One frame is::

    4 bytes   big-endian length H of the header (H ≤ 64 KiB)
    H bytes   the header: a UTF-8 JSON object ({"op": …, "call": n, …} or a reply)
    8 bytes   big-endian length P of the payload (0 when there is none)
    P bytes   the payload: a safetensors file (the weights), never a pickle

This module has no imports beyond the standard library: it runs inside the sandbox (as part
of ``agora_fl``) and in the node. The node reads replies with its own reader, which checks
each length against its caps before reading what follows (:mod:`federation.warm_process`);
:func:`read` here serves the sandboxed side, which reads what the node sent.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

HEADER_MAX_BYTES = 64 * 1024
HEADER_LENGTH = struct.Struct(">I")
PAYLOAD_LENGTH = struct.Struct(">Q")


class ChannelClosed(Exception):
    """The other end closed the channel (cleanly, between frames)."""


class BadFrame(Exception):
    """What arrived is not a frame of this format (the message says how)."""


def pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """The bytes of one frame."""
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(text) > HEADER_MAX_BYTES:
        raise BadFrame(f"a header of {len(text)} bytes is over the limit of {HEADER_MAX_BYTES}")
    return HEADER_LENGTH.pack(len(text)) + text + PAYLOAD_LENGTH.pack(len(payload)) + payload


MAX_HEADER_DEPTH = 32


def _nesting(raw: bytes) -> int:
    """How deep ``raw``'s brackets nest (outside strings): checked before a parser recurses,
    so the bound does not depend on the interpreter's recursion limit."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_header(raw: bytes) -> dict[str, Any]:
    """The JSON object a header holds; :class:`BadFrame` for anything else."""
    if _nesting(raw) > MAX_HEADER_DEPTH:
        raise BadFrame(f"the header is not UTF-8 JSON of at most {MAX_HEADER_DEPTH} levels")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadFrame("the header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise BadFrame("the header is not a JSON object")
    return header


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to a blocking descriptor."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int, *, at_start: bool = False) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            if at_start and left == size:
                raise ChannelClosed()
            raise BadFrame("the channel ended inside a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read(fd: int, *, max_payload: int) -> tuple[dict[str, Any], bytes]:
    """One frame from a blocking descriptor (the sandboxed side's reader)."""
    (header_size,) = HEADER_LENGTH.unpack(_read_exactly(fd, HEADER_LENGTH.size, at_start=True))
    if header_size > HEADER_MAX_BYTES:
        raise BadFrame(f"a header of {header_size} bytes is over the limit of {HEADER_MAX_BYTES}")
    header = parse_header(_read_exactly(fd, header_size))
    (payload_size,) = PAYLOAD_LENGTH.unpack(_read_exactly(fd, PAYLOAD_LENGTH.size))
    if payload_size > max_payload:
        raise BadFrame(f"a payload of {payload_size} bytes is over the limit of {max_payload}")
    return header, _read_exactly(fd, payload_size)
