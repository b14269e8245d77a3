"""`proxy-core schema`: the AsyncAPI 3.0 document and the JSON Schema describe the real wire.

- The AsyncAPI document validates against the official AsyncAPI 3.0.0 JSON
  Schema (``@asyncapi/specs``, fetched into .venv by
  ``scripts/fetch_asyncapi_spec.py``; missing, the test fails in CI and skips
  elsewhere), and broken copies of it do not.
- What the real json codec and handshake encoder write, for generated instances
  of every registered type and frame kind, validates against the JSON Schema
  and against the AsyncAPI payload schemas; malformed frames do not.
- The committed ``docs/asyncapi.yaml`` is what the command writes (drift test),
  and the YAML writer's output reads back as the same data.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_core.cli import main
from proxy_core.codecs.json import JsonCodec
from proxy_core.errors import CodecError, HandshakeError
from proxy_core.messages import (
    DEFAULT_TYPES,
    BusDataMessage,
    BusLocalMessage,
    BusMessage,
    Frame,
    TextFrame,
    TypeRegistry,
)
from proxy_core.protocol import (
    FEATURES,
    Ack,
    Bye,
    CloseCode,
    Hello,
    Kind,
    Msg,
    Ping,
    Pong,
    Ready,
    Reject,
    RejectCode,
    Welcome,
    decode_handshake,
    encode_handshake,
)
from proxy_core.schema import asyncapi_document, close_codes, json_schema, to_yaml
from proxy_core.schema.command import HEADER

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
REGENERATE = "proxy-core schema --output docs/asyncapi.yaml"
INT64 = st.integers(-(2**63), 2**63 - 1)
SAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- types of our own


@dataclass
class Station:
    """A weather station."""

    name: str
    position: tuple[float, float]


@dataclass
class Weather(BusMessage):
    """Weather somewhere, with a field of each kind of annotation."""

    station: Station | None = None
    readings: list[float] = field(default_factory=list)
    raw: bytes = b""
    units: Literal["metric", "imperial"] = "metric"
    counts: dict[str, int] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    anything: Any = None


@dataclass
class PressureFrame(Frame):
    """A frame of our own."""

    hectopascal: float


@dataclass
class Secret(BusLocalMessage, BusMessage):
    """A local message of our own."""

    note: str = ""


def builtins() -> TypeRegistry:
    """A registry of the types proxy_core.messages registers, and no other."""
    registry = TypeRegistry()
    for tag in DEFAULT_TYPES.tags():
        cls = DEFAULT_TYPES.type_of(tag)
        if cls is not None and cls.__module__ == "proxy_core.messages":
            registry.register(cls, tag)
    return registry


#: The built-in types and ours, in a registry of the tests' own.
PRIVATE = builtins()
PRIVATE.register(Station, "tests.schema.station")
PRIVATE.register(Weather, "tests.schema.weather")
PRIVATE.register(PressureFrame, "tests.schema.pressure_frame")
PRIVATE.register(Secret, "tests.schema.secret")
PRIVATE_TYPES = [cls for tag in PRIVATE.tags() if (cls := PRIVATE.type_of(tag)) is not None]


# ---------------------------------------------------------------- instances from annotations

texts = st.text(max_size=12)
keys = st.one_of(texts, st.sampled_from(["$type", "$bytes", "$dict", "$tuple", "$ref"]))
scalars = st.one_of(
    st.none(), st.booleans(), INT64, st.floats(allow_nan=False, allow_infinity=False), texts
)


def _values(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=3),
        st.binary(max_size=8),
        st.builds(TextFrame, texts),
    )


values = st.recursive(scalars | st.binary(max_size=8), _values, max_leaves=8)


def for_hint(hint: Any) -> st.SearchStrategy[Any]:
    """Any well-typed value for a field annotated ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {bool: st.booleans(), int: INT64, str: texts, bytes: st.binary(max_size=8)}
    if hint is Any:
        return values
    if hint is type(None):
        return st.none()
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if hint in simple:
        return simple[hint]
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(for_hint(a) for a in args))
    if origin is list:
        return st.lists(for_hint(args[0]), max_size=3)
    if origin is tuple and args[-1] is Ellipsis:
        return st.lists(for_hint(args[0]), max_size=3).map(tuple)
    if origin is tuple:
        return st.tuples(*(for_hint(a) for a in args))
    if origin is dict:
        return st.dictionaries(keys, for_hint(args[1]), max_size=3)
    members = [c for c in PRIVATE_TYPES if issubclass(c, hint)]
    return st.one_of(*(instances_of(c) for c in members))


