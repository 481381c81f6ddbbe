"""Same as ``fedpress bench codecs`` (same options), runnable from a checkout:

    python benchmarks/bench_codecs.py --size 10000000
    python benchmarks/bench_codecs.py --codec q:bits=8 --codec "ef+topk:ratio=0.01+q:bits=4+zstd" --json
"""

import typer

from fedpress.bench import codecs_cmd

if __name__ == "__main__":
    typer.run(codecs_cmd)
