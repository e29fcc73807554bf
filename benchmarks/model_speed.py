"""MemSeg inference speed on CPU, and the memory-bank selection against a plain loop.

Run:  .venv/bin/python benchmarks/model_speed.py [--size 256] [--memory 30] [--repeats 5]

Prints, measured side by side in one run (every timed function once per round, in turn, so that a slow
moment of a shared machine falls on all of them alike; the median of the rounds):
  1. memory-bank selection (distances + argmin + DI) vectorised vs one loop per image and sample;
  2. images/s at batch 1 and 8 for fp32 / bf16 autocast x channels_last off / on, each with the
     max abs difference of its anomaly maps to fp32, relative to the spread (std) of the fp32
     maps: an untrained model's maps vary little, so an absolute limit would accept anything. A
     setting may only become the CPU default in ``memseg_tutorial.model.memseg.CPU_INFERENCE``
     if that ratio is below 5 %;
  3. peak extra resident memory of each measurement (RSS sampled every 2 ms, minus RSS before;
     freed memory is handed back to the system first, so the order of the rows does not matter).
Random encoder weights (offline machine): speed does not depend on the weight values.
The selection is timed on 1 thread: the loop's thousands of tiny operations would otherwise
mostly measure OpenMP threads waking up (with OMP_WAIT_POLICY=PASSIVE), not the arithmetic.
On a machine shared with other jobs, compare runs with ``--threads 1`` and the default: OpenMP
parallel regions slow down badly when their threads are descheduled.
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads are 5-10x slower when other programs share the cores; passive
# waiting costs nothing on a quiet machine. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import ctypes  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from memseg_tutorial.model import InferenceSettings, MemSeg  # noqa: E402
from memseg_tutorial.model.backbone import RANDOM_WEIGHTS_WARNING  # noqa: E402
from memseg_tutorial.model.memseg import CPU_INFERENCE  # noqa: E402

warnings.filterwarnings("ignore", message=RANDOM_WEIGHTS_WARNING)


def current_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def release_freed_memory() -> None:
    """Hand memory that is free but kept by the allocator back to the system (glibc only), so
    that a measurement does not look small just because an earlier one left room."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def run_measured(function):
    """Run ``function`` while a thread samples the RSS: (its result, peak extra RSS in MiB).

    (No fork: forking after OpenMP threads started can deadlock the child.)
    """
    release_freed_memory()
    start_rss = current_rss_kib()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_kib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = function()
    finally:
        done.set()
        sampler.join()
    return result, (peak[0] - start_rss) / 1024


def interleaved_medians(functions: dict, rounds: int, budget_s: float = 60.0) -> tuple[dict, dict]:
    """({key: median seconds}, {key: last result}) of ``functions``, each warmed up once, then
    called once per round, in turn: a slow moment of a shared machine falls on every one alike.

    Stops adding rounds after about ``budget_s`` seconds (at least one timed round).
    """
    results = {key: function() for key, function in functions.items()}  # warm-up: allocations, kernels
    times: dict = {key: [] for key in functions}
    spent = 0.0
    for _ in range(max(rounds, 1)):
        for key, function in functions.items():
            start = time.perf_counter()
            results[key] = function()
            times[key].append(time.perf_counter() - start)
            spent += times[key][-1]
        if spent > budget_s:
            break
    return {key: statistics.median(values) for key, values in times.items()}, results


def loop_selection(features, memory):
    """Reference: one input and one memory sample at a time."""
    indices, differences = [], [[] for _ in features]
    for b in range(features[0].shape[0]):
        distances = torch.stack(
            [
                sum(((m[n] - f[b]) ** 2).mean() for f, m in zip(features, memory, strict=True))
                for n in range(memory[0].shape[0])
            ]
        )
        best = int(distances.argmin())
        indices.append(best)
        for level, (f, m) in enumerate(zip(features, memory, strict=True)):
            differences[level].append((m[best] - f[b]) ** 2)
    return torch.tensor(indices), [torch.stack(d) for d in differences]


