"""`li-httpd ctl`: talk to a running master over its control socket."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

import orjson
from li_httpd.config import ConfigError, load
from li_httpd.config.units import format_duration

from .control import ControlError, request
from .runtime import control_socket_path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_MASTER = 2


def socket_path(args: argparse.Namespace) -> str:
    """--socket, else the config's control_socket (-c / $LI_HTTPD_CONFIG / default)."""
    if args.socket:
        return str(args.socket)
    return control_socket_path(load(args.config).config)


def run(args: argparse.Namespace) -> int:
    try:
        path = socket_path(args)
    except ConfigError as exc:
        print(f"li-httpd ctl: cannot read the config to find the control socket "
              f"({exc.problems[0].render(exc.filename)}); pass --socket", file=sys.stderr)
        return EXIT_NO_MASTER
    try:
        reply = request(path, args.ctl_command)
    except ControlError as exc:
        print(f"li-httpd ctl: {exc}", file=sys.stderr)
        return EXIT_NO_MASTER
    if args.json:
        print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    elif args.ctl_command == "status":
        print(render_status(reply))
    elif args.ctl_command in ("reload", "rotate-tickets") and "result" in reply:
        print(render_reload(reply))
    else:
        print("ok" if reply.get("ok") else f"failed: {reply.get('error', reply)}")
    return EXIT_OK if reply.get("ok") else EXIT_FAILED


def render_reload(reply: dict[str, Any]) -> str:
    if reply.get("result") == "failed":
        errors = reply.get("errors") or [reply.get("reason", "")]
        return "reload failed; the running configuration is unchanged:\n" + "\n".join(
            f"  {e}" for e in errors)
    if reply.get("result") == "unchanged":
        return f"config unchanged ({reply.get('config_hash')})"
    if reply.get("detail"):  # a certificate swap (same generation) or a ticket rotation
        return f"{reply['detail']}: generation {reply.get('generation')}, config " \
               f"{reply.get('config_hash')}"
    return f"reloaded: generation {reply.get('generation')}, config {reply.get('config_hash')}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def render_status(status: dict[str, Any]) -> str:
    lines = [
        f"li-httpd {status['version']}  pid {status['pid']}  up {status['uptime_s']}s",
        f"config   {status['config_file']}  hash {status['config_hash']}  "
        f"generation {status['generation']}",
        f"listen   {' '.join(status['listen'])}",
        f"control  {status['control_socket']}",
    ]
    last = status.get("last_reload", {})
    if last.get("result", "none") != "none":
        # A failed reload's reason already names its place ("FILE:LINE: key: message",
        # as the actor renders it); failures outside the file have no line to show.
        detail = f"  {last['reason']}" if last.get("result") == "failed" \
            else f"  config {last.get('config_hash', '')}"
        lines.append(f"reload   {last['result']}{detail}")
    workers = [["slot", "pid", "gen", "state", "conns", "requests", "uptime"]]
    workers += [[str(w["slot"]), str(w["pid"]), str(w["generation"]), w["state"],
                 str(w["connections"]), str(w["requests"]), f"{w['uptime_s']}s"]
                for w in status["workers"]]
    lines += ["workers", _table(workers)]
    if status.get("actors"):
        actors = [["actor", "pid", "state"]]
        actors += [[a["name"], str(a["pid"]), a["state"]] for a in status["actors"]]
        lines += ["actors", _table(actors)]
    if status["upstreams"]:
        peers = [["pool", "peer", "health", "ready", "live", "active", "fails", "circuit"]]
        peers += [[p["pool"], p["peer"], p["health"] + (f" ({p['down_for_s']}s)"
                                                        if p["health"] == "down" else ""),
                   p.get("ready", "-"), p.get("live", "-"),
                   str(p["active"]) + (f"/{p['max_concurrent']}"
                                       if p.get("max_concurrent") else ""),
                   str(p["fails"]), p["circuit"]]
                  for p in status["upstreams"]]
        lines += ["upstreams", _table(peers)]
    if status.get("queues"):
        rows = [["route", "waiting"]]
        rows += [[q["route"], f"{q['depth']}/{q['max_size']}"] for q in status["queues"]]
        lines += ["queues", _table(rows)]
    if status.get("budgets"):
        rows = [["key", "tokens/min", "usd", "window ends (UTC)"]]
        rows += [[b["key"], f"{b['tokens']}/{b['tokens_per_minute'] or '-'}",
                  f"{b['usd']:.2f}/" + (f"{b['usd_budget']:.2f}" if b["usd_budget"] else "-"),
                  _utc(b["usd_window_end"]) if b["usd_budget"] else ""]
                 for b in status["budgets"]]
        source = str(status.get("budgets_from", ""))
        where = (" (from Redis)" if source == "redis" else
                 f" (this host's own counters, which decide meanwhile: "
                 f"{source.removeprefix('shared memory (').removesuffix(')')})"
                 if source.startswith("shared memory (") else "")
        lines += [f"budgets{where}", _table(rows)]
    elif str(status.get("budgets_from", "")).startswith("unavailable"):
        lines.append(f"budgets  {status['budgets_from']} (Redis holds them)")
    tickets = status.get("tickets")
    if tickets and tickets["session_tickets"]:
        lines.append(f"tickets  keys rotated every {_duration(tickets['rotation_s'])}, next "
                     f"{tickets['next_rotation']} ({tickets['rotations']} rotations so far)")
    elif tickets:
        lines.append("tickets  off")
    if status.get("certificates"):
        rows = [["source", "subject", "names", "issuer", "expires (UTC)", "next renewal"]]
        rows += [[c["source"], c["subject"], ",".join(c["names"]) or "-", c["issuer"],
                  f"{c['not_after']} ({c['days_left']}d left)", c["next_renewal"]]
                 for c in status["certificates"]]
        lines += ["certificates", _table(rows)]
        lines += [f"  {c['path']} sha256={c['fingerprint']}" for c in status["certificates"]]
    return "\n".join(lines)


def _duration(seconds: int) -> str:
    return format_duration(seconds * 1000)


def _utc(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
