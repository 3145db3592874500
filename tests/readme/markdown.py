"""README.md as data: fenced blocks, inline code spans, the commands it shows, paragraphs.

Nothing here knows what the README says: the tests decide what to check.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

FENCE = re.compile(r"^```([\w+-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`]+)`")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$", re.MULTILINE)
SHELL_LANGS = frozenset({"bash", "sh", "shell", "console"})
# The first word of an inline command line (shell blocks hold nothing but commands).
PROGRAMS = frozenset({"shadowrl", "python", "python3", "pip", "make", "mlflow", "ray",
                      "pytest", "ruff", "docker", "kubectl", "helm", "argo", "git", "curl",
                      "uv", "conda", "bash", "sh"})
SEPARATORS = frozenset({"&&", "||", ";", "|"})


def norm(text: str) -> str:
    """Whitespace-normalised text (markdown wraps lines anywhere)."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # README line of the block's first body line


@dataclass(frozen=True)
class Command:
    """A command line as written: continuations joined, trailing comment removed."""

    text: str
    line: int
    where: str  # "block" (a shell code block) or "inline" (an inline code span)

    @property
    def id(self) -> str:
        return f"L{self.line}:{self.text}"

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)

    def segments(self) -> list[list[str]]:
        """The simple commands of the line (split at ``&&``, ``||``, ``;`` and ``|``)."""
        out: list[list[str]] = [[]]
        for word in self.words:
            if word in SEPARATORS:
                out.append([])
            else:
                out[-1].append(word)
        return [s for s in out if s]


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def blocks(text: str) -> list[Block]:
    return [Block(m.group(1), m.group(2), line_of(text, m.start(2))) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The README without its fenced blocks (blanked, so offsets and line numbers hold)."""
    return FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def inline_spans(text: str) -> list[tuple[str, int]]:
    """Every inline code span outside fenced blocks, whitespace-normalised, with its line."""
    body = prose(text)
    return [(norm(m.group(1)), line_of(body, m.start())) for m in INLINE.finditer(body)
            if "\n\n" not in m.group(1)]


def strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` outside quotes after a blank)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_lines(block: Block) -> list[Command]:
    """The command lines of a shell block: ``\\`` continuations joined, comments removed."""
    out: list[Command] = []
    pending, start = "", 0
    for i, raw in enumerate(block.body.splitlines()):
        line = strip_comment(raw)
        if not pending:
            start = block.line + i
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = norm(pending + line)
        pending = ""
        if text:
            out.append(Command(text, start, "block"))
    return out


def commands(text: str) -> list[Command]:
    """Every command line the README shows: the lines of its shell blocks, and inline spans
    that start with one of PROGRAMS and have arguments. A bare ``shadowrl NAME`` span names
    a command: see references()."""
    found = [c for b in blocks(text) if b.lang in SHELL_LANGS for c in shell_lines(b)]
    for span, line in inline_spans(text):
        words = span.split()
        if words[0] in PROGRAMS and len(words) > 1 and not _is_reference(words):
            found.append(Command(span, line, "inline"))
    return found


def _is_reference(words: list[str]) -> bool:
    return words[0] == "shadowrl" and len(words) == 2 and not words[1].startswith("-")


def references(text: str) -> list[tuple[str, int]]:
    """Inline ``shadowrl NAME`` spans: names of commands (a heading, a cross-reference)."""
    return [(span.split()[1], line) for span, line in inline_spans(text)
            if _is_reference(span.split())]


def fragments(text: str, subcommands: set[str]) -> list[Command]:
    """Inline spans that quote part of a shadowrl command: ``NAME --flag ...`` (as
    ``shadowrl NAME --flag ...``) or a bare ``--flag [VALUE]``."""
    out: list[Command] = []
    for span, line in inline_spans(text):
        words = span.split()
        if words[0] in subcommands and len(words) > 1 and words[1].startswith("--"):
            out.append(Command(f"shadowrl {span}", line, "inline"))
        elif words[0].startswith("--"):
            out.append(Command(span, line, "inline"))
    return out


def paragraphs(text: str) -> list[tuple[str, int]]:
    """The prose paragraphs (blank-line separated, fenced blocks left out), normalised."""
    body = prose(text)
    out = []
    for m in re.finditer(r"(?:^[ \t]*\S.*(?:\n|$))+", body, re.MULTILINE):
        out.append((norm(m.group(0)), line_of(body, m.start())))
    return out


def paragraph_with(text: str, phrase: str) -> str:
    """The one paragraph that contains ``phrase`` (whitespace-insensitive)."""
    hits = [p for p, _ in paragraphs(text) if norm(phrase) in p]
    assert len(hits) == 1, f"README: {len(hits)} paragraphs say {phrase!r} (expected one)"
    return hits[0]


def paragraph_after(text: str, block: Block) -> str:
    """The first prose paragraph after ``block``."""
    end = block.line + block.body.count("\n")
    later = [p for p, line in paragraphs(text) if line > end]
    assert later, f"README: nothing follows the block at line {block.line}"
    return later[0]


def backticked(paragraph: str) -> list[str]:
    return [norm(m.group(1)) for m in INLINE.finditer(paragraph)]


def without_code(paragraph: str) -> str:
    """The paragraph with its inline code blanked (to find words outside code)."""
    return INLINE.sub(lambda m: " " * len(m.group(0)), paragraph)


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body up to the next heading) for every heading."""
    marks = list(HEADING.finditer(prose(text)))
    return [(norm(m.group(2)), text[m.end():marks[i + 1].start() if i + 1 < len(marks)
                                   else len(text)]) for i, m in enumerate(marks)]
