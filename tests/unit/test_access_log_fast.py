"""The access log's fast path (logs.py): the f-string JSON equals json.dumps, lines bypass the
logging machinery only while our handler is alone, batches reach the file in order, and a
moved file is reopened."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from steelyard import logs
from steelyard.core.records import RequestRecord
from steelyard.logs import AccessLog, _millis, access_log, format_json, record_fields

texts = st.text(max_size=40)
ints = st.integers(min_value=0, max_value=2**62)


def make(
    path: str = "/x", method: str | None = "GET", status: int | None = 200, n: int = 0
) -> RequestRecord:
    rec = RequestRecord("web", "127.0.0.1:1234", 1764168860.5 + n)
    rec.method = method
    rec.path = path if method is not None else None
    rec.status = status if method is not None else None
    rec.backend = "app"
    rec.server = "s1"
    rec.bytes_in = 10
    rec.bytes_out = 20
    rec.duration = 0.0125
    rec.request_id = f"id-{n}" if method is not None else None
    return rec


@given(
    listener=texts,
    client=texts,
    method=st.none() | texts,
    path=st.none() | texts,
    status=st.none() | st.integers(min_value=0, max_value=999),
    backend=st.none() | texts,
    server=st.none() | texts,
    bytes_in=ints,
    bytes_out=ints,
    duration=st.floats(min_value=0, max_value=1e13, allow_nan=False),
    retries=st.integers(min_value=0, max_value=100),
    rid=st.none() | texts,
    when=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_format_json_is_json_dumps(  # type: ignore[no-untyped-def]
    listener, client, method, path, status, backend, server, bytes_in, bytes_out, duration,
    retries, rid, when,
) -> None:  # fmt: skip
    rec = RequestRecord(listener, client, when)
    rec.method = method
    rec.path = path
    rec.status = status
    rec.backend = backend
    rec.server = server
    rec.bytes_in = bytes_in
    rec.bytes_out = bytes_out
    rec.duration = duration
    rec.retries = retries
    rec.request_id = rid
    line = format_json(rec)
    assert line == json.dumps(record_fields(rec), separators=(",", ":"))
    assert "\n" not in line


@given(
    st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0, max_value=10)
    | st.integers(min_value=0, max_value=10**9).map(lambda n: n / 1e6 + 5e-7)
)
def test_millis_is_repr_of_round(duration: float) -> None:
    assert _millis(duration) == repr(round(duration * 1000, 3))


def test_millis_edges() -> None:
    for d in (0.0, -0.0, 1e-20, 5e-7, 1.5e-6, 2.5e-6, 0.001, 1.0, 1e12, 1e13, -1.5e-3, 1e300,
              35184372089.30469, 999999999.9999, 1e9, -35184372089.30469):  # fmt: skip
        assert _millis(d) == repr(round(d * 1000, 3)), d


def test_format_json_duration_edges() -> None:
    """Durations past 1e12 ms (31 years) leave the fast ".3f" path, as _millis does: there it
    can print digits that json.dumps (the float's repr) would not, e.g. 90111230084361.281
    against 90111230084361.28."""
    for d in (0.0, 5e-7, 1.5e-6, 2.5e-6, 999999999.9999, 1e9, 1e12 / 1000, 90111230084.36128,
              195579736613.40272, 348578992891.8542, 1e13, 1e300):  # fmt: skip
        rec = make()
        rec.duration = d
        assert format_json(rec) == json.dumps(record_fields(rec), separators=(",", ":")), d


def test_repeated_strings_cache_stays_bounded_and_exact() -> None:
    for n in range(logs._JSON_MAX + 50):
        rec = make(n=n)
        rec.client = f"10.0.{n % 251}.{n}:{n}"
        rec.server = None if n % 3 else f's"{n % 7}'
        assert format_json(rec) == json.dumps(record_fields(rec), separators=(",", ":"))
    assert len(logs._JSON) <= logs._JSON_MAX
    assert logs._JSON[None] == "null"


def test_int_duration_renders_as_json_does() -> None:
    rec = make()
    rec.duration = 0  # type: ignore[assignment]
    assert format_json(rec) == json.dumps(record_fields(rec), separators=(",", ":"))


def test_int_subclasses_render_as_json_does() -> None:
    rec = make()
    rec.retries = True  # type: ignore[assignment]
    assert format_json(rec) == json.dumps(record_fields(rec), separators=(",", ":"))
    # compiled (mypyc), the int attribute stores True as 1: then there is no bool to render
    assert f'"retries":{"true" if rec.retries is True else "1"}' in format_json(rec)


def test_fast_path_skips_logging_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    others = list(access_log.handlers)  # pytest attaches its capture handler to the logger
    for h in others:
        access_log.removeHandler(h)
    log = AccessLog(str(path))
    seen: list[logging.LogRecord] = []
    orig = access_log.handle
    access_log.handle = seen.append  # type: ignore[method-assign]
    try:
        for i in range(1000):
            log(make(n=i))
    finally:
        access_log.handle = orig  # type: ignore[method-assign]
        log.close()
        for h in others:
            access_log.addHandler(h)
    assert seen == []  # no LogRecord was made: the fast path
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["request_id"] for x in lines] == [f"id-{i}" for i in range(1000)]
    assert log.lines == 1000 and 1 <= log.batches < 1000  # batched writes


def test_a_handler_added_later_sees_every_line_and_so_does_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(str(path))
    log(make(n=0))  # fast path
    got: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record.getMessage())

    handler = Collect()
    access_log.addHandler(handler)
    try:
        log(make(n=1))
        log(make(n=2))
    finally:
        access_log.removeHandler(handler)
    log(make(n=3))  # alone again: fast path
    log.close()
    assert [json.loads(x)["request_id"] for x in got] == ["id-1", "id-2"]
    ids = [json.loads(x)["request_id"] for x in path.read_text().splitlines()]
    assert ids == ["id-0", "id-1", "id-2", "id-3"]


def test_a_filter_on_the_logger_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(str(path))

    def no_health(record: logging.LogRecord) -> bool:
        return "/health" not in record.getMessage()

    access_log.addFilter(no_health)
    try:
        log(make(path="/health"))
        log(make(path="/app"))
    finally:
        access_log.removeFilter(no_health)
        log.close()
    assert [json.loads(x)["path"] for x in path.read_text().splitlines()] == ["/app"]


def test_level_above_info_silences_it(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(str(path))
    access_log.setLevel(logging.WARNING)
    try:
        log(make())
    finally:
        access_log.setLevel(logging.INFO)
        log.close()
    assert path.read_text() == ""
    assert log.lines == 0


def test_moved_file_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(str(path))
    log(make(n=0))
    # wait until the writer wrote the first batch (bounded)
    for _ in range(200):
        if path.read_text():
            break
        import time

        time.sleep(0.01)
    path.rename(tmp_path / "a.log.1")  # logrotate without copytruncate
    log(make(n=1))
    log.close()
    old = [json.loads(x)["request_id"] for x in (tmp_path / "a.log.1").read_text().splitlines()]
    new = [json.loads(x)["request_id"] for x in path.read_text().splitlines()]
    assert (old, new) == (["id-0"], ["id-1"])


def test_close_writes_everything_and_repr(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(str(path), "text")
    for i in range(50):
        log(make(n=i, method=None))
    log.close()
    assert len(path.read_text().splitlines()) == 50
    assert "lines=50" in repr(log) and "enabled=False" in repr(log)
    log(make())  # after close: ignored
    assert log.lines == 50