def instances_of(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Any instance of registered ``cls``, each field drawn from its annotation."""
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: st.deferred(lambda h=hints[f.name]: for_hint(h)) for f in dataclasses.fields(cls)
    }
    return st.builds(cls, **fields)


def is_local(cls: type[Any]) -> bool:
    return issubclass(cls, BusLocalMessage)


def carried(obj: Any) -> Msg:
    """A MSG that carries ``obj``: itself if it is a message, else in a bus.data map."""
    if isinstance(obj, BusMessage):
        return Msg(1, obj)
    return Msg(1, BusDataMessage("acme", None, {"x": obj}))


nonces = st.integers(0, 2**53 - 1)
single_frames = st.one_of(
    st.builds(Msg, st.integers(1, 2**53 - 1), st.one_of(*(
        instances_of(c) for c in PRIVATE_TYPES if issubclass(c, BusMessage) and not is_local(c)
    ))),
    st.builds(Ack, st.integers(0, 2**53 - 1)),
    st.builds(Ready, texts),
    st.builds(Ping, nonces),
    st.builds(Pong, nonces),
    st.builds(Bye, st.integers(1000, 4999), texts),
)  # fmt: skip
handshakes = st.one_of(
    st.builds(
        Hello,
        codecs=st.lists(texts, max_size=3).map(tuple),
        client_worker=texts,
        server_worker=texts,
        max_message_bytes=st.integers(1024, 2**40),
        features=st.lists(st.sampled_from(FEATURES) | texts, max_size=3).map(tuple),
        resume_session_id=st.none() | texts,
        resume_received=st.integers(0, 2**40),
    ),
    st.builds(
        Welcome,
        codec=texts,
        session_id=texts,
        ready=st.lists(texts, max_size=2).map(tuple),
        max_message_bytes=st.integers(1024, 2**40),
        features=st.lists(texts, max_size=2).map(tuple),
        resumed=st.booleans(),
        received=st.integers(0, 2**40),
    ),
    st.builds(Reject, st.sampled_from([int(c) for c in RejectCode]), texts),
)


# ---------------------------------------------------------------- validators

SCHEMA = json_schema(PRIVATE)
CODEC = JsonCodec(PRIVATE)


def validator(schema: dict[str, Any], name: str | None = None) -> jsonschema.Draft202012Validator:
    """A validator of the whole document, or of its definition ``name``."""
    if name is not None:
        schema = {**schema, "oneOf": [{"$ref": f"#/$defs/{name}"}]}
    return jsonschema.Draft202012Validator(schema)


WIRE = validator(SCHEMA)
DOCUMENT = asyncapi_document(PRIVATE)
#: The AsyncAPI payload schemas (draft-07 based), for any transport message.
PAYLOADS = jsonschema.Draft7Validator(
    {
        "anyOf": [
            {"$ref": f"#/components/schemas/{name}"}
            for name in ("Hello", "Welcome", "Reject", "SessionFrame")
        ],
        "components": DOCUMENT["components"],
    }
)


def def_name(tag: str | None) -> str:
    """The name of the definition of the type registered under ``tag``."""
    [name] = [
        name
        for name, node in SCHEMA["$defs"].items()
        if node.get("properties", {}).get("$type") == {"const": tag}
    ]
    return name


def on_the_wire(data: bytes) -> Any:
    return json.loads(data)


def assert_valid(tree: Any) -> None:
    WIRE.validate(tree)
    PAYLOADS.validate(tree)


# ---------------------------------------------------------------- the command


def test_asyncapi_json_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["asyncapi"] == "3.0.0"
    messages = document["components"]["messages"]
    assert [m["name"] for m in messages.values()] == [
        "HELLO", "WELCOME", "REJECT", *(k.name for k in Kind),
    ]  # fmt: skip
    codes = {c["code"]: c["name"] for c in document["channels"]["session"]["x-close-codes"]}
    assert codes == {int(c): c.name for c in (*CloseCode, *RejectCode)}


def test_jsonschema_format_describes_every_registered_type(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema", "--format", "jsonschema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator.check_schema(json_schema(TypeRegistry()))  # no type at all
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = schema["$defs"]
    tags = {
        d["properties"]["$type"]["const"]
        for d in defs.values()
        if "$type" in d.get("properties", {})
    }
    assert tags == set(DEFAULT_TYPES.tags())
    assert {d["title"] for d in defs.values() if d.get("type") == "array"} == {k.name for k in Kind}


@pytest.mark.parametrize(
    ("options", "name", "syntax"),
    [
        ([], "out.yaml", "yaml"),
        ([], "out.yml", "yaml"),
        ([], "out.json", "json"),
        (["--json"], "out.yaml", "json"),
        (["--yaml"], "out.txt", "yaml"),
    ],
)
def test_output_file_and_syntax(tmp_path: Path, options: list[str], name: str, syntax: str) -> None:
    path = tmp_path / name
    assert main(["schema", "--output", str(path), *options]) == 0
    text = path.read_text(encoding="utf-8")
    document = yaml.safe_load(text) if syntax == "yaml" else json.loads(text)
    assert document["asyncapi"] == "3.0.0"
    assert text.startswith("# Generated") == (syntax == "yaml")


def test_yaml_to_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--format", "jsonschema", "--yaml"]) == 0
    assert "$defs" in yaml.safe_load(capsys.readouterr().out)


TYPES_MODULE = '''
from __future__ import annotations

from dataclasses import dataclass

from proxy_core import BusMessage, register_type


@register_type("tests.schema_cli.forecast")
@dataclass
class Forecast(BusMessage):
    """Tomorrow's weather."""

    city: str = ""
    celsius: float = 0.0
'''


def test_types_imports_a_users_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "proxy_core_schema_probe.py").write_text(TYPES_MODULE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # found from the current directory, as a user runs it
    assert main(["schema", "--format", "jsonschema", "--types", "proxy_core_schema_probe"]) == 0
    schema = json.loads(capsys.readouterr().out)
    forecast = schema["$defs"]["Forecast"]
    assert forecast["properties"]["$type"] == {"const": "tests.schema_cli.forecast"}
    assert forecast["properties"]["celsius"] == {"type": "number", "default": 0.0}
    cls = DEFAULT_TYPES.type_of("tests.schema_cli.forecast")
    assert cls is not None
    tree = on_the_wire(JsonCodec().encode(Msg(1, cls("acme", "assistant", "Oslo", 3.5))))
    validator(schema).validate(tree)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, "ModuleNotFoundError: No module named 'proxy_core_no_such_module'"),
        ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_a_module_that_does_not_import_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    source: str | None,
    expected: str,
) -> None:
    if source is not None:
        (tmp_path / "proxy_core_no_such_module.py").write_text(source, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "proxy_core_no_such_module", raising=False)
    assert main(["schema", "--types", "proxy_core_no_such_module"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("proxy-core: error: --types proxy_core_no_such_module:")
    assert expected in captured.err


def test_an_unwritable_output_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "--output", str(tmp_path / "missing" / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err


def test_the_schema_module_needs_no_yaml_or_jsonschema() -> None:
    code = (
        "import sys\n"
        "from proxy_core.schema import asyncapi_document, to_yaml\n"
        "to_yaml(asyncapi_document())\n"
        "assert not {'yaml', 'jsonschema'} & set(sys.modules), 'a runtime dependency'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- the official AsyncAPI schema


def _fetcher() -> ModuleType:
    path = ROOT / "scripts" / "fetch_asyncapi_spec.py"
    spec = importlib.util.spec_from_file_location("proxy_core_fetch_asyncapi_spec", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def asyncapi_validator() -> jsonschema.Draft7Validator:
    """A validator of the official AsyncAPI 3.0.0 schema, as ``scripts/dev.py`` fetched it."""
    fetcher = _fetcher()
    path = fetcher.cached_path(Path(sys.prefix))
    if not fetcher.is_intact(path):
        reason = (
            f"the official AsyncAPI 3.0.0 schema ({fetcher.PACKAGE} {fetcher.VERSION}) is not "
            f"at {path}: run `python scripts/fetch_asyncapi_spec.py --prefix {sys.prefix}`"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)  # a skipped check is no check
        pytest.skip(reason)
    spec = json.loads(path.read_bytes())
    # One bundled file: every definition carries its own $id (http://asyncapi.com/...),
    # which the validator's registry resolves inside the file; nothing is fetched.
    jsonschema.Draft7Validator.check_schema(spec)
    return jsonschema.Draft7Validator(spec)


def test_the_document_validates_against_the_official_schema(
    asyncapi_validator: jsonschema.Draft7Validator,
) -> None:
    committed = yaml.safe_load(COMMITTED.read_text("utf-8"))
    for document in (asyncapi_document(), DOCUMENT, committed, asyncapi_document(TypeRegistry())):
        errors = [
            f"{list(e.absolute_path)}: {e.message}"
            for e in asyncapi_validator.iter_errors(document)
        ]
        assert errors == []


def _broken(change: str) -> dict[str, Any]:
    document = json.loads(json.dumps(DOCUMENT))
    if change == "no version":
        del document["info"]["version"]
    elif change == "version 2 action":
        document["operations"]["sendFrame"]["action"] = "publish"
    elif change == "bad payload schema":
        document["components"]["schemas"]["Hello"]["type"] = "nonsense"
    elif change == "bad nested schema":
        document["components"]["schemas"]["MsgFrame"]["items"][1]["minimum"] = "one"
    elif change == "bad binding":
        document["channels"]["session"]["bindings"]["ws"]["method"] = "PUT"
    elif change == "unknown field":
        document["channels"]["session"]["topic"] = "session"
    return document


@pytest.mark.parametrize(
    "change",
    [
        "no version",
        "version 2 action",
        "bad payload schema",
        "bad nested schema",
        "bad binding",
        "unknown field",
    ],
)
def test_a_broken_document_does_not_validate(
    asyncapi_validator: jsonschema.Draft7Validator, change: str
) -> None:
    assert list(asyncapi_validator.iter_errors(_broken(change)))


def test_the_fetcher_refuses_what_was_not_pinned(tmp_path: Path) -> None:
    fetcher = _fetcher()
    with pytest.raises(ValueError, match="sha512"):
        fetcher._check_integrity(b"not the tarball")
    junk = tmp_path / "3.0.0.json"
    junk.write_text("{}", encoding="utf-8")
    assert not fetcher.is_intact(junk)
    assert not fetcher.is_intact(tmp_path / "absent.json")


# ---------------------------------------------------------------- the real encodings validate


@pytest.mark.parametrize("cls", PRIVATE_TYPES, ids=lambda cls: PRIVATE.tag_of(cls))
@SAMPLES
@given(data=st.data())
def test_every_registered_type_validates_as_encoded(cls: type[Any], data: st.DataObject) -> None:
    obj = data.draw(instances_of(cls))
    tree = on_the_wire(CODEC.encode(carried(obj)))
    if is_local(cls):
        # A local message never crosses, so no MSG carries it; its own definition holds.
        validator(SCHEMA, def_name(PRIVATE.tag_of(cls))).validate(tree[2])
        with pytest.raises(jsonschema.ValidationError):
            WIRE.validate(tree)
    else:
        assert_valid(tree)


@SAMPLES
@given(frames=st.lists(single_frames, min_size=1, max_size=4))
def test_every_frame_kind_validates_as_encoded(frames: list[Any]) -> None:
    encoded = [CODEC.encode(frame) for frame in frames]
    for data in encoded:
        assert_valid(on_the_wire(data))
    if len(encoded) > 1:
        assert_valid(on_the_wire(CODEC.encode_batch(encoded)))


@SAMPLES
@given(frame=handshakes)
def test_every_handshake_object_validates_as_encoded(frame: Any) -> None:
    assert_valid(on_the_wire(encode_handshake(frame)))


#: Frames the json decoder refuses as malformed or of an unknown type.
UNDECODABLE = [
    [1, 1, {"$type": "bus.nosuch", "source": "a", "target": None}],
    [1, 1, {"$type": "bus.message", "source": "a", "target": None, "extra": 1}],
    [1, 1, {"$type": "bus.frame", "source": "a", "target": "b"}],  # no frame
    [1, 1, {"$type": "bus.message", "source": 3, "target": None}],
    [1, 1, {"$type": "bus.data", "source": "a", "target": None, "data": {"$x": 1}}],
    [1, 1, {"$type": "bus.data", "source": "a", "target": None, "data": {"x": {"$bytes": "@@"}}}],
    [1, 1, {"$type": "bus.data", "source": "a", "target": None, "data": {"$dict": [["k"]]}}],
    [2, True],
    [2, 1, 2],
    [3],
    [8, 1],
    [7, [7, [2, 1], [4, 1]]],
    [6, "1000", "bye"],
]
#: Handshake objects the handshake decoder refuses.
BAD_HANDSHAKES = [
    {"protocol": "proxy-core", "type": "hello", "version": 1, "codecs": "json"},
    {"protocol": "proxy-core", "type": "welcome", "version": 1, "codec": "json"},
    {"protocol": "other", "type": "reject", "code": 4001, "reason": "x"},
]
#: Frames that decode but break a rule of the protocol that a later step checks.
AGAINST_THE_RULES = [
    [1, 0, {"$type": "bus.message", "source": "a", "target": None}],  # a MSG number below 1
    [1, 1, {"$type": "bus.ready", "source": "a", "target": None, "worker": "", "remote": False}],
    {"protocol": "proxy-core", "type": "reject", "code": 4999, "reason": "x"},
]


@pytest.mark.parametrize(
    "tree",
    UNDECODABLE + BAD_HANDSHAKES + AGAINST_THE_RULES,
    ids=range(len(UNDECODABLE + BAD_HANDSHAKES + AGAINST_THE_RULES)),
)
def test_malformed_frames_do_not_validate(tree: Any) -> None:
    assert not WIRE.is_valid(tree)
    assert not PAYLOADS.is_valid(tree)


@pytest.mark.parametrize("tree", UNDECODABLE, ids=range(len(UNDECODABLE)))
def test_the_decoder_refuses_them_too(tree: Any) -> None:
    with pytest.raises(CodecError):
        decoded = CODEC.decode(json.dumps(tree).encode())
        for item in getattr(decoded, "items", ()):  # a BATCH keeps its bad frames as errors
            if isinstance(item, CodecError):
                raise item


@pytest.mark.parametrize("tree", BAD_HANDSHAKES, ids=range(len(BAD_HANDSHAKES)))
def test_the_handshake_decoder_refuses_them_too(tree: Any) -> None:
    with pytest.raises(HandshakeError):
        decode_handshake(json.dumps(tree).encode())


def test_what_json_schema_cannot_tell() -> None:
    # JSON Schema sees 1.0 as the integer 1; the decoder refuses it (the schema's
    # description says integers have no fraction).
    assert WIRE.is_valid([2, 1.0])
    with pytest.raises(CodecError):
        CODEC.decode(b"[2,1.0]")
    assert "no fraction" in SCHEMA["description"]


def test_the_examples_in_the_document_validate() -> None:
    for message in DOCUMENT["components"]["messages"].values():
        [example] = message["examples"]
        assert_valid(example["payload"])


def test_close_codes_are_those_of_docs_protocol_md() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    table = text.split("### Close codes", 1)[1].split("\n## ", 1)[0]
    for entry in close_codes():
        assert f"| {entry['code']} | `{entry['name']}` |" in text, entry
    assert "| 4000–4004 | `RejectCode` |" in table


# ---------------------------------------------------------------- the committed document


def test_docs_asyncapi_yaml_is_what_the_command_writes() -> None:
    # In a process of its own: the test run registers message types of its own.
    result = subprocess.run(
        [sys.executable, "-m", "proxy_core.cli", "schema", "--yaml"],
        cwd=ROOT / "docs",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    committed = COMMITTED.read_text(encoding="utf-8")
    diff = "".join(
        list(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                result.stdout.splitlines(keepends=True),
                "docs/asyncapi.yaml",
                "proxy-core schema --yaml",
            )
        )[:60]
    )
    assert result.stdout == committed, (
        f"docs/asyncapi.yaml drifted from the code; regenerate it with `{REGENERATE}`\n{diff}"
    )
    assert yaml.safe_load(committed) == asyncapi_document(builtins())


# ---------------------------------------------------------------- the YAML writer

json_keys = st.one_of(
    st.text(max_size=10), st.sampled_from(["yes", "No", "null", "~", "1", "-", "? x", "a: b", "#"])
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.sampled_from(["", " x", "x ", "a\nb", "a\nb\n", "\n", "true", "1e5", "0x1f", "- a", "'q'"]),
)
json_like = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(data=json_like)
def test_yaml_reads_back_as_the_same_data(data: Any) -> None:
    assert yaml.safe_load(to_yaml(data)) == data


def test_yaml_is_deterministic_and_readable() -> None:
    text = to_yaml(DOCUMENT, header=HEADER)
    assert text == to_yaml(json.loads(json.dumps(DOCUMENT)), header=HEADER)
    assert text.startswith("# Generated from the code by `proxy-core schema`")
    assert "\n  title: proxy-core session protocol\n" in text  # plain where it can be
    assert '\n        $ref: "#/components/messages/hello"\n' in text
    assert "    description: |-\n      One connection" in text  # multi-line text as a block


@pytest.mark.parametrize("value", [float("nan"), float("inf"), b"x", {1: "x"}, {"k" * 2000: 1}])
def test_yaml_refuses_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        to_yaml({"v": value})
