"""Run every audit and heartbeat test vector in tests/vectors/audit/ (docs/PROTOCOL.md §11):
the code writes the same bytes, and verifies or refuses each object as its file says."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from wonders.audit import AuditError, parse_batch, parse_head, parse_intent, verify_log
from wonders.crypto import PrivateKey
from wonders.mailbox import DirectoryStore
from wonders.relay.records import parse_heartbeat

VECTORS_DIR = Path(__file__).parent.parent / "vectors"
VECTORS = sorted((VECTORS_DIR / "audit").glob("*.json"))
SINGLE = [p for p in VECTORS if not p.stem.startswith("chain")]
CHAINS = [p for p in VECTORS if p.stem.startswith("chain")]

#: What a verifier's message says for each kind of problem a chain vector names.
PROBLEM_WORDS = {
    "missing": "missing (deleted)",
    "broken": "the chain is broken",
    "replaced": "(replaced)",
    "inserted": "(inserted",
    "moved": "(moved",
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_audit",
                                                  VECTORS_DIR / "generate_audit.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _signer(doc: dict[str, Any]) -> PrivateKey:
    key = doc["signer"]
    return PrivateKey.from_raw(key["name"], bytes.fromhex(key["ed25519"]),
                               bytes.fromhex(key["x25519"]))


def _parse(doc: dict[str, Any]) -> dict[str, Any]:
    """The members of the object in ``doc`` once verified; AuditError (or, for a heartbeat,
    ValueError) if it is refused."""
    signer = _signer(doc).public
    data = base64.b64decode(doc["object"])
    kind = doc["kind"]
    if kind == "batch":
        batch = parse_batch(doc["key"], data, signer)
        return {"key": batch.key, "forwarder": batch.forwarder, "kid": batch.kid,
                "seq": batch.seq, "prev": batch.prev, "time": batch.time,
                "records": len(batch.records), "hash": batch.hash, "lines": batch.records}
    if kind == "head":
        return dataclasses.asdict(parse_head(data, signer))
    if kind == "intent":
        return {"wonders_intent": 1, **dataclasses.asdict(parse_intent(data, signer))}
    assert kind == "heartbeat"
    beat = parse_heartbeat(data, signer)
    if beat is None:
        raise ValueError("not a heartbeat of this signer")
    return {"v": 2, **dataclasses.asdict(beat)}


def test_the_vectors_are_what_the_generator_writes_today(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regenerated from the code, every file comes out byte for byte as committed: a format
    change shows up here (and then in the document, which quotes the vectors)."""
    generator = _generator()
    monkeypatch.setattr(generator, "HERE", tmp_path)
    generator.main()
    made = sorted(tmp_path.glob("*.json"))
    assert [p.name for p in made] == [p.name for p in VECTORS]
    for path in made:
        assert path.read_bytes() == (VECTORS_DIR / "audit" / path.name).read_bytes(), path.name


def test_there_are_vectors_of_every_object_and_outcome() -> None:
    docs = [json.loads(p.read_text()) for p in VECTORS]
    seen = {(d["kind"], d["expect"]) for d in docs}
    assert {(kind, expect) for kind in ("batch", "head", "intent", "heartbeat", "chain")
            for expect in ("success", "failure")} <= seen
    kinds = {p["kind"] for d in docs if d["kind"] == "chain" for p in d["problems"]}
    assert kinds == set(PROBLEM_WORDS)


@pytest.mark.parametrize("path", SINGLE, ids=[p.stem for p in SINGLE])
def test_object_vector(path: Path) -> None:
    doc = json.loads(path.read_text())
    if doc["expect"] == "success":
        assert _parse(doc) == doc["result"], doc["description"]
        return
    assert doc["expect"] == "failure"
    with pytest.raises((AuditError, ValueError)) as info:
        _parse(doc)
    if doc["kind"] != "heartbeat":  # a heartbeat reader says only "not a heartbeat"
        assert isinstance(info.value, AuditError)
        says_signature = "signature does not verify" in str(info.value)
        assert says_signature == (doc["reason"] == "signature"), (doc["description"],
                                                                  str(info.value))


@pytest.mark.parametrize("path", CHAINS, ids=[p.stem for p in CHAINS])
async def test_chain_vector(path: Path, tmp_path: Path) -> None:
    doc = json.loads(path.read_text())
    store = DirectoryStore(tmp_path)
    for key, data in doc["objects"].items():
        await store.put(key, base64.b64decode(data))
    result = await verify_log(store, _signer(doc).public, clock=lambda: doc["now"])
    found = []
    for problem in result.problems:
        kinds = [kind for kind, words in PROBLEM_WORDS.items() if words in problem.problem]
        assert len(kinds) == 1, str(problem)
        found.append({"key": problem.key, "kind": kinds[0]})
    key = lambda p: (p["key"], p["kind"])  # noqa: E731
    assert sorted(found, key=key) == sorted(doc["problems"], key=key), doc["description"]
    assert (doc["expect"] == "success") == (not doc["problems"])
    assert result.batches == sum(1 for k in doc["objects"] if k.endswith(".jsonl"))


def test_the_protocol_documents_the_vectors_and_domain_strings_of_the_code() -> None:
    """The examples in docs/PROTOCOL.md §8 are the vectors' objects, and every domain
    string the forwarder key signs under is the one the document names."""
    from wonders.audit import _log as audit
    from wonders.relay import records

    text = (Path(__file__).parent.parent.parent / "docs" / "PROTOCOL.md").read_text()
    examples = re.findall(r"<!-- tests/vectors/(audit/[\w-]+\.json) -->\n```text\n(.*?)```",
                          text, re.DOTALL)
    assert {name for name, _ in examples} == {"audit/batch.json", "audit/head.json",
                                              "audit/heartbeat.json"}
    for name, shown in examples:
        stored = base64.b64decode(json.loads((VECTORS_DIR / name).read_text())["object"])
        assert shown.rstrip("\n") == stored.decode().rstrip("\n"), name
    domains = [records.HEARTBEAT_DOMAIN, audit._SIGNATURE_DOMAIN, audit._HEAD_DOMAIN,
               audit._INTENT_DOMAIN]
    for domain in domains:
        written = domain.decode().replace("\x00", "\\0").replace("\n", "\\n")
        assert f'"{written}"' in text, written
