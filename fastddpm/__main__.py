"""python -m fastddpm: the commands, one line each (each takes --help)."""

import sys

COMMANDS = (
    ("train", "train a DDPM on a built-in set or your own images (folders, .npz, CIFAR batches), fused kernels"),
    ("generate", "sample N images in resumable shards, any method, any model; --eval measures them at the end"),
    ("eval", "sample quality offline: FD/KID/precision/recall in a shipped network, or Inception FID"),
    ("tune", "fit a sampler to one model: its timesteps (GITS), optionally its coefficients (--learn); a plan file"),
    ("bench", "the speed benchmark (--static: machine code without a GPU; --quality: quality per model evaluation)"),
    ("pretrained", "ship a run's EMA weights, or export a model as a diffusers folder"),
)

USAGE = "usage: python -m fastddpm COMMAND [--help]\n\ncommands:\n" + "".join(
    f"  {name:<11}python -m fastddpm.{name}: {what}\n" for name, what in COMMANDS) + (
    "\ndocs: README.md and docs/ (sampling, models, data, training, guidance, generation, quality, benchmarks)\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    names = [n for n, _ in COMMANDS]
    if argv[0] in names:  # python -m fastddpm train ... is python -m fastddpm.train ...
        import importlib

        from . import cli

        cli.run(f"python -m fastddpm.{argv[0]}", importlib.import_module(f"fastddpm.{argv[0]}").main, argv[1:])
        return 0
    sys.stderr.write(f"python -m fastddpm: error: unknown command {argv[0]!r}; expected one of {', '.join(names)}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
