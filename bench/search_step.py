"""Benchmark one search step of the supernet and print images per second and peak memory.

Each configuration runs in its own process, so its peak resident memory is its own. A step is
one architecture step on a batch of the architecture half plus one weight step on a training
batch; images per second counts the training batch only.

    python bench/search_step.py                       # the original configuration, first and second order
    python bench/search_step.py --batch_size 24 --init_channels 16 --layers 8 --steps 3
    python bench/search_step.py --modes first --partial_channels 4
    python bench/search_step.py --modes first --no-recompute     # more memory, less time

On a glibc system, setting MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_ to a large value
keeps large freed tensors in the process instead of returning them to the system; the first
line printed says whether they were set.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(args: argparse.Namespace, mode: str) -> dict:
    import torch
    import torch.nn.functional as F

    from NAS.architect import Architect
    from NAS.model_search import SearchNetwork

    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    model = SearchNetwork(args.init_channels, 7, args.layers, partial_channels=args.partial_channels,
                          recompute=args.recompute).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, unrolled=(mode == "second"))
    size = args.input_size

    def batch():
        x = torch.rand(args.batch_size, 1, size, size, device=device).contiguous(memory_format=memory_format)
        y = torch.randint(0, 7, (args.batch_size,), device=device)
        return x, y

    def step():
        x_train, y_train = batch()
        x_valid, y_valid = batch()
        architect.step(x_train, y_train, x_valid, y_valid, 0.025, optimizer)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_train), y_train)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.weight_parameters(), 5.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "mode": mode, "device": str(device), "batch_size": args.batch_size, "init_channels": args.init_channels,
        "layers": args.layers, "input_size": size, "channels_last": args.channels_last,
        "partial_channels": args.partial_channels, "recompute": args.recompute, "threads": torch.get_num_threads(),
        "seconds_per_step": round(seconds, 3), "images_per_second": round(args.batch_size / seconds, 2),
        "peak_rss_gb": round(peak_kb / 2**20, 2),
    }
    if device.type == "cuda":
        result["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["first", "second"], choices=["first", "second"])
    parser.add_argument("--batch_size", type=int, default=24)
    parser.add_argument("--init_channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--input_size", type=int, default=44)
    parser.add_argument("--partial_channels", type=int, default=1,
                        help="partial-channel factor K (1 = all channels, 4 = PC-DARTS default)")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=True,
                        help="recompute the middle of each separable convolution in backward (default: on)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args, args.child)))
        return

    allocator = {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    print(f"allocator settings: {allocator}")
    for mode in args.modes:
        command = [sys.executable, __file__, *sys.argv[1:], "--child", mode]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"{mode}: failed\n{completed.stderr}")
            continue
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"{mode:>6} order: {result['images_per_second']:7.2f} images/s, "
              f"{result['seconds_per_step']:.3f} s/step, peak RSS {result['peak_rss_gb']:.2f} GB  {json.dumps(result)}")


if __name__ == "__main__":
    main()
