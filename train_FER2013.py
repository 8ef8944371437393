"""Retrain a searched cell from scratch on FER2013 and evaluate it.

Training uses the Training split; PublicTest (validation) selects the best epoch; PrivateTest
(test) is reported at that epoch and at the last one.

    python train_FER2013.py --arch Auto_FERNet                              # GPU, the paper's budget
    python train_FER2013.py --genotype runs/search-EXP-.../genotype.json    # a searched cell
    python train_FER2013.py --batch_size 24 --learning_rate 0.025 --layers 12 --auxiliary_weight 0.4
    python train_FER2013.py --resume runs/retrain-EXP-...                   # continue a run
    python train_FER2013.py --evaluate runs/retrain-EXP-.../best.pt --tta tencrop
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from dataloader.fer2013 import DEFAULT_PATH
from NAS import genotypes as genotype_io
from NAS.model import NetworkFER, multiply_adds
from tools.checkpoint import CheckpointError, load_checkpoint, resolve_resume
from tools.cli import add_bool_flag, add_runtime_args, add_sgd_args, add_speed_args, restore_args
from tools.engine import TTA_CHOICES
from tools.experiment import make_run_dir, save_args, setup_logging
from tools.modelio import NETWORK_KINDS
from tools.fer_training import (Trainer, check_snapshots, cosine_scheduler, drop_path_at, final_report, fit,
                                load_fer_data)
from tools.runtime import (autocast_factory, configure_cpu, grad_scaler, seed_everything, select_device,
                           set_rng_state)

logger = logging.getLogger("train_FER2013")

# Options that a resumed run may change on the command line; every other option comes from the checkpoint.
RUNTIME_OPTIONS = {"resume", "device", "progress", "report_freq", "threads", "data", "evaluate"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Retrain a searched cell on FER2013.")
    add_runtime_args(parser, DEFAULT_PATH)
    parser.add_argument("--evaluate", default="", metavar="CKPT",
                        help="only evaluate this checkpoint on PublicTest and PrivateTest, then stop")

    group = parser.add_argument_group("network")
    cell = group.add_mutually_exclusive_group()
    cell.add_argument("--arch", default="Auto_FERNet",
                      help=f"a genotype name in NAS/genotypes.py ({', '.join(genotype_io.names())}), or random:SEED "
                           "for a cell drawn from the search space (default: Auto_FERNet)")
    cell.add_argument("--genotype", default="", metavar="PATH", help="a genotype.json written by train_search.py")
    group.add_argument("--init_channels", type=int, default=36, help="channels of the first cells (default: 36)")
    group.add_argument("--layers", type=int, default=12, help="number of cells (default: 12)")
    add_bool_flag(parser, "auxiliary", True, "auxiliary head after the second reduction cell")
    group.add_argument("--auxiliary_weight", type=float, default=0.4, help="weight of the auxiliary loss (default: 0.4)")
    group.add_argument("--drop_path_prob", type=float, default=0.2,
                       help="drop-path probability reached at the last epoch, rising linearly (default: 0.2)")
    add_speed_args(parser)

    group = parser.add_argument_group("data")
    group.add_argument("--subset", type=int, default=0,
                       help="train on a class-stratified subset of N Training images (default: 0, all)")
    group.add_argument("--crop", type=int, default=44, help="random crop size for training (default: 44)")
    group.add_argument("--jitter", type=float, default=0.5,
                       help="brightness and contrast jitter strength when --color_jitter is on (default: 0.5)")
    add_bool_flag(parser, "color_jitter", False, "brightness and contrast jitter while training")
    group.add_argument("--tta", default="none", choices=TTA_CHOICES,
                       help="tencrop: also report the softmax averaged over ten crops (default: none)")
    group.add_argument("--eval_batch_size", type=int, default=256, help="batch size for evaluation (default: 256)")
    add_bool_flag(parser, "test_every_epoch", True, "also evaluate PrivateTest every epoch (for curves only)")

    add_sgd_args(parser, epochs=600, learning_rate=0.025, epochs_help="training epochs")
    group = parser.add_argument_group("snapshots")
    group.add_argument("--snapshot_train_acc", type=float, nargs="*", default=[85.0, 90.0],
                       help="save train_acc_<N>.pt the first time the training accuracy reaches N percent; "
                            "relabeling starts from such a snapshot (default: 85 90)")
    return parser


def check_inputs(args: argparse.Namespace) -> None:
    """Stop with a message naming the flag when the genotype or the checkpoint to evaluate is unusable."""
    if args.evaluate:
        try:
            load_checkpoint(args.evaluate, kind=NETWORK_KINDS, required=["network", "model"])
        except CheckpointError as error:
            raise SystemExit(f"--evaluate: {error}") from None
        return
    try:
        genotype_io.load(args.genotype or args.arch)
    except (genotype_io.GenotypeError, FileNotFoundError) as error:
        flag = f"--genotype {args.genotype}" if args.genotype else f"--arch {args.arch}"
        raise SystemExit(f"{flag}: {error}") from None


def main(args: argparse.Namespace) -> Path:
    # Run directory, logging and the checkpoint to resume from.
    checkpoint = None
    if args.resume:
        resume_path = resolve_resume(args.resume)
        checkpoint = load_checkpoint(resume_path, kind="retrain", required=["model", "optimizer", "state", "args"])
        restore_args(args, checkpoint["args"], get_args_parser(), RUNTIME_OPTIONS)
        run_dir = resume_path.parent
    else:
        check_inputs(args)
        run_dir = make_run_dir(args.save, "eval" if args.evaluate else "retrain")
    setup_logging(run_dir)
    logger.info("command: %s", " ".join(sys.argv))
    if not args.resume:
        save_args(args, run_dir)
    snapshots = check_snapshots(args.snapshot_train_acc)
    device = select_device(args.device)
    configure_cpu(args.threads)
    seed_everything(args.seed)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    autocast = autocast_factory(device, args.amp)
    tencrop = args.tta == "tencrop"

    # Data: Training (augmented), PublicTest (validation) and PrivateTest (test).
    data = load_fer_data(args.data, batch_size=args.batch_size, device=device, memory_format=memory_format,
                         subset=args.subset, seed=args.seed, crop=args.crop,
                         jitter=args.jitter if args.color_jitter else 0.0, eval_batch_size=args.eval_batch_size)

    if args.evaluate:
        final_report(run_dir, data, device, memory_format, autocast, tencrop, {"evaluated": Path(args.evaluate)})
        return run_dir

    # The network.
    genotype = genotype_io.load(args.genotype or args.arch)
    model = NetworkFER(genotype, args.init_channels, len(data.classes), args.layers, auxiliary=args.auxiliary)
    logger.info("cell %s: %s", args.genotype or args.arch, genotype)
    logger.info("network: C=%d, %d layers, %.3f M parameters without the auxiliary head (%.3f M with it), "
                "%.1f M multiply-adds per %dx%d image", args.init_channels, args.layers,
                model.parameter_count() / 1e6, model.parameter_count(auxiliary=True) / 1e6,
                multiply_adds(model, data.eval_size) / 1e6, data.eval_size, data.eval_size)
    model = model.to(device=device, memory_format=memory_format)

    # Optimizer, schedule and the training state, restored when resuming.
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    trainer = Trainer("retrain", model, data, optimizer, cosine_scheduler(optimizer, args.epochs,
                                                                            args.learning_rate_min),
                      grad_scaler(device, args.amp), args, autocast,
                      drop_path=lambda epoch: drop_path_at(args.drop_path_prob, epoch, args.epochs))
    if checkpoint is not None:
        trainer.restore(checkpoint)
        set_rng_state(checkpoint["rng"])
        logger.info("resumed from %s after epoch %d", args.resume, trainer.state.epoch - 1)

    # Training: PublicTest picks best.pt after every epoch.
    state = fit(trainer, run_dir, args.epochs, aux_weight=args.auxiliary_weight if args.auxiliary else 0.0,
                grad_clip=args.grad_clip, snapshot_train_acc=snapshots, test_every_epoch=args.test_every_epoch,
                report_freq=args.report_freq, progress=args.progress)
    logger.info("best %s accuracy %.2f%% at epoch %d", "PublicTest", state.best_val_acc, state.best_epoch)

    # Report: the validation-selected checkpoint first, then the last epoch.
    final_report(run_dir, data, device, memory_format, autocast, tencrop,
                 {"best": run_dir / "best.pt", "last": run_dir / "last.pt"})
    return run_dir


if __name__ == "__main__":
    main(get_args_parser().parse_args())
