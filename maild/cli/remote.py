"""The ``maild`` command of someone who may not read the config: it asks the running
daemon over its control socket (maild.service.control), which knows the caller from the
kernel and runs the command if their role allows it.

What the caller's own permissions must decide stays here: the files named on the command
line are read by the caller and sent, and ``submit`` places the checked files in the
spool *itself*, so the file's owner, the requester, is the caller (docs/alert-files.md).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from maild.alerts.spool_files import place_in_spool
from maild.cli.alerts import print_submitted
from maild.cli.common import EXIT_FAILURE, CommandError, print_json
from maild.cli.submit import Checked

DEFAULT_SOCKET = "/run/maild/control.sock"
SOCKET_ENV = "MAILD_SOCKET"
GLOBAL_OPTIONS = ("--config", "--log-level", "--socket")
REMOTE_SECONDS = 660.0  # a little over the daemon's own limit for one command


def socket_path(args: argparse.Namespace) -> str:
    return str(args.socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)


def command_words(argv: list[str]) -> list[str]:
    """``argv`` without the options before the command (they are this process's own)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in GLOBAL_OPTIONS:
            i += 2
        elif word.startswith(tuple(o + "=" for o in GLOBAL_OPTIONS)):
            i += 1
        else:
            break
    return argv[i:]


def run_remote(argv: list[str], args: argparse.Namespace) -> int:
    words = command_words(argv)
    files: dict[str, bytes] = {}
    named: list[str] = list(getattr(args, "files", None) or [])
    if getattr(args, "csv", None):
        named.append(args.csv)
    for path in named:
        name = Path(path).name
        if name in files:
            raise CommandError(f"{name}: 同じ名前のファイルが二つあります / two files named so")
        try:
            files[name] = Path(path).read_bytes()
        except OSError as e:
            raise CommandError(f"{path}: 読めません / cannot read: {e.strerror}") from None
        words = [name if w == path else w for w in words]
    output = getattr(args, "output", None)
    if output:
        words = [Path(output).name if w == output else w for w in words]
    placing = args.command == "submit" and not args.check and not args.test
    if placing:
        words = ["submit", "--check", "--json", *words[1:]]
    answer = _ask(socket_path(args), words, files)
    if placing:
        return _place(answer, files, args)
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    if output and answer.get("exit") == 0:
        data = answer.get("files", {}).get(Path(output).name)
        if data is not None:
            Path(output).write_bytes(base64.b64decode(data))
    return int(answer.get("exit", EXIT_FAILURE))


def _ask(path: str, words: list[str], files: dict[str, bytes]) -> dict[str, Any]:
    request = {"argv": words, "files": {k: base64.b64encode(v).decode() for k, v in files.items()}}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(REMOTE_SECONDS)
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as reply:
                line = reply.readline()
    except OSError as e:
        raise CommandError(
            f"maild デーモンに接続できません（{path}: {e.strerror or e}）。"
            f"デーモンが動いているか確認してください。 / cannot reach the maild daemon at "
            f"{path}: {e.strerror or e}; is it running?"
        ) from None
    try:
        answer: dict[str, Any] = json.loads(line)
    except ValueError:
        raise CommandError("maild デーモンの応答が読めません / no readable answer") from None
    return answer


def _place(answer: dict[str, Any], files: dict[str, bytes], args: argparse.Namespace) -> int:
    """``submit`` over the socket: the daemon checked the files; the caller places them."""
    try:
        results = [Checked(**r) for r in json.loads(answer.get("stdout") or "null")]
    except (ValueError, TypeError):
        sys.stderr.write(answer.get("stderr", ""))
        return int(answer.get("exit", EXIT_FAILURE))
    sys.stderr.write(answer.get("stderr", ""))
    all_valid = all(r.valid for r in results)
    if all_valid:
        spool = Path(answer["spool_dir"])
        for r in results:
            try:
                place_in_spool(spool, r.file, files[r.file])
            except OSError as e:
                raise CommandError(
                    f"{r.file}: スプールに置けません / cannot place it in {spool}: {e.strerror}"
                ) from None
    if args.json:
        print_json([r.as_json() for r in results])
    else:
        print_submitted(results, args, None)
    return 0 if all_valid else EXIT_FAILURE
