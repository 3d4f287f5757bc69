"""The FastAPI + SQLModel example of docs/sqlalchemy.md ("Web APIs"), run as it is written."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ccvault import Vault

DOCS = Path(__file__).parents[1] / "docs" / "sqlalchemy.md"
MARKER = "<!-- tested: web-api-example -->"

pytest.importorskip("fastapi")
pytest.importorskip("sqlmodel")
pytest.importorskip("httpx")
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


def _example() -> str:
    """The fenced python block right after the marker."""
    text = DOCS.read_text()
    assert text.count(MARKER) == 1, f"docs/sqlalchemy.md needs exactly one {MARKER}"
    found = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.DOTALL)
    assert found is not None, "the marker must be followed by a ```python block"
    return found.group(1)


@pytest.fixture(scope="module")
def example() -> Iterator[types.ModuleType]:
    """The docs' block as a module of its own (SQLModel's metadata is global: once a session)."""
    module = types.ModuleType("docs_web_api_example")
    sys.modules[module.__name__] = module
    exec(compile(_example(), f"{DOCS}:web-api-example", "exec"), module.__dict__)
    yield module
    del sys.modules[module.__name__]


def test_the_docs_list_endpoint_answers_200_with_a_shredded_customer(
    example: types.ModuleType, svault: Vault, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient
    from sqlmodel import Session, SQLModel

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'web.db'}")
    SQLModel.metadata.create_all(engine, tables=[example.Customer.__table__])
    svault.attach(engine)
    with Session(engine) as s:
        ada = example.Customer(name="Ada", phone="+44 20 7946 0018")
        bob = example.Customer(name="Bob", phone="020 7946 0019")
        s.add(ada)
        s.add(bob)
        s.commit()
        ada_id, bob_id = str(ada.id), str(bob.id)
    client = TestClient(example.create_app(engine))
    before = client.get("/customers")
    assert before.status_code == 200
    svault.shred(bob_id)
    after = client.get("/customers")
    assert after.status_code == 200
    assert sorted(after.json(), key=lambda c: c["name"]) == [
        {"id": ada_id, "name": "Ada", "phone": "+44 20 7946 0018"},
        {"id": bob_id, "name": "[shredded]", "phone": "[shredded]"},
    ]
    engine.dispose()


def test_the_docs_render_what_the_sentinels_render() -> None:
    text = DOCS.read_text()
    from ccvault.sqlalchemy import SHREDDED, UNREADABLE

    for sentinel in (SHREDDED, UNREADABLE):
        assert f'| `{sentinel!r}` | `"{sentinel}"` | `{sentinel!r}` | `False` |' in text
