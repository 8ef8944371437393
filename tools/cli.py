"""Command-line options shared by every script."""
from __future__ import annotations

import argparse

TRUE_WORDS = {"true", "yes", "1", "on"}
FALSE_WORDS = {"false", "no", "0", "off"}


def parse_bool(text: str) -> bool:
    """Parse true/false, yes/no, 1/0 or on/off (any case)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """Add ``--name`` / ``--no-name``; ``--name true|false`` also works, for older command lines."""
    dest = name.lstrip("-").replace("-", "_")
    flag = "--" + name.lstrip("-")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(flag, dest=dest, nargs="?", const=True, default=default, type=parse_bool,
                       help=f"{help} (default: {'on' if default else 'off'})")
    group.add_argument("--no-" + name.lstrip("-"), dest=dest, action="store_false", help=argparse.SUPPRESS)


def add_runtime_args(parser: argparse.ArgumentParser, data_default: str, data_help: str = "dataset h5 file") -> None:
    """Add the options every training script takes: data, device, seed, run directory, resume.

    ``data_help`` describes what ``--data`` names; the default is appended to it.
    """
    parser.add_argument("--data", default=data_default, help=f"{data_help} (default: {data_default})")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--seed", type=int, default=2, help="random seed (default: 2)")
    parser.add_argument("--save", default="EXP",
                        help="run name, placed under runs/ with a time stamp, or a directory path "
                             "(containing a slash) used as it is (default: EXP)")
    parser.add_argument("--resume", default="",
                        help="continue a run: its directory or a checkpoint file")
    parser.add_argument("--report_freq", type=int, default=50, help="log every N batches (default: 50)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for PyTorch (default: 0, PyTorch's choice)")
    add_bool_flag(parser, "progress", True, "show a progress bar with an ETA for long epochs")


def restore_args(args: argparse.Namespace, saved: dict, parser: argparse.ArgumentParser,
                 runtime_options: set[str]) -> argparse.Namespace:
    """Take a resumed run's options from its checkpoint.

    Options in ``runtime_options`` (device, thread count, data path...) keep a value given on
    the command line. Left at their default, they too come from the checkpoint, so
    ``--resume RUN_DIR`` alone continues the run as it was started.
    """
    for key, value in saved.items():
        if key == "resume":
            continue
        if key in runtime_options and getattr(args, key, None) != parser.get_default(key):
            continue
        setattr(args, key, value)
    return args
