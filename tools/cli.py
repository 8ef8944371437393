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


def add_speed_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--channels_last`` / ``--no-channels_last`` and ``--amp``."""
    from tools.runtime import AMP_CHOICES

    add_bool_flag(parser, "channels_last", True, "channels-last memory format (faster on the CPU)")
    parser.add_argument("--amp", default="off", choices=AMP_CHOICES,
                        help="autocast precision: bf16 or fp16 on CUDA; on the CPU, compare bf16 with "
                             "bench/retrain_step.py first (default: off)")


def add_sgd_args(parser: argparse.ArgumentParser, *, epochs: int, learning_rate: float, epochs_help: str) -> None:
    """Add the options of SGD with a cosine learning rate: epochs, batch size, learning rates,
    momentum, weight decay and gradient clipping."""
    group = parser.add_argument_group("optimization")
    group.add_argument("--epochs", type=int, default=epochs, help=f"{epochs_help} (default: {epochs})")
    group.add_argument("--batch_size", type=int, default=64, help="batch size (default: 64)")
    group.add_argument("--learning_rate", type=float, default=learning_rate,
                       help=f"initial learning rate, cosine-annealed over --epochs (default: {learning_rate})")
    group.add_argument("--learning_rate_min", type=float, default=0.0, help="final cosine learning rate (default: 0)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument("--weight_decay", type=float, default=3e-4, help="SGD weight decay (default: 3e-4)")
    group.add_argument("--grad_clip", type=float, default=5.0, help="gradient norm clipping (default: 5)")
