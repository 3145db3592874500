"""shadowrl.cli.render: whole names on any stdout, alert counts labelled as alerts, and
lines written to stderr while a progress bar is live kept in view."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

from shadowrl.analysis.summary import AlertGroup
from shadowrl.cli.render import PIPE_WIDTH, alert_group_text, out, table

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def group(count: int, runs: int, step: str | None = "revert-orders") -> AlertGroup:
    return AlertGroup(kind="new_errors", step=step, count=count, message="(json only)",
                      runs=runs, example="overload during 'revert-orders': 12 failed requests")


def test_alert_groups_count_alerts_not_runs() -> None:
    # a run raises one alert per error source: more alerts than runs is normal
    assert alert_group_text(group(3006, 3000), 3000) == (
        "3006 alerts at step 'revert-orders' in 3000 of 3000 runs; e.g. overload during "
        "'revert-orders': 12 failed requests")
    assert alert_group_text(group(1, 1, step=None), 5).startswith("1 alert in 1 of 5 runs; ")


def test_piped_stdout_is_unbounded_and_a_terminal_keeps_its_width(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "80")
    piped = out.console()  # pytest's captured stdout is no terminal
    assert piped.width == PIPE_WIDTH and piped.soft_wrap and not piped.is_terminal
    monkeypatch.setattr(sys, "stdout", Tty())
    assert out.console().width == 80 and not out.console().soft_wrap


def test_a_narrow_table_folds_long_cells_instead_of_cutting_them() -> None:
    from rich.console import Console

    name = "disable-the-new-checkout-flag-before-anything-else"
    t = table("step", "settings")
    t.add_row(name, "batch=1, drain=30s, surge=0")
    console = Console(width=30, record=True, color_system=None)
    console.print(t)
    text = console.export_text()
    assert "…" not in text
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines()
                    if line.startswith("│"))
    assert name in cells  # every character is there, folded over several lines


def screen(data: str) -> list[str]:
    """What a terminal shows after ``data``: the few controls rich and the app layer write
    (carriage return, newline, erase line, cursor up; other escapes ignored)."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", data):
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
            col = 0
            lines.extend([""] * (row + 1 - len(lines)))
        elif token == "\x1b[2K":
            lines[row] = ""
        elif re.fullmatch(r"\x1b\[\d*A", token):
            row = max(0, row - int(token[2:-1] or 1))
        elif not token.startswith("\x1b"):
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    return [line.rstrip() for line in lines]


WRITERS = {
    # a write through Python's stderr, which the live display shows above the bar
    "sys.stderr": 'sys.stderr.write("ACK: stopping after the current run\\n")',
    # what rehearse's Ctrl-C handler does: straight to fd 2, clearing the line first
    "fd 2": 'os.write(2, b"\\r\\x1b[2KACK: stopping after the current run\\n")',
}


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("labels", [1, 2])
def test_a_line_written_to_stderr_during_a_progress_bar_stays_in_view(
        writer: str, labels: int) -> None:
    """On a terminal the bar is redrawn in place: a line written to stderr meanwhile (the
    acknowledgement of a first Ctrl-C, which the app layer writes) must stay on the screen
    once the (transient) bars are gone, not be drawn over by a refresh."""
    import pty

    script = textwrap.dedent(f"""
        import os, sys, time
        from shadowrl.cli.render import progress_bars
        with progress_bars() as on_progress:
            on_progress(3, 3, "loading")
            for i in range(30):
                on_progress(i, 30, "rehearsing" if {labels} == 2 else "loading")
                time.sleep(0.02)
                if i == 15:
                    {WRITERS[writer]}
                    time.sleep(0.3)  # several refreshes of the bar
        print("DONE")
    """)
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal
        os.chdir(ROOT)
        os.environ["PYTHONPATH"] = str(ROOT)
        os.execv(sys.executable, [sys.executable, "-c", script])
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    text = data.decode(errors="replace")
    assert "━" in text  # a bar was drawn live
    shown = [line for line in screen(text) if line]
    assert shown == ["ACK: stopping after the current run", "DONE"], (shown, text)
