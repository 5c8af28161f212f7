"""Progress bars for the commands that run whole experiments (`icl-lab reproduce` and the
organisms' commands): one bar per training run, with log lines printed above the bars."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

err_console = Console(stderr=True)


class Bars:
    """A rich progress bar per training run, plus log lines printed above the bars."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=err_console, transient=True)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "Bars":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def log(self, line: str) -> None:
        self.bar.console.print(f"[dim]{line}[/]", highlight=False)

    def train(self, name: str, step: int, total: int) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(f"train {name}", total=total)
        if step % 10 == 0 or step == total:
            self.bar.update(self.tasks[name], completed=step)
