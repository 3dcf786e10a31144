"""The request body of SPEC section 4, a pure function of the FD: no I/O, no clock, no state.

Built once, when the FD is journaled, and stored with it; a delivery sends the stored bytes as
they are (only the headers, Idempotency-Key and the fence among them, are made per request).
Rows journaled before the body was stored have none: theirs is built here at delivery.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from kktd.kkt.tlv import BODY_FIELDS

# what json.dumps(..., ensure_ascii=False) would build anew for every FD: the same bytes
_JSON = json.JSONEncoder(ensure_ascii=False)


def body_fields(fn: str, fd: int, raw: bytes, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object: the decoded fields, the FD's identity and its raw TLV.

    Only SPEC's fields are sent: what else the journal keeps (a decode error) is for the
    operator, and the identity and the raw bytes come from the journal row itself.
    """
    body: dict[str, Any] = {"fn": fn, "fd": fd}
    body.update((k, fields[k]) for k in BODY_FIELDS if k in fields)
    body["tlv"] = base64.b64encode(raw).decode("ascii")
    return body


def encode_body(fn: str, fd: int, raw: bytes, fields: Mapping[str, Any]) -> bytes:
    """The bytes of the POST: `body_fields` as UTF-8 JSON."""
    return _JSON.encode(body_fields(fn, fd, raw, fields)).encode("utf-8")
