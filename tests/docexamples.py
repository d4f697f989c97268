"""The examples of the guides, as data: which blocks are commands with their output, which
are files the commands read, and how one is run (tests/test_docs_examples.py).

The marks stay readable Markdown. A ```` ```console ```` block is an example: its lines
starting with ``$ `` are commands, the lines up to the next command are what the command
prints (stdout, then stderr, as the command shows them over the daemon's control
socket). A line that is only ``…`` stands for
any number of lines. An HTML comment on the line right before a block says more, and
renders as nothing:

- ``<!-- example: SETUP -->``: run the named setup (tests/test_docs_examples.py) first,
  instead of the default ``fresh`` one;
- ``<!-- not checked: REASON -->``: a console block that cannot run here (systemd, useradd);
- ``<!-- example file: NAME -->`` before any fenced block: its text is the file NAME that the
  guide's commands name (written into the folder the commands run in);
- ``<!-- example: the spool writes rejected/NAME.error -->`` before a block: its text is what
  the spool writes when the example file NAME is dropped into ``incoming/``.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from maild.cli.main import main
from tests.daemon import _environment, _logging_restored

REPO = Path(__file__).resolve().parent.parent
# Every guide a user reads; each is searched for examples.
GUIDES = (
    "README.md",
    "docs/operations.md",
    "docs/operator-guide.ja.md",
    "docs/alert-files.md",
    "docs/csv.md",
    "docs/configuration.md",
    "docs/metrics.md",
    "docs/roles.md",
    "docs/mail-delivery.md",
    "docs/web-routes.md",
)

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*(example|not checked|example file)\s*:\s*(.*?)\s*-->\s*$")
_SPOOL_WRITES = re.compile(r"the spool writes (rejected/\S+)")
ELLIPSIS = "…"
_MAILDIR_LOG = re.compile(r"INFO maild\.delivery: mail for \S+ written to ")


@dataclass
class Command:
    line: str  # as written after "$ "
    expected: list[str] = field(default_factory=list)


@dataclass
class Example:
    guide: str
    line: int  # 1-based line of the opening fence
    setup: str = "fresh"
    checked: bool = True
    reason: str = ""
    commands: list[Command] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.guide}:{self.line}"


@dataclass
class Guide:
    path: str
    examples: list[Example]
    files: dict[str, str]
    # "rejected/NAME.error" -> (line of the block, its text): files the spool writes
    spool_writes: dict[str, tuple[int, str]] = field(default_factory=dict)


def parse_guide(path: str, text: str) -> Guide:
    lines = text.split("\n")
    examples: list[Example] = []
    files: dict[str, str] = {}
    spool_writes: dict[str, tuple[int, str]] = {}
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        indent, language = fence.group(1), fence.group(2)
        mark = _MARK.match(lines[index - 1]) if index else None
        body: list[str] = []
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            line = lines[end]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            end += 1
        writes = _SPOOL_WRITES.fullmatch(mark.group(2)) if mark is not None else None
        if mark is not None and mark.group(1) == "example file":
            files[mark.group(2)] = "\n".join(body) + "\n"
        elif mark is not None and mark.group(1) == "example" and writes is not None:
            spool_writes[writes.group(1)] = (index + 1, "\n".join(body) + "\n")
        elif language == "console":
            example = Example(path, index + 1)
            if mark is not None and mark.group(1) == "example":
                example.setup = mark.group(2)
            elif mark is not None and mark.group(1) == "not checked":
                example.checked, example.reason = False, mark.group(2)
            for line in body:
                if line.startswith("$ "):
                    example.commands.append(Command(line[2:]))
                elif example.commands:
                    example.commands[-1].expected.append(line)
            examples.append(example)
        index = end + 1
    return Guide(path, examples, files, spool_writes)


def load_guide(path: str) -> Guide:
    return parse_guide(path, (REPO / path).read_text(encoding="utf-8"))


def run_maild(config: Path, words: list[str], env: dict[str, str]) -> list[str]:
    """What ``maild WORDS`` shows a person who runs it in production: stdout, then stderr.

    In production people run ``maild`` as themselves and the daemon runs the command for
    them (maild.service.control) as a child of the service under systemd: the child's log
    lines carry no time stamp (``JOURNAL_STREAM``), and the caller's terminal gets the
    child's stdout, then its stderr (maild.cli.remote).
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with _environment({**env, "JOURNAL_STREAM": "8:1"}), _logging_restored():
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main(["--config", str(config), *words])
            except SystemExit:  # argparse: usage errors
                pass
    lines = (stdout.getvalue() + stderr.getvalue()).rstrip("\n").split("\n")
    # The tests' relay is a maildir (production's is SMTP): its log line names a file.
    return [line for line in lines if not _MAILDIR_LOG.match(line)]


def command_words(line: str) -> list[str]:
    words = shlex.split(line)
    if not words or words[0] != "maild":
        raise AssertionError(
            f"{line!r}: only maild commands run here; mark the block <!-- not checked: … -->"
        )
    return words[1:]


def matches(expected: list[str], actual: list[str]) -> bool:
    """``actual`` equals ``expected`` where each ``…`` line stands for any number of lines."""
    if ELLIPSIS not in [line.strip() for line in expected]:
        return [line.rstrip() for line in expected] == [line.rstrip() for line in actual]
    at = expected.index(next(line for line in expected if line.strip() == ELLIPSIS))
    head, tail = expected[:at], expected[at + 1 :]
    if not matches(head, actual[: len(head)]):
        return False
    rest = actual[len(head) :]
    return any(matches(tail, rest[skip:]) for skip in range(len(rest) + 1))


def mismatch(command: Command, actual: list[str]) -> str:
    return (
        f"$ {command.line}\n--- the guide shows:\n"
        + "\n".join(command.expected)
        + "\n--- the program prints:\n"
        + "\n".join(actual)
    )
