"""Live progress: a rich progress bar with a one-line per-skill status (plain lines when not a TTY)."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, enabled: bool, total: int, done: int = 0):
        self.enabled, self.total, self.done = enabled, total, done
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.description}"), transient=False)
            self._task = self._bar.add_task("", total=total, completed=done)
            self._bar.start()

    def step(self, rec: dict, status: str) -> None:
        self.done += 1
        line = f"{status} | reward {rec.get('reward/mean', 0):.2f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=line)
        elif self.enabled:
            print(f"[{self.done}/{self.total}] {line}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.enabled:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
