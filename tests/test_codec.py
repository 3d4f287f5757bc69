"""Plaintext serialisation of column values: frozen vectors (docs/format.md, section 6)."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ccvault.sqlalchemy._codec import CodecError, codec_for

VECTORS = json.loads((Path(__file__).parent / "vectors" / "codec_v1.json").read_text())


class Tier(enum.Enum):
    BASIC = "basic"
    GOLD = "gold"


TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "String": sa.String(32),
    "LargeBinary": sa.LargeBinary(),
    "Integer": sa.Integer(),
    "BigInteger": sa.BigInteger(),
    "Numeric": sa.Numeric(38, 10),
    "Float": sa.Float(),
    "Boolean": sa.Boolean(),
    "Date": sa.Date(),
    "Time": sa.Time(),
    "DateTime": sa.DateTime(),
    "DateTime(timezone=True)": sa.DateTime(timezone=True),
    "Enum": sa.Enum(Tier),
    "Uuid": sa.Uuid(),
    "JSON": sa.JSON(),
}


def _value(spec: dict[str, Any]) -> Any:
    ((kind, raw),) = spec.items()
    return {
        "str": lambda r: r,
        "hex": bytes.fromhex,
        "int": int,
        "decimal": decimal.Decimal,
        "float": float,
        "bool": lambda r: r,
        "date": dt.date.fromisoformat,
        "time": dt.time.fromisoformat,
        "datetime": dt.datetime.fromisoformat,
        "enum": lambda r: Tier[r],
        "uuid": uuid.UUID,
        "json": lambda r: r,
    }[kind](raw)


@pytest.mark.parametrize("vec", VECTORS, ids=[f"{v['type']}-{v['encoded'][:10]}" for v in VECTORS])
def test_codec_vectors(vec: dict[str, Any]) -> None:
    codec = codec_for(TYPES[vec["type"]])
    assert codec.name == vec["codec"]
    value = _value(vec["value"])
    assert codec.dumps(value).hex() == vec["encoded"]
    back = codec.loads(bytes.fromhex(vec["encoded"]))
    assert back == value
    if isinstance(value, dt.datetime | dt.time):
        assert back.utcoffset() == value.utcoffset()  # the offset is kept exactly


def test_a_value_never_reads_back_as_another_type() -> None:
    as_int = codec_for(sa.Integer()).dumps(5)
    with pytest.raises(CodecError):
        codec_for(sa.String(5)).loads(as_int)
    with pytest.raises(CodecError):
        codec_for(sa.Boolean()).loads(b"\x05\x02")
