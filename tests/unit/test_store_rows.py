"""A life's row: addresses made once from raw bytes, times floored to the microsecond, caches bounded."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tracer import store as store_package
from tracer.core.record import AF_INET, AF_INET6
from tracer.core.states import TcpState as S
from tracer.store import normalise_addr, query, rows
from tracer.store.schema import OPEN, WRITTEN, bucket
from tracer.store.sqlite import SqliteStore

from lives import OFFSET_NS, SERVER_CLOSE, life, raw_addr, read


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


@pytest.mark.parametrize("family, raw, stored, text", [
    (AF_INET, raw_addr("10.0.0.1", AF_INET), "10.0.0.1", None),
    (AF_INET, raw_addr("0.0.0.0", AF_INET), "0.0.0.0", None),
    (AF_INET6, v6("2001:db8:0::1"), "2001:db8::1", None),  # the short form
    (AF_INET6, v6("::ffff:10.0.0.1"), "10.0.0.1", "::ffff:10.0.0.1"),  # indexed as IPv4, shown as it was
    (AF_INET6, v6("::1"), "::1", None),
    (AF_INET6, v6("::10.0.0.1"), "::10.0.0.1", None),  # IPv4-compatible is not IPv4-mapped
])
def test_an_address_is_stored_as_the_addr_filter_compares_it(family, raw, stored, text):
    got = rows.stored_addr(family, raw)
    assert got == (stored, bucket(stored), text)
    shown = text or stored
    assert normalise_addr(shown) == stored, "the API's filter finds what was stored"


def test_no_address_is_parsed_on_the_way_in_or_out(tmp_path: Path, monkeypatch):
    """Writing, reading and finding a peer turn raw bytes into text once and never back."""
    def refuse(*_):
        raise AssertionError("an address was parsed")

    client = life(1, start=50.0, lport=40001, rport=8080)
    server = life(2, start=50.0001, states=SERVER_CLOSE, laddr="::ffff:127.0.0.1", lport=8080,
                  raddr="::ffff:127.0.0.1", rport=40001, role="passive", port=8080, family="ipv6")
    monkeypatch.setattr(socket, "inet_pton", refuse)  # what parse_addr, and so normalise_addr, rest on
    monkeypatch.setattr(store_package, "parse_addr", refuse)
    monkeypatch.setattr(query, "normalise_addr", refuse)
    monkeypatch.setattr(rows, "_addrs", {})
    store = SqliteStore(tmp_path / "t.db", 3600, 1 << 30)
    store.write([client, server], OFFSET_NS)
    assert [store.get(1), store.get(2)] == [read(client), read(server)]
    assert store.peer(store.get(1)) == read(server) and store.peer(store.get(2)) == read(client)
    assert store.query(port=8080).total == 2
    store.close()
    with pytest.raises(AssertionError, match="parsed"):
        normalise_addr("10.0.0.1")  # the API's filter alone parses


# Each case: each span's monotonic since_ns, end_ns, the offset -> started, the spans
# (state, µs after started, µs after started or null), ended.
@pytest.mark.parametrize("since, end, offset, started, spans, ended", [
    ((1_000, 2_999), 3_000, 0, 1e-6, [["ESTABLISHED", 0, 1], ["CLOSE_WAIT", 1, 2]], 3e-6),
    ((1_000, 2_999), None, 0, 1e-6, [["ESTABLISHED", 0, 1], ["CLOSE_WAIT", 1, None]], None),
    ((999, 1_999), 2_999, 1, 1e-6, [["ESTABLISHED", 0, 1], ["CLOSE_WAIT", 1, 2]], 3e-6),  # offset first, then floor
    ((0,), 999, 0, 0.0, [["ESTABLISHED", 0, 0]], 0.0),  # less than a microsecond long
    ((5_000 * 10**9,), None, 1_700_000_000 * 10**9 - 5_000 * 10**9, 1_700_000_000.0, [["ESTABLISHED", 0, None]],
     None),
])
def test_times_are_floored_to_the_microsecond_after_the_offset(since, end, offset, started, spans, ended):
    states = (S.ESTABLISHED.value, S.CLOSE_WAIT.value)[:len(since)]
    history = tuple(x for state, t in zip(states, since) for x in (state, t))
    raw = (1, 0, AF_INET, raw_addr("10.0.0.1", AF_INET), 1, raw_addr("10.0.0.2", AF_INET), 2, 1, 2, 0,
           bytes(16), history, end, 0, ())
    row = dict(zip(WRITTEN, rows.row(raw, offset)))
    assert (row["started"], row["ended"], row["open"]) == (started, ended, 1 if end is None else 0)
    assert json.loads(row["spans"]) == spans
    assert row["states"] == sum(1 << state for state in states)
    assert row["second"] == int(started)


def test_a_row_has_every_written_column_and_the_kernels_unknowns_as_null():
    raw = life(1, pid=None, comm=None, netns=None, role="unknown", port=0)
    row = dict(zip(WRITTEN, rows.row(raw, OFFSET_NS)))
    assert len(rows.row(raw, OFFSET_NS)) == len(WRITTEN) and WRITTEN[OPEN] == "open"
    assert (row["pid"], row["comm"], row["netns"], row["role"], row["service_port"]) == (None, None, None, "unknown", 0)
    assert (row["laddr_text"], row["raddr_text"], row["family"]) == (None, None, "ipv4")


@pytest.mark.parametrize("raw, error", [
    (life(1)._replace(history=()), IndexError),  # no state at all
    (life(1)[:12], ValueError),  # a field short
    (None, TypeError),
])
def test_a_life_that_cannot_be_a_row_raises_what_the_writer_counts_as_dropped(raw, error):
    with pytest.raises(error):
        rows.row(raw, OFFSET_NS)


def test_the_caches_are_bounded(monkeypatch):
    monkeypatch.setattr(rows, "CACHE_MAX", 4)
    for name in ("_addrs", "_comms", "_templates"):
        monkeypatch.setattr(rows, name, {})
    for i in range(1, 20):
        rows.row(life(i, laddr=f"10.0.0.{i}", comm=f"c{i}", states=SERVER_CLOSE[:i % 4 + 1]), OFFSET_NS)
    assert all(len(getattr(rows, name)) <= 4 for name in ("_addrs", "_comms", "_templates"))
