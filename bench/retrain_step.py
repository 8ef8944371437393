"""Benchmark the evaluation network: training and inference images per second and peak memory.

Each measurement runs in its own process, so its peak resident memory is its own. A training
step is a forward and backward pass with the auxiliary loss, gradient clipping and an SGD step
on a batch of 44x44 crops, with drop path on. Inference runs in eval mode on full 48x48 images.
Every configuration is measured with and without channels-last, and with autocast off and on
(bfloat16 on the CPU; bfloat16 and float16 on CUDA).

    python bench/retrain_step.py                                   # paper and reduced configurations
    python bench/retrain_step.py --configs reduced --threads 1 --steps 5
    python bench/retrain_step.py --device cuda --steps 20          # on a GPU
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (C, layers, training batch size)
CONFIGS = {"paper": (36, 12, 64), "reduced": (12, 5, 64)}


def measure(args: argparse.Namespace, config: str, task: str, channels_last: bool, amp: str) -> dict:
    import torch
    import torch.nn.functional as F

    from NAS.genotypes import load
    from NAS.model import NetworkFER
    from tools.runtime import autocast_factory, autocast_or_null, configure_cpu, grad_scaler

    torch.manual_seed(0)
    configure_cpu(args.threads)
    device = torch.device(args.device)
    C, layers, batch_size = CONFIGS[config]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = NetworkFER(load(args.arch), C, 7, layers, auxiliary=True).to(device=device, memory_format=memory_format)
    autocast = autocast_factory(device, amp)
    scaler = grad_scaler(device, amp)

    if task == "train":
        model.train()
        model.drop_path_prob = 0.1
        optimizer = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        x = torch.rand(batch_size, 1, 44, 44, device=device).contiguous(memory_format=memory_format)
        y = torch.randint(0, 7, (batch_size,), device=device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast_or_null(autocast):
                logits, logits_aux = model(x)
            loss = F.cross_entropy(logits.float(), y) + 0.4 * F.cross_entropy(logits_aux.float(), y)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(optimizer)
            scaler.update()

        images = batch_size
    else:
        model.eval()
        x = torch.rand(args.eval_batch_size, 1, 48, 48, device=device).contiguous(memory_format=memory_format)

        @torch.no_grad()
        def step() -> None:
            with autocast_or_null(autocast):
                model(x)

        images = args.eval_batch_size

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
    result = {
        "config": config, "task": task, "device": str(device), "C": C, "layers": layers, "batch_size": images,
        "channels_last": channels_last, "amp": amp, "threads": torch.get_num_threads(),
        "seconds_per_batch": round(seconds, 4), "images_per_second": round(images / seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if device.type == "cuda":
        result["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--tasks", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--arch", default="Auto_FERNet", help="genotype name or genotype.json (default: Auto_FERNet)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", nargs="+", default=None,
                        help="autocast settings to compare (default: off bf16 on the CPU, off bf16 fp16 on CUDA)")
    parser.add_argument("--channels_last", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    parser.add_argument("--eval_batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed batches")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before timing")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        config, task, layout, amp = args.child.split(",")
        print(json.dumps(measure(args, config, task, layout == "on", amp)))
        return

    amps = args.amp or (["off", "bf16", "fp16"] if args.device.startswith("cuda") else ["off", "bf16"])
    print(f"{'config':8} {'task':6} {'layout':14} {'amp':5} {'images/s':>9} {'s/batch':>8} {'peak RSS':>9}")
    for config in args.configs:
        for task in args.tasks:
            for layout in args.channels_last:
                for amp in amps:
                    command = [sys.executable, __file__, *sys.argv[1:], "--child", f"{config},{task},{layout},{amp}"]
                    completed = subprocess.run(command, capture_output=True, text=True)
                    name = "channels_last" if layout == "on" else "NCHW"
                    if completed.returncode != 0:
                        print(f"{config:8} {task:6} {name:14} {amp:5} failed: {completed.stderr.strip()[-300:]}")
                        continue
                    result = json.loads(completed.stdout.strip().splitlines()[-1])
                    cuda = f" cuda {result['peak_cuda_gb']:.2f} GB" if "peak_cuda_gb" in result else ""
                    print(f"{config:8} {task:6} {name:14} {amp:5} {result['images_per_second']:9.1f} "
                          f"{result['seconds_per_batch']:8.3f} {result['peak_rss_gb']:7.2f} GB{cuda}", flush=True)


if __name__ == "__main__":
    main()
