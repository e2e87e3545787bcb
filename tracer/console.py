"""Transitions as lines in a terminal (``watch`` and ``replay`` print the same way)."""

from __future__ import annotations

import json
import time
from typing import TextIO

from tracer.core.record import AF_INET, Event, Field, comm_text, format_addr, role_name, to_json
from tracer.core.states import F_SHUT_RDWR, F_SHUT_WR, STATE_NAMES, EventKind, TcpState

_RESET_WORDS = {EventKind.RESET_RX.value: "reset received", EventKind.RESET_TX.value: "reset sent",
                EventKind.RETRANSMIT.value: "retransmit"}
HEADER = (f"{'TIME':<15} {'PORT':>5} {'ROLE':<8} {'PID':>7} {'COMM':<15} {'LOCAL':<27} "
          f"{'REMOTE':<27} {'TRANSITION':<34} {'PREV_MS':>10}")


_STATE = EventKind.STATE.value
# The transitions that send our FIN: made by close() unless the record says shutdown().
_OUR_FIN = frozenset({(TcpState.ESTABLISHED.value, TcpState.FIN_WAIT1.value),
                      (TcpState.CLOSE_WAIT.value, TcpState.LAST_ACK.value)})
_SHUT = F_SHUT_WR | F_SHUT_RDWR
_CLOSE = TcpState.CLOSE.value
_LISTEN_OR_CLOSE = frozenset({TcpState.LISTEN.value, TcpState.CLOSE.value})


def _endpoint(addr: str, port: int, v6: bool) -> str:
    return f"[{addr}]:{port}" if v6 else f"{addr}:{port}"


class StateTimes:
    """When each socket entered the state it is in, as far as its events tell: what
    PREV_MS says. The time in a state is known only from a transition into it,
    so a socket's first transition shows none, and neither does one that does not
    start from the state the socket was last seen entering (a transition the kernel
    skipped the program for came between), nor a reset. Bounded: past ``limit``
    sockets, the one quiet longest is forgotten (its next line shows none)."""

    def __init__(self, limit: int = 1 << 16) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._since: dict[int, tuple[int, int]] = {}  # socket -> (state, ts_ns), quiet longest first

    def spent_ns(self, ev: Event) -> int:
        """The nanoseconds the socket spent in the state this event leaves, -1 when not known."""
        if ev[Field.KIND] != _STATE:
            return -1
        ts, sk, old, new = ev[Field.TS], ev[Field.SK], ev[Field.OLD], ev[Field.NEW]
        last = self._since.pop(sk, None)
        born = old in _LISTEN_OR_CLOSE and new != _CLOSE  # a new socket at this address
        spent = ts - last[1] if last is not None and last[0] == old and not born else -1
        if new != _CLOSE:
            since = self._since
            since[sk] = (new, ts)
            if len(since) > self.limit:
                del since[next(iter(since))]
        return spent

    def __len__(self) -> int:
        return len(self._since)


class TransitionPrinter:
    """Prints one transition a line, or one JSON object a line, with the time the
    socket spent in the state it left (PREV_MS, ``prev_state_seconds``).

    ``show`` takes every event, in time order, those of other ports too: the times
    in states follow every socket, and only the lines are filtered by port.
    """

    def __init__(self, out: TextIO, as_json: bool, wall_offset_ns: int, port: int | None = None,
                 max_sockets: int = 1 << 16) -> None:
        self.out = out
        self.as_json = as_json
        self.wall_offset_ns = wall_offset_ns
        self.port = port
        self.times = StateTimes(max_sockets)
        self._header_done = as_json

    def wants(self, ev: Event) -> bool:
        return self.port is None or ev[Field.SERVICE_PORT] == self.port

    def show(self, ev: Event, timewait: bool) -> None:
        """One event; ``timewait`` says the close was orderly and the connection is
        now modelled in TIME_WAIT."""
        spent = self.times.spent_ns(ev)
        if self.wants(ev):
            self.print(ev, spent, timewait)

    def print(self, ev: Event, spent_ns: int, timewait: bool) -> None:
        """One line for ``ev``; ``spent_ns`` -1 prints as unknown."""
        if self.as_json:
            obj = to_json(ev)
            obj["time"] = round((ev[0] + self.wall_offset_ns) / 1e9, 6)
            obj["prev_state_seconds"] = None if spent_ns < 0 else spent_ns / 1e9
            obj["timewait"] = timewait
            self.out.write(json.dumps(obj) + "\n")
            return
        if not self._header_done:
            self.out.write(HEADER + "\n")
            self._header_done = True
        ts, _sk, saddr, daddr, pid, sport, dport, svc, fam, kind, old, new, role, _fl, comm = ev
        wall = (ts + self.wall_offset_ns) / 1e9
        clock = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1e6) % 1_000_000:06d}"
        v6 = fam != AF_INET
        if kind == EventKind.STATE.value:
            what = f"{STATE_NAMES[old]} -> {STATE_NAMES[new]}" + (" (TIME_WAIT)" if timewait else "")
            if (old, new) in _OUR_FIN and _fl & _SHUT:
                what += " by shutdown(SHUT_RDWR)" if _fl & F_SHUT_RDWR else " by shutdown(SHUT_WR)"
        else:
            what = _RESET_WORDS[kind] + (f" in {STATE_NAMES[old]}" if old else "")
        prev = "-" if spent_ns < 0 else f"{spent_ns / 1e6:.3f}"
        self.out.write(
            f"{clock:<15} {svc:>5} {role_name(role):<8} {pid or '-':>7} {comm_text(comm) or '-':<15} "
            f"{_endpoint(format_addr(fam, saddr), sport, v6):<27} "
            f"{_endpoint(format_addr(fam, daddr), dport, v6):<27} {what:<34} {prev:>10}\n")


