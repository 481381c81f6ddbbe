"""The ``fedpress`` command line (Typer + Rich)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="fedpress: communication-efficient federated learning, every byte measured.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command("codecs")
def codecs_cmd() -> None:
    """List the codec stages, with one line of help each."""
    from rich.console import Console
    from rich.table import Table

    from fedpress.codecs import registry

    t = Table(title="codec stages (join with '+', e.g. ef+topk:ratio=0.01+q:bits=8+zstd)")
    t.add_column("stage")
    t.add_column("what it does")
    for name, help_ in registry().items():
        t.add_row(name, help_)
    Console().print(t)


def _register_subcommands() -> None:
    # Sub-apps live beside the code they drive; imported lazily so `fedpress --help` stays fast.
    from fedpress.bench import bench_app

    app.add_typer(bench_app, name="bench")


def main() -> None:
    _register_subcommands()
    app()
