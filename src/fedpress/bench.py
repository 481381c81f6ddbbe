"""`fedpress bench`: measured speed and size of codecs (filled in by the bench work)."""

import typer

bench_app = typer.Typer(help="Benchmarks: measured bytes, error and speed.", no_args_is_help=True)
