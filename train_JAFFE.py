"""Evaluate or fine-tune a FER2013 network on JAFFE.

``--zero_shot`` evaluates the checkpoint on all JAFFE images without training. Otherwise every
fold starts from the checkpoint and reports its last epoch's accuracy on its held-out images:
``--folds loso`` (default) leaves one of the 10 subjects out per fold, ``--folds 10`` uses
10 class-stratified folds that ignore subjects.

JAFFE's seven expressions are FER2013's seven classes, so the FER2013 classifier head is kept
by default (outputs matched by class name, which for a FER2013 checkpoint is the identity);
``--reset_head`` re-initialises it instead.

    python train_JAFFE.py --checkpoint runs/retrain-EXP-.../best.pt --zero_shot
    python train_JAFFE.py --checkpoint runs/retrain-EXP-.../best.pt
    python train_JAFFE.py --checkpoint runs/retrain-EXP-.../best.pt --folds 10 --reset_head
    python train_JAFFE.py --resume runs/finetune-jaffe-EXP-...
"""
from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

from dataloader.folds import Fold, loso_folds, stratified_folds
from dataloader.jaffe import DEFAULT_PATH, load_jaffe
from dataloader.labdata import LabDataset
from tools.cli import add_bool_flag
from tools.finetune import (Task, add_finetune_args, check_fold_choice, cross_validate, folds_or_exit, load_lab_data,
                            load_source, match_classes, prepare_args, start_run, zero_shot)

logger = logging.getLogger("train_JAFFE")

FOLD_CHOICES = ("loso", "10")
STRATIFIED_FOLD_COUNT = 10


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_JAFFE.py", description="Evaluate or fine-tune a FER2013 network "
                                                                         "on JAFFE.")
    add_finetune_args(parser, data_default=DEFAULT_PATH,
                      data_help="JAFFE: an h5 file written by python -m dataloader.prepare jaffe, or the raw "
                                "folder of TIFF files",
                      fold_choices=FOLD_CHOICES, fold_default="loso",
                      fold_help="loso: leave one subject out (10 folds); 10: 10 class-stratified folds that ignore "
                                "subjects, so a subject's images fall into training and test parts (default: loso)")
    add_bool_flag(parser, "zero_shot", False, "only evaluate the checkpoint on every JAFFE image, without training")
    add_bool_flag(parser, "reset_head", False,
                  "re-initialise the classifier head instead of keeping the FER2013 one")
    return parser


def build_folds(dataset: LabDataset, protocol: str, seed: int) -> tuple[list[Fold], list[str]]:
    """Return the folds of ``protocol`` and notes on what they guarantee."""
    if protocol == "loso":
        if dataset.subjects is None:
            raise SystemExit(f"--folds loso: {dataset.source} records no subject ids; use --folds 10, or prepare "
                             "an h5 file from the raw TIFF folder (python -m dataloader.prepare jaffe)")
        folds = folds_or_exit(lambda: loso_folds(dataset.subjects, dataset.labels), "--folds loso")
        return folds, ["Leave one subject out: each fold tests one subject, every image tested exactly once."]
    folds = folds_or_exit(lambda: stratified_folds(dataset.labels, STRATIFIED_FOLD_COUNT, seed=seed), "--folds 10")
    return folds, ["Stratified folds that ignore subjects: every image tested exactly once, but each subject has "
                   "images in training and test parts, so the accuracy is not subject-independent."]


def main(args: argparse.Namespace) -> Path:
    # Options, taken from args.json when resuming.
    run_dir = prepare_args(args, get_args_parser())
    if run_dir is not None and args.zero_shot:
        raise SystemExit(f"--resume {run_dir}: a zero-shot run has nothing to resume; run it again")

    # The FER2013 checkpoint and the data, cropped and resized to the checkpoint's input size.
    source = load_source(args.checkpoint)
    dataset = load_lab_data(partial(load_jaffe, size=source.eval_size), args.data, source.eval_size)

    if args.zero_shot:
        run_dir = start_run(args, None, "zeroshot-jaffe")
        zero_shot(source, dataset, "JAFFE", args, run_dir)
        return run_dir

    # Folds and the classifier head.
    folds, notes = build_folds(dataset, args.folds, args.seed)
    check_fold_choice(args.fold, len(folds), "JAFFE", args.folds)
    units = None
    if not args.reset_head:
        units = match_classes(source.classes, dataset.classes)
        if None in units:
            raise SystemExit(f"the checkpoint's classes ({', '.join(source.classes)}) do not cover JAFFE's "
                             f"({', '.join(dataset.classes)}); pass --reset_head to re-initialise the head")
    task = Task("JAFFE", dataset, folds, args.folds, notes, units)

    # Run directory, logging and arguments.
    run_dir = start_run(args, run_dir, "finetune-jaffe")

    # Cross-validation, then the summary over folds.
    cross_validate(task, source, args, run_dir)
    return run_dir


if __name__ == "__main__":
    main(get_args_parser().parse_args())