def print_stuck(answer: dict, out: TextIO) -> None:
    """The /api/v1/stuck answer as a table, oldest first."""
    sockets = answer.get("sockets", [])
    if not sockets:
        out.write("no stuck sockets\n")
        return
    out.write(f"{'STATE':<11} {'AGE_S':>9} {'PORT':>5} {'NETNS':>10} {'LOCAL':<27} {'REMOTE':<27} "
              f"{'PID':>7} {'COMM':<15} WHY\n")
    for s in sockets:
        v6 = s["family"] == "ipv6"
        age = f"{s['age_seconds']:.1f}" + ("" if s["age_known"] else "+")
        out.write(
            f"{s['state']:<11} {age:>9} {s['service_port']:>5} {s['netns'] or '-':>10} "
            f"{_endpoint(s['laddr'], s['lport'], v6):<27} {_endpoint(s['raddr'], s['rport'], v6):<27} "
            f"{s['pid'] or '-':>7} {s['comm'] or '-':<15} {s['evidence']}\n")
    out.write(f"{len(sockets)} stuck; an age with + is known only since the daemon saw the socket\n")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _caller_netns(entry: dict) -> str:
    """A refused call's namespace; with ? when it was inferred (the caller had exited)."""
    if not entry["netns"]:
        return "-"
    return f"{entry['netns']}?" if entry["netns_inferred"] else str(entry["netns"])


def print_conflicts(answer: dict, out: TextIO) -> None:
    """The /api/v1/bind-conflicts answer as a table, newest first, each remedy under its row."""
    conflicts = answer.get("conflicts", [])
    if not conflicts:
        out.write("no bind conflicts since the daemon started\n")
        return
    out.write(f"{'TIME':<19} {'PORT':>5} {'ADDRESS':<16} {'PID':>7} {'COMM':<15} {'NETNS':>10} {'OPTS':<20} HOLDER\n")
    for c in conflicts:
        opts = ",".join(name for name in ("reuseaddr", "reuseport") if c[name]) or "-"
        h = c["holders"]
        holder = c["holder"]
        if holder == "time_wait":
            holder += f" ({h['time_wait']})"
        elif holder == "listener" and h["listeners"]:
            first = h["listeners"][0]
            holder += f" ({first['comm'] or '?'} pid {first['pid'] or '?'})"
        out.write(f"{_when(c['time']):<19} {c['port']:>5} {c['address']:<16} {c['pid']:>7} {c['comm'] or '-':<15} "
                  f"{_caller_netns(c):>10} {opts:<20} {holder}\n")
        out.write(f"    {c['remedy']}\n")
    out.write(f"{len(conflicts)} refused bind() call(s), newest first; a namespace with ? is where the port "
              "was held (the caller had exited)\n")


def print_no_local_port(answer: dict, out: TextIO) -> None:
    """The /api/v1/no-local-port answer as a table, newest first, each remedy under its row."""
    refused = answer.get("refused", [])
    if not refused:
        out.write("no connect() found the local ports used up since the daemon started\n")
        return
    out.write(f"{'TIME':<19} {'DESTINATION':<22} {'PID':>7} {'COMM':<15} {'NETNS':>10} {'RANGE':<12} HELD BY\n")
    for e in refused:
        span = "-" if not e["port_range"] else f"{e['port_range'][0]}-{e['port_range'][1]}"
        held = ", ".join(f"{n} {state}" for state, n in sorted(e["toward"].items())) or "-"
        dest = _endpoint(e["address"], e["port"], e["family"] == "ipv6")
        out.write(f"{_when(e['time']):<19} {dest:<22} {e['pid']:>7} {e['comm'] or '-':<15} {_caller_netns(e):>10} "
                  f"{span:<12} {held}\n")
        out.write(f"    {e['remedy']}\n")
    out.write(f"{len(refused)} connect() call(s) with no free local port (EADDRNOTAVAIL), newest first\n")


def print_port(port: int, by_ns: list[dict], out: TextIO) -> None:
    """``tcpstate-tracer port``: who holds the port in each namespace, and what bind() would get."""
    if not by_ns:
        out.write(f"port {port}: free in every network namespace (no TCP socket holds it)\n")
        return
    for ns in by_ns:
        out.write(f"network namespace {ns['netns']} ({ns['path']}):\n")
        for lst in ns["listeners"]:
            who = f"{lst['comm']} (pid {lst['pid']})" if lst["pid"] else "a process not found in /proc"
            out.write(f"  LISTEN      on {lst['address']}, by {who}\n")
        if ns["time_wait"]:
            out.write(f"  TIME_WAIT   {ns['time_wait']} socket(s), the last expires in {ns['time_wait_left_s']:.1f} s\n")
        for state, n in sorted(ns["others"].items()):
            out.write(f"  {state:<11} {n} socket(s)\n")
        if ns.get("trial"):
            for family in ("ipv4", "ipv6"):
                plain, reuse = ns["trial"][family]["plain"], ns["trial"][family]["reuseaddr"]
                out.write(f"  a new bind() of {'0.0.0.0' if family == 'ipv4' else '[::]'}:{port}: "
                          f"{'succeeds' if plain == 'ok' else 'fails with ' + plain} without SO_REUSEADDR, "
                          f"{'succeeds' if reuse == 'ok' else 'fails with ' + reuse} with it\n")
        if ns.get("remedy"):
            out.write(f"  {ns['remedy']}\n")