def bench_selection(model: MemSeg, images: torch.Tensor, repeats: int) -> None:
    """Memory-bank selection (distances + argmin + DI), vectorised vs the plain loop."""
    with torch.no_grad():
        features = model.encoder.memory_features(images)
    memory = model.memory_bank.levels
    model.memory_bank._centred = None  # time the first call too: it builds the centred cache
    start = time.perf_counter()
    vector_di, vector_indices = model.memory_bank.difference(features)
    first_call = time.perf_counter() - start
    loop_indices, loop_di = loop_selection(features, memory)
    max_diff = max(float((a - b).abs().max()) for a, b in zip(vector_di, loop_di, strict=True))
    scale = max(float(d.abs().max()) for d in loop_di)
    if not torch.equal(vector_indices, loop_indices) or max_diff > 1e-4 * scale:
        raise SystemExit(f"vectorised and loop selection disagree: indices {vector_indices.tolist()} vs "
                         f"{loop_indices.tolist()}, max |DI diff| {max_diff:.1e} of {scale:.1e}")

    functions = {"vectorised": lambda: model.memory_bank.difference(features),
                 "loop": lambda: loop_selection(features, memory)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module docstring
    try:
        with torch.no_grad():
            seconds, _ = interleaved_medians(functions, repeats)
            (_, vector_peak), (_, loop_peak) = (run_measured(function) for function in functions.values())
    finally:
        torch.set_num_threads(threads)
    vector_s, loop_s = seconds["vectorised"], seconds["loop"]
    batch, n_memory = len(images), len(model.memory_bank)
    print(f"memory-bank selection, batch {batch}, N={n_memory}, 1 thread "
          f"(same indices: yes, max |DI diff| {max_diff:.1e}):")
    print(f"  vectorised: {vector_s * 1e3:8.1f} ms   peak extra {vector_peak:6.0f} MiB"
          f"   (first call, building the cached centred bank: {first_call * 1e3:.0f} ms)")
    print(f"  loop      : {loop_s * 1e3:8.1f} ms   peak extra {loop_peak:6.0f} MiB")
    print(f"  speed-up  : {loop_s / vector_s:.1f}x (target >= 5x)\n")


def bench_inference(model: MemSeg, images: dict[int, torch.Tensor], repeats: int) -> None:
    """images/s per configuration and batch, with the max abs difference of the maps to fp32."""
    configs = {
        "fp32": InferenceSettings(False, None),
        "fp32 channels_last": InferenceSettings(True, None),
        "bf16 autocast": InferenceSettings(False, torch.bfloat16),
        "bf16 autocast channels_last": InferenceSettings(True, torch.bfloat16),
    }
    reference = {b: model.anomaly_map(x, InferenceSettings()) for b, x in images.items()}
    spread = {b: float(maps.std()) for b, maps in reference.items()}
    print(f"fp32 maps: std {spread[1]:.2e} (batch 1), {spread[8]:.2e} (batch 8)")
    print(f"{'configuration':30s} {'batch':>5s} {'images/s':>9s} {'max|map-fp32|':>14s} {'/ std':>7s} {'peak MiB':>9s}")
    # channels_last rows share one copy of the model in that layout: all rows take turns in each round.
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    nets = {name: channels_last if settings.channels_last else model for name, settings in configs.items()}
    functions = {(name, batch): (lambda net=nets[name], x=x, settings=settings: net.anomaly_map(x, settings))
                 for name, settings in configs.items() for batch, x in images.items()}
    seconds, maps = interleaved_medians(functions, repeats)
    results = {}
    for (name, batch), function in functions.items():
        _, peak = run_measured(function)
        throughput = batch / seconds[(name, batch)]
        diff = float((maps[(name, batch)] - reference[batch]).abs().max())
        relative = diff / spread[batch]
        results[(name, batch)] = (throughput, relative)
        print(f"{name:30s} {batch:5d} {throughput:9.2f} {diff:14.2e} {relative:6.1%} {peak:9.0f}", flush=True)

    print()
    for batch in images:
        valid = {n: r for (n, b), r in results.items() if b == batch and r[1] < 0.05}
        best = max(valid, key=lambda n: valid[n][0])
        base = results[("fp32", batch)][0]
        print(f"batch {batch}: best valid = {best} ({valid[best][0]:.2f} img/s, "
              f"{valid[best][0] / base:.2f}x fp32)")
    print(f"current CPU default (memseg.CPU_INFERENCE): {CPU_INFERENCE}")


def peak_rss_mib() -> float | None:
    """The process's peak resident memory, where the OS reports it (not on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--memory", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is printed (default 5)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default). On a CPU shared with other jobs, "
                             "1 thread avoids OpenMP threads waiting for each other.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = {name: (name in flags) for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {isa}")
    print(f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} (other work slows timings), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"image {args.size}x{args.size}, memory bank N={args.memory}, random weights\n", flush=True)

    torch.manual_seed(0)
    model = MemSeg(image_size=args.size, memory_size=args.memory, backbone_weights="none").eval()
    model.build_memory_bank(torch.randn(args.memory, 3, args.size, args.size))
    images = {b: torch.randn(b, 3, args.size, args.size) for b in (1, 8)}

    bench_selection(model, images[8], args.repeats)
    bench_inference(model, images, args.repeats)
    peak = peak_rss_mib()
    if peak is not None:
        print(f"\nprocess peak RSS: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
