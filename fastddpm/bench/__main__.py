"""python -m fastddpm.bench (see fastddpm/bench/cli.py)."""

from .cli import main

main()
