"""python -m fastddpm.bench (see fastddpm/bench/cli.py)."""

from .. import cli
from .cli import main

cli.run("python -m fastddpm.bench", main)
