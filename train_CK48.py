"""Fine-tune a FER2013 network on CK+48 with 10-fold cross-validation.

Every fold starts from the same checkpoint and reports its last epoch's accuracy on its
held-out images. ``--folds subject`` (default) keeps each subject in one fold and tests every
image once. ``--folds paper`` uses the fixed-block folds of the Auto-FERNet authors' code
(class CK in dataloader/dataload_h5.py of github.com/liwei109/Auto-FERNet): they overlap, leave
24 of the 981 images untested and put images of one subject into training and test parts.

The classifier head is re-initialised for CK+'s seven classes by default. ``--keep_head``
keeps the FER2013 head and maps its outputs by class name (anger<-Angry, disgust<-Disgust,
fear<-Fear, happy<-Happy, sadness<-Sad, surprise<-Surprise). Contempt has no FER2013 output,
so ``--keep_head`` stops with an error unless ``--exclude_contempt`` drops the contempt
images or ``--contempt_from_neutral`` starts the contempt output from FER2013's Neutral
output. The latter is what the authors' train_CK48.py (github.com/liwei109/Auto-FERNet) does:
it loads the FER2013 weights unchanged, and its labels (CK_data.h5 order) put contempt on
output 6, FER2013's Neutral.

    python train_CK48.py --checkpoint runs/retrain-EXP-.../best.pt
    python train_CK48.py --checkpoint runs/retrain-EXP-.../best.pt --folds paper --data CK_data.h5
    python train_CK48.py --checkpoint runs/retrain-EXP-.../best.pt --keep_head --contempt_from_neutral
    python train_CK48.py --resume runs/finetune-ck48-EXP-...
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dataloader.ck48 import DEFAULT_PATH, load_ck48, prepare_command
from dataloader.folds import PAPER_FOLD_COUNT, Fold, ck48_paper_folds, fold_coverage, subject_folds
from dataloader.labdata import LabDataset
from tools.cli import add_bool_flag
from tools.finetune import (Task, add_finetune_args, check_fold_choice, cross_validate, drop_class, folds_or_exit,
                            load_lab_data, load_source, match_classes, prepare_args, start_run, subject_overlap_count)

logger = logging.getLogger("train_CK48")

FOLD_CHOICES = ("subject", "paper")
SUBJECT_FOLD_COUNT = 10
CONTEMPT = "contempt"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_CK48.py",
                                     description="Fine-tune a FER2013 network on CK+48 with 10-fold cross-validation.")
    add_finetune_args(parser, data_default=DEFAULT_PATH,
                      data_help="CK+48: an h5 file written by python -m dataloader.prepare ck48, CK_data.h5 "
                                "(--folds paper only), or the raw folder of class folders",
                      fold_choices=FOLD_CHOICES, fold_default="subject",
                      fold_help="subject: 10 class-stratified folds, no subject in two folds, every image tested "
                                "once; paper: the fixed-block folds of the authors' code, which overlap, leave 24 "
                                "images untested and share subjects between training and test (default: subject)")
    add_bool_flag(parser, "keep_head", False,
                  "keep the FER2013 classifier and map its outputs to CK+ classes by name, instead of "
                  "re-initialising it; contempt needs --exclude_contempt or --contempt_from_neutral")
    add_bool_flag(parser, "exclude_contempt", False, "drop the contempt images and class (6 classes remain)")
    add_bool_flag(parser, "contempt_from_neutral", False,
                  "with --keep_head, start the contempt output from FER2013's Neutral output, as the authors' "
                  "train_CK48.py does")
    return parser


def build_folds(dataset: LabDataset, protocol: str, seed: int) -> tuple[list[Fold], list[str], dict]:
    """Return the folds of ``protocol``, notes on what they guarantee, and extra fields for the reports."""
    if protocol == "subject":
        if dataset.subjects is None:
            raise SystemExit(
                f"--folds subject: {dataset.source} ({dataset.layout} layout) records no subject ids, so folds "
                f"that hold subjects out cannot be built; use --folds paper, or write an h5 file with subjects "
                f"from the raw class folders with\n  {prepare_command()}\nor pass the raw folder itself to --data")
        folds = folds_or_exit(lambda: subject_folds(dataset.labels, dataset.subjects, SUBJECT_FOLD_COUNT, seed=seed),
                              "--folds subject")
        notes = ["Subject folds: stratified by class, no subject in two folds, every image tested exactly once."]
        return folds, notes, {}

    folds = folds_or_exit(lambda: ck48_paper_folds(dataset), "--folds paper")
    coverage = fold_coverage(folds, len(dataset))
    shared = subject_overlap_count(folds, dataset.subjects)
    subjects = (f"{shared} of {PAPER_FOLD_COUNT} folds test a subject that also has training images"
                if shared is not None else
                "the data records no subjects; on the real CK+48 every fold tests a subject that also has "
                "training images")
    notes = [f"Paper folds (fixed blocks of each class in CK_data.h5 order): the folds overlap "
             f"({coverage.tested_more_than_once} of the {len(dataset)} images are tested in more than one fold), "
             f"{coverage.untested} images are never tested, and the folds are subject-overlapping ({subjects}), "
             f"so the accuracy is not subject-independent."]
    return folds, notes, {"subject_overlapping_folds": shared}


def head_units(args: argparse.Namespace, source_classes: list[str], classes: list[str]) -> list[int | None] | None:
    """Return the checkpoint output each CK+ output starts from, or None to re-initialise the head."""
    if args.contempt_from_neutral and not args.keep_head:
        raise SystemExit("--contempt_from_neutral applies only with --keep_head")
    if args.contempt_from_neutral and args.exclude_contempt:
        raise SystemExit("--contempt_from_neutral and --exclude_contempt contradict each other; pass one")
    if not args.keep_head:
        return None
    overrides = {CONTEMPT: "neutral"} if args.contempt_from_neutral else {}
    units = match_classes(source_classes, classes, overrides)
    missing = [name for name, unit in zip(classes, units) if unit is None]
    if missing == [CONTEMPT]:
        raise SystemExit("--keep_head: the CK+ class contempt has no output in the FER2013 head; pass "
                         "--exclude_contempt to drop the contempt images, --contempt_from_neutral to train "
                         "FER2013's Neutral output as contempt (the authors' code does this), or leave out "
                         "--keep_head to re-initialise the head")
    if missing:
        raise SystemExit(f"--keep_head: the checkpoint's classes ({', '.join(source_classes)}) have no output for "
                         f"{', '.join(missing)}; leave out --keep_head to re-initialise the head")
    return units


def main(args: argparse.Namespace) -> Path:
    # Options, taken from args.json when resuming.
    run_dir = prepare_args(args, get_args_parser())

    # The FER2013 checkpoint and the data.
    source = load_source(args.checkpoint)
    dataset = load_lab_data(load_ck48, args.data, source.eval_size)

    # Folds, built before contempt is excluded so that both variants test the same images.
    folds, notes, info = build_folds(dataset, args.folds, args.seed)
    check_fold_choice(args.fold, len(folds), "CK+48", args.folds)
    if args.exclude_contempt:
        dataset, folds = drop_class(dataset, folds, CONTEMPT)
        notes.append("Contempt images are excluded (--exclude_contempt).")
    task = Task("CK+48", dataset, folds, args.folds, notes, head_units(args, source.classes, dataset.classes), info)

    # Run directory, logging and arguments.
    run_dir = start_run(args, run_dir, "finetune-ck48")

    # Cross-validation, then the summary over folds.
    cross_validate(task, source, args, run_dir)
    return run_dir


if __name__ == "__main__":
    main(get_args_parser().parse_args())
