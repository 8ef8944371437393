"""Search a FER2013 cell with SGAS: a DARTS supernet with greedy edge decisions.

The search reads only the Training split: a seeded, class-stratified split gives a weight half
(trains the network weights) and an architecture half (trains the architecture weights).
PublicTest and PrivateTest are never read.

    python train_search.py --data data/FER_2013/data.h5                      # GPU, the full budget
    python train_search.py --batch_size 24 --batch_increase 8 --learning_rate 0.025
    python train_search.py --resume runs/search-EXP-20260101-120000          # continue a run
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from dataloader.batches import TensorBatches, center_crop, make_augment
from dataloader.fer2013 import CLASSES, DEFAULT_PATH, load_fer2013
from dataloader.splits import stratified_split, stratified_subset
from NAS import genotypes as genotype_io
from NAS.architect import PENALTIES, Architect
from NAS.model_search import CELL_TYPES, UNDECIDED, SearchNetwork
from NAS.operations import PRIMITIVES
from NAS.sgas import decide_edge, derive_genotype, edge_scores, is_decision_epoch, operation_distribution, total_epochs
from tools.checkpoint import atomic_save, load_checkpoint, resolve_resume, resume_hint
from tools.cli import add_bool_flag, add_runtime_args, restore_args
from tools.engine import evaluate, search_one_epoch
from tools.experiment import MetricsCSV, make_run_dir, save_args, setup_logging, write_json
from tools.runtime import (AMP_CHOICES, autocast_factory, configure_cpu, rng_state, seed_everything, select_device,
                           set_rng_state)

logger = logging.getLogger("train_search")

METRIC_FIELDS = ["epoch", "lr", "batch_size", "train_loss", "train_acc", "arch_loss", "arch_acc",
                 "arch_eval_acc", "decisions", "seconds", "images_per_second"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Search a FER2013 cell with SGAS.", add_help=True)
    add_runtime_args(parser, DEFAULT_PATH)
    group = parser.add_argument_group("data")
    group.add_argument("--subset", type=int, default=0,
                       help="search on a class-stratified subset of N Training images (default: 0, all)")
    group.add_argument("--train_portion", type=float, default=0.5,
                       help="share of the searched images in the weight half (default: 0.5)")
    group.add_argument("--crop", type=int, default=44, help="random crop size in pixels (default: 44)")
    group.add_argument("--jitter", type=float, default=0.5,
                       help="brightness and contrast jitter, as torchvision's ColorJitter (default: 0.5)")

    group = parser.add_argument_group("network")
    group.add_argument("--init_channels", type=int, default=16, help="channels of the first cells (default: 16)")
    group.add_argument("--layers", type=int, default=8, help="number of cells (default: 8)")
    group.add_argument("--partial_channels", type=int, default=1,
                       help="PC-DARTS partial channels K: mixed operations see 1/K of the channels "
                            "(default: 1, all; 4 is faster, a different algorithm)")
    group.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels-last memory format (default: on; 1.7x faster on the CPU)")
    group.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=True,
                       help="run the middle of each separable convolution again in backward instead of "
                            "keeping its maps: about a sixth less memory, 4-8%% more time, the same results "
                            "(default: on)")
    group.add_argument("--amp", default="off", choices=AMP_CHOICES, help="autocast precision (default: off)")

    group = parser.add_argument_group("network weights")
    group.add_argument("--batch_size", type=int, default=24, help="starting batch size (default: 24)")
    group.add_argument("--batch_increase", type=int, default=8,
                       help="batch size added after each epoch with a decision (default: 8)")
    group.add_argument("--learning_rate", type=float, default=0.025, help="initial SGD learning rate (default: 0.025)")
    group.add_argument("--learning_rate_min", type=float, default=0.001, help="final cosine learning rate (default: 0.001)")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument("--weight_decay", type=float, default=3e-4, help="SGD weight decay (default: 3e-4)")
    group.add_argument("--grad_clip", type=float, default=5.0, help="gradient norm clipping (default: 5)")

    group = parser.add_argument_group("architecture weights")
    group.add_argument("--arch_learning_rate", type=float, default=3e-4, help="Adam learning rate (default: 3e-4)")
    group.add_argument("--arch_weight_decay", type=float, default=1e-3, help="Adam weight decay (default: 1e-3)")
    add_bool_flag(parser, "unrolled", False, "second-order architecture gradient (DARTS unrolled)")
    group.add_argument("--complexity_weight", type=float, default=0.5,
                       help="weight of the complexity penalty; 0 turns it off (default: 0.5)")
    group.add_argument("--complexity_penalty", default="expected", choices=PENALTIES,
                       help="expected: mean expected parameter share over undecided edges; original: the "
                            "original code's sum(alpha^2 x share) over the first normal edge (default: expected)")

    group = parser.add_argument_group("SGAS decisions")
    group.add_argument("--warmup_dec_epoch", type=int, default=9, help="first decision epoch, 0-based (default: 9)")
    group.add_argument("--decision_freq", type=int, default=5, help="epochs between decisions (default: 5)")
    add_bool_flag(parser, "use_history", False, "SGAS criterion 2: also score the stability of each edge")
    group.add_argument("--history_size", type=int, default=4, help="epochs of history for criterion 2 (default: 4)")
    group.add_argument("--post_train", type=int, default=5,
                       help="epochs trained after the last decision, plus one (default: 5)")
    add_bool_flag(parser, "post_val", False,
                  "evaluate the architecture half in eval mode after each decision epoch and at the end")
    group.add_argument("--epochs", type=int, default=0,
                       help="total epochs; 0 uses warmup + decision_freq x 7 + post_train + 1 (default: 0)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    needed = total_epochs(args.warmup_dec_epoch, args.decision_freq, args.post_train)
    if args.epochs and args.epochs < needed - args.post_train:
        raise SystemExit(f"--epochs {args.epochs} is too short: the decisions need "
                         f"{needed - args.post_train} epochs with these settings (all of them: {needed})")
    if args.decision_freq < 1:
        raise SystemExit(f"--decision_freq must be at least 1, got {args.decision_freq}")
    if not 0 < args.train_portion < 1:
        raise SystemExit(f"--train_portion must be between 0 and 1, got {args.train_portion}")
    if args.batch_size < 1 or args.batch_increase < 0:
        raise SystemExit("--batch_size must be positive and --batch_increase non-negative")
    if args.history_size < 1:
        raise SystemExit(f"--history_size must be at least 1, got {args.history_size}")


def distance_from_uniform(weights: torch.Tensor, decisions: list[int]) -> dict[str, float | None]:
    """Summarise how far the undecided edges' softmax weights have moved from uniform
    (None once every edge is decided, so the JSON-lines file stays valid JSON)."""
    rows = [weights[e] for e, d in enumerate(decisions) if d == UNDECIDED]
    if not rows:
        return {"max_weight": None, "mean_l1_from_uniform": None}
    matrix = torch.stack(rows)
    uniform = 1.0 / matrix.shape[1]
    return {"max_weight": float(matrix.max()), "mean_l1_from_uniform": float((matrix - uniform).abs().sum(1).mean())}


# Options that a resumed run may change on the command line; every other option comes from the checkpoint.
RUNTIME_OPTIONS = {"resume", "device", "progress", "report_freq", "threads", "data", "recompute"}


def main(args: argparse.Namespace) -> Path:
    # Run directory, logging and the checkpoint to resume from.
    checkpoint = None
    if args.resume:
        resume_path = resolve_resume(args.resume)
        checkpoint = load_checkpoint(resume_path, kind="search",
                                     required=["model", "optimizer", "architect", "scheduler", "epoch", "args"])
        restore_args(args, checkpoint["args"], get_args_parser(), RUNTIME_OPTIONS)
        run_dir = resume_path.parent
    else:
        run_dir = make_run_dir(args.save, "search")
    check_args(args)
    epochs = args.epochs or total_epochs(args.warmup_dec_epoch, args.decision_freq, args.post_train)
    setup_logging(run_dir)
    logger.info("command: %s", " ".join(sys.argv))
    if not args.resume:
        save_args(args, run_dir)
    device = select_device(args.device)
    configure_cpu(args.threads)
    seed_everything(args.seed)
    logger.info("run directory %s, device %s, %d epochs", run_dir, device, epochs)

    # Data: the Training split only, split into a weight half and an architecture half.
    training = load_fer2013(args.data, splits=("Training",))["Training"]
    pool = torch.arange(len(training))
    if args.subset:
        pool = stratified_subset(training.labels, args.subset, seed=args.seed)
    weight_part, arch_part = stratified_split(training.labels[pool], args.train_portion, seed=args.seed)
    weight_idx, arch_idx = pool[weight_part], pool[arch_part]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    augment = make_augment(crop=args.crop, flip=True, brightness=args.jitter, contrast=args.jitter)
    weight_batches = TensorBatches(training.pixels, training.labels, args.batch_size, shuffle=True, device=device,
                                   augment=augment, seed=args.seed, indices=weight_idx, memory_format=memory_format)
    arch_batches = TensorBatches(training.pixels, training.labels, args.batch_size, shuffle=True, device=device,
                                 augment=augment, seed=args.seed + 1, indices=arch_idx, memory_format=memory_format)
    logger.info("search data: %d Training images (%s), weight half %d, architecture half %d; "
                "PublicTest and PrivateTest are not read", len(pool), "subset" if args.subset else "all",
                len(weight_idx), len(arch_idx))

    # Supernet, optimizers and the architect.
    model = SearchNetwork(args.init_channels, len(CLASSES), args.layers,
                          partial_channels=args.partial_channels, recompute=args.recompute).to(device)
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.weight_parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=args.learning_rate_min)
    autocast = autocast_factory(device, args.amp)
    architect = Architect(model, lr=args.arch_learning_rate, weight_decay=args.arch_weight_decay,
                          momentum=args.momentum, network_weight_decay=args.weight_decay, unrolled=args.unrolled,
                          complexity_weight=args.complexity_weight, complexity_penalty=args.complexity_penalty,
                          autocast=autocast)
    logger.info("supernet: C=%d, %d layers, %d operations, %.2f M weights; %s order; %s",
                args.init_channels, args.layers, len(PRIMITIVES),
                sum(p.numel() for p in model.weight_parameters()) / 1e6,
                "second" if args.unrolled else "first", architect.describe_penalty())

    # Search state, restored when resuming.
    start_epoch = 0
    history: dict[str, list[torch.Tensor]] = {t: [] for t in CELL_TYPES}
    decision_log: list[dict] = []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        model.set_decisions(checkpoint["decisions"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        architect.optimizer.load_state_dict(checkpoint["architect"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history = {t: list(checkpoint["history"][t]) for t in CELL_TYPES}
        decision_log = list(checkpoint["decision_log"])
        weight_batches.load_state_dict(checkpoint["weight_batches"])
        arch_batches.load_state_dict(checkpoint["arch_batches"])
        weight_batches.batch_size = arch_batches.batch_size = checkpoint["batch_size"]
        set_rng_state(checkpoint["rng"])
        start_epoch = int(checkpoint["epoch"])
        logger.info("resumed from %s: %d epochs done, continuing with epoch %d", args.resume, start_epoch,
                    start_epoch)
        if start_epoch >= epochs:
            logger.info("the run already finished all %d epochs: only its genotype is written again", epochs)
    metrics = MetricsCSV(run_dir / "metrics.csv", METRIC_FIELDS, keep_until=start_epoch)
    weights_log = run_dir / "arch_weights.jsonl"
    if checkpoint is not None and weights_log.exists():
        finished = [line for line in weights_log.read_text().splitlines() if json.loads(line)["epoch"] < start_epoch]
        weights_log.write_text("".join(line + "\n" for line in finished))
    elif checkpoint is None:
        weights_log.write_text("")

    # The search: train, score and decide edges, grow the batch, save.
    with resume_hint(run_dir, "train_search.py"):
        for epoch in range(start_epoch, epochs):
            lr = scheduler.get_last_lr()[0]
            logger.info("epoch %d/%d: lr %.5f, batch size %d", epoch, epochs - 1, lr, weight_batches.batch_size)
            result = search_one_epoch(model, architect, weight_batches, arch_batches, optimizer, lr, args.grad_clip,
                                      epoch=epoch, autocast=autocast, report_freq=args.report_freq,
                                      progress=args.progress, total=min(len(weight_batches), len(arch_batches)))
            scheduler.step()

            new_decisions_made = []
            record = {"epoch": epoch, "weights": {}, "scores": {}, "decisions": {}, "distance_from_uniform": {}}
            for cell_type in CELL_TYPES:
                with torch.no_grad():
                    weights = model.arch_weights(cell_type).float().cpu()
                decisions = model.decisions[cell_type]
                score = edge_scores(weights, history[cell_type] if args.use_history else None)
                record["weights"][cell_type] = weights.tolist()
                record["scores"][cell_type] = score.tolist()
                record["distance_from_uniform"][cell_type] = distance_from_uniform(weights, decisions)
                _, distribution = operation_distribution(weights)
                history[cell_type] = (history[cell_type] + [distribution])[-args.history_size:]
                if is_decision_epoch(epoch, args.warmup_dec_epoch, args.decision_freq) and UNDECIDED in decisions:
                    decision, new_decisions = decide_edge(cell_type, weights, decisions, score, epoch)
                    model.set_decisions({**model.decisions, cell_type: new_decisions})
                    new_decisions_made.append(decision)
                    entry = {**decision.__dict__, **{f"{k}_before": v for k, v in
                                                      record["distance_from_uniform"][cell_type].items()}}
                    decision_log.append(entry)
                    logger.info("decision: %s (undecided edges before it: max softmax weight %.4f, mean L1 "
                                "distance from uniform %.4f)", decision.describe(), entry["max_weight_before"],
                                entry["mean_l1_from_uniform_before"])
                record["decisions"][cell_type] = list(model.decisions[cell_type])
            genotype = derive_genotype({t: torch.tensor(record["weights"][t]) for t in CELL_TYPES}, model.decisions)
            record["genotype"] = genotype_io.to_dict(genotype)
            with weights_log.open("a") as file:
                file.write(json.dumps(record) + "\n")
            logger.info("genotype after epoch %d: %s", epoch, genotype)

            arch_eval_acc = ""
            if args.post_val and (new_decisions_made or epoch == epochs - 1):
                _, accuracy = evaluate(model, TensorBatches(training.pixels, training.labels, 256, shuffle=False,
                                                            device=device, indices=arch_idx,
                                                            memory_format=memory_format),
                                       autocast=autocast, transform=lambda x: center_crop(x, args.crop))
                arch_eval_acc = round(accuracy, 3)
                logger.info("architecture half, eval mode: accuracy %.2f%%", accuracy)
            metrics.append({"epoch": epoch, "lr": lr, "batch_size": weight_batches.batch_size,
                            "train_loss": result.train_loss, "train_acc": result.train_acc,
                            "arch_loss": result.arch_loss, "arch_acc": result.arch_acc, "arch_eval_acc": arch_eval_acc,
                            "decisions": ";".join(d.describe() for d in new_decisions_made),
                            "seconds": round(result.seconds, 1),
                            "images_per_second": round(result.images / max(result.seconds, 1e-9), 2)})
            logger.info("epoch %d done in %.0f s: train acc %.2f%% loss %.4f, arch acc %.2f%% loss %.4f",
                        epoch, result.seconds, result.train_acc, result.train_loss, result.arch_acc, result.arch_loss)
            if new_decisions_made and args.batch_increase:
                weight_batches.batch_size = arch_batches.batch_size = weight_batches.batch_size + args.batch_increase

            atomic_save({
                "kind": "search", "epoch": epoch + 1, "epochs": epochs, "model": model.state_dict(),
                "decisions": {t: list(model.decisions[t]) for t in CELL_TYPES},
                "history": history, "decision_log": decision_log, "optimizer": optimizer.state_dict(),
                "architect": architect.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "batch_size": weight_batches.batch_size, "weight_batches": weight_batches.state_dict(),
                "arch_batches": arch_batches.state_dict(), "rng": rng_state(), "args": vars(args),
                "genotype": genotype_io.to_dict(genotype), "init_channels": args.init_channels, "layers": args.layers,
                "classes": list(CLASSES), "primitives": list(PRIMITIVES),
            }, run_dir / "last.pt")

    # The result: genotype.json and a line for NAS/genotypes.py.
    final = derive_genotype({t: model.arch_weights(t).detach().cpu() for t in CELL_TYPES}, model.decisions)
    undecided = sum(d == UNDECIDED for t in CELL_TYPES for d in model.decisions[t])
    write_json({"genotype": genotype_io.to_dict(final), "decisions": decision_log, "epochs": epochs,
                "undecided_edges": undecided, "args": vars(args)}, run_dir / "genotype.json")
    if undecided:
        logger.warning("%d edges are still undecided; the genotype fills them with the DARTS rule", undecided)
    logger.info("final genotype written to %s", run_dir / "genotype.json")
    logger.info("paste into NAS/genotypes.py:\n%s", genotype_io.to_python(final, "Searched"))
    print(genotype_io.to_python(final, "Searched"))
    return run_dir


if __name__ == "__main__":
    main(get_args_parser().parse_args())
