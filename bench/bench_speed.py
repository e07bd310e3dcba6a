"""How close `s2fin predict` and training run to what this machine can do (issue 13).

In one run, for the CLI's default network (--dim 32 --depth 1) and the paper-sized one (--dim 80
--depth 2), on a synthetic scene made by the CLI itself (`s2fin synth` + `s2fin stack`, 64 HSI
bands + 2 LiDAR bands, 11 classes) with a model made by `s2fin train --epochs 1`:

- predict px/s: `python -m s2fin_cli predict SCENE -m MODEL -o OUT --json --overwrite` as a
  subprocess with the CLI's defaults (threads, batch size, block size); pixels and seconds come
  from its JSON (time inside the command: reading, preprocessing, network, writing);
- forward px/s: the forward pass alone on pre-cut patches (the model file's network, the CLI's
  CPU/CUDA batch size, eval mode under inference_mode, the CLI's default threads, batches side
  by side in the CLI's batch workers): the ceiling; beside it, one batch at a time on all the
  threads (how predict ran before the batch workers), measured in the same run;
- MFLOP/px: torch.utils.flop_counter over one forward with AFCM/HFRM in their FFT form, i.e.
  counting the network's matmuls, convolutions and attention and not the DFTs (the count the
  issue's 16.8 / 116.7 MFLOP/px refer to);
- peak: this machine's all-core float32 matmul rate (a 2048^3 sgemm with all allowed threads,
  measured in the same run; TF32 off on CUDA), and utilisation = MFLOP/px x px/s / peak;
- train steps/s: a loop of the CLI's training step (`training_step`: forward, label-smoothed
  cross-entropy, backward, gradient clipping, the CLI's AdamW; TrainSettings' defaults, batch
  32) on random patches, in train mode, with the CLI's threads, the batch split over the CLI's
  batch workers: the network's training speed without data loading and augmentation (`s2fin
  train --json` reports no per-epoch time) and without consistency training (`s2fin train
  --consistency 0`); beside it, the whole batch on all threads (how training ran before the
  split), measured in the same run; and the step `s2fin train` runs by default, with
  consistency training's unlabelled batch (as many unlabelled patches as labels: the teacher's
  forward of their weak views, then forward and backward of the doubled batch, then the
  teacher's update).

    python3 bench/bench_speed.py                          # CPU, 96 x 96 scene
    python3 bench/bench_speed.py --device cuda --size 512 --json out.json
    python3 bench/bench_speed.py --compile                # adds the compiled forward ceiling
    python3 bench/bench_speed.py --compare-malloc         # also glibc's malloc defaults, ratios

``--compare-malloc`` first runs the same measurements in a child process with S2FIN_MALLOC=system
(glibc's own malloc thresholds, what s2fin ran with before it tuned them; the CLI subprocesses
inherit the variable), then with s2fin's settings, and prints the ratios side by side.

Timings on a shared machine vary with what else runs: the load average is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s2fin_cli.acceleration import (  # noqa: E402 - before torch: OpenMP waits passively
    BatchWorkers,
    available_cpus,
    batch_workers,
    configure_runtime,
    cpu_bf16_support,
    default_threads,
    malloc_tuned,
    map_in_batch_workers,
    maybe_compile,
)

configure_runtime()

import torch  # noqa: E402

from bench.measure import (  # noqa: E402
    median_seconds,
    peak_matmul_flops,
    reference_flops_per_sample,
)
from models import S2Fin  # noqa: E402
from s2fin_cli.inference import DEFAULT_BATCH_SIZE, DEFAULT_CPU_BATCH_SIZE  # noqa: E402
from s2fin_cli.model_file import load_model_file  # noqa: E402
from s2fin_cli.training import TrainSettings  # noqa: E402
from s2fin_cli.training.consistency import ConsistencyPool, unlabelled_batch  # noqa: E402
from s2fin_cli.training.steps import dropout_seeds, make_optimizer, training_step  # noqa: E402
from s2fin_cli.training_data import PatchSet  # noqa: E402

NETWORKS: dict[str, list[str]] = {
    "default": [],  # the CLI's defaults: --dim 32 --depth 1
    "paper": ["--dim", "80", "--depth", "2"],
}


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "s2fin_cli", *args]
    run_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]).rstrip(os.pathsep), **(env or {}))
    result = subprocess.run(cmd, capture_output=True, text=True, env=run_env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")
    return result


def peak_flops(device: torch.device, repeats: int) -> float:
    """All-core float32 matmul FLOP/s (TF32 off on CUDA)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return peak_matmul_flops(device, repeats)


def random_inputs(model: S2Fin, batch: int, device: torch.device,
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    p, s = cfg.patch_size, cfg.spectral_window
    shapes = [(batch, cfg.bands, s, s), (batch, cfg.reduced_bands, p, p),
              (batch, cfg.active_bands, p, p)]
    return tuple(torch.randn(shape, generator=g).to(device) for shape in shapes)


def forward_rate(model: Any, inputs: tuple[torch.Tensor, ...], device: torch.device,
                 repeats: int, workers: BatchWorkers) -> float:
    """Patches/s of ``model`` on ``inputs`` run as ``workers.count`` batches side by side in
    batch workers (the CLI's path, :meth:`BlockPredictor.map_batches`); ``BatchWorkers(1, n)``
    is one batch at a time on this thread's torch threads."""

    def one(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(*batch)
            return out

    def run() -> object:
        return list(map_in_batch_workers(one, [inputs] * workers.count, workers))

    return workers.count * inputs[0].shape[0] / median_seconds(run, device, repeats)


def train_rate(model: S2Fin, device: torch.device, repeats: int,
               workers: BatchWorkers, *, consistency: bool = False) -> float:
    """Steps/s of the CLI's training step (:func:`s2fin_cli.training.steps.training_step`)
    without data loading: forward, label-smoothed cross-entropy, backward, gradient clipping,
    the CLI's AdamW (:func:`make_optimizer`), with TrainSettings' defaults (batch 32), the
    batch split over ``workers``; with ``consistency`` also consistency training's unlabelled
    batch (weak views classified by the teacher, strong views trained at full weight, the
    teacher updated): the step `s2fin train` runs by default; without, the step of `s2fin
    train --consistency 0`."""
    settings = dataclasses.replace(TrainSettings(), consistency=0.0)
    batch = settings.batch_size
    pool = None
    if consistency:
        settings = dataclasses.replace(settings, consistency=1.0)
        views = random_inputs(model, 256, torch.device("cpu"), seed=2)
        pool = ConsistencyPool.start(PatchSet(*views, torch.zeros(256, dtype=torch.int64)),
                                     settings, model)
    model = model.train()
    parameters = list(model.parameters())
    optimiser = make_optimizer(parameters, settings, device)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    spectral, spatial, active = random_inputs(model, batch, device, seed=1)
    labels = torch.randint(0, model.config.num_classes, (batch,), device=device)

    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        extra = None
        if pool is not None:
            extra = unlabelled_batch(model, pool, batch, settings, generator, 1, 1, workers,
                                     device)
        training_step(model, spectral, spatial, active, labels, settings, optimiser, scaler,
                      parameters, workers, dropout_seeds(settings.seed, 0, 0), extra)
        if pool is not None and pool.teacher is not None:
            pool.teacher.update()

    return 1.0 / median_seconds(step, device, repeats, warmup=2)


def make_scene(work: Path, size: int) -> Path:
    synth = work / "synth"
    _cli(["synth", str(synth), "--size", str(size), "--bands", "64", "--seed", "0"])
    scene = work / "scene.tif"
    _cli(["stack", "--hsi", str(synth / "hsi.tif"), "--lidar", str(synth / "lidar.tif"),
          "-o", str(scene)])
    return scene


def measure_network(name: str, scene: Path, work: Path, device: torch.device,
                    threads: int | None, args: argparse.Namespace) -> dict[str, Any]:
    model_path = work / f"{name}.s2fin"
    device_args = ["--device", device.type]
    thread_args = ["--threads", str(threads)] if threads else []
    _cli(["train", str(scene), "--labels", str(scene.parent / "synth" / "train_labels.tif"),
          "--epochs", "1", "-o", str(model_path), "--overwrite", "--json", *NETWORKS[name],
          *device_args, *thread_args])
    out = _cli(["predict", str(scene), "-m", str(model_path), "-o", str(work / f"{name}.tif"),
                "--json", "--overwrite", *device_args, *thread_args])
    report = json.loads(out.stdout)["scenes"][0]
    predict_rate = report["classified"] / report["seconds"]

    bundle = load_model_file(model_path)
    model = bundle.build_model(device)
    batch = DEFAULT_BATCH_SIZE if device.type == "cuda" else DEFAULT_CPU_BATCH_SIZE
    inputs = random_inputs(model, batch, device)
    flops = reference_flops_per_sample(model, inputs)
    row: dict[str, Any] = {
        "network": name, "params": sum(p.numel() for p in model.parameters()),
        "mflop_per_px": flops / 1e6, "predict_px_s": predict_rate,
        "predict_pixels": report["classified"], "predict_seconds": report["seconds"],
        "batch": batch,
    }
    # The CLI's path: batches side by side in the batch workers; and one batch at a time on all
    # threads (what predict did before the workers), in the same run for the ratio.
    workers = batch_workers(device.type, torch.get_num_threads())
    one_batch = BatchWorkers(1, torch.get_num_threads())  # one batch at a time, all threads
    row["batch_workers"] = f"{workers.count} x {workers.threads_each} thread(s)"
    row["forward_px_s"] = forward_rate(model, inputs, device, args.repeats, workers)
    row["forward_one_batch_px_s"] = forward_rate(model, inputs, device, args.repeats, one_batch)
    if args.compile:
        decision = maybe_compile(model, device, "on")
        start = time.perf_counter()
        # compiles, in this thread, before the batch workers call it
        forward_rate(decision.model, inputs, device, 1, one_batch)
        row["compile_seconds"] = time.perf_counter() - start
        row["compiled_forward_px_s"] = forward_rate(decision.model, inputs, device,
                                                    args.repeats, workers)
    if not args.skip_train:
        # The CLI's training step (batch parts side by side in the batch workers) and the whole
        # batch on all threads (how training ran before), in the same run for the ratio.
        row["train_steps_s"] = train_rate(bundle.build_model(device), device, args.repeats,
                                          workers)
        row["train_one_batch_steps_s"] = train_rate(bundle.build_model(device), device,
                                                    args.repeats, one_batch)
        # The step `s2fin train` runs by default, with consistency training's unlabelled
        # batch and teacher.
        row["train_consistency_steps_s"] = train_rate(bundle.build_model(device), device,
                                                      args.repeats, workers, consistency=True)
    return row


RATE_KEYS = (("predict_px_s", "predict px/s"), ("forward_px_s", "forward px/s"),
             ("forward_one_batch_px_s", "one batch px/s"),
             ("train_steps_s", "train step/s without consistency training"),
             ("train_one_batch_steps_s", "one-batch train step/s"),
             ("train_consistency_steps_s", "default train step/s (consistency training)"))


def system_malloc_run(argv: list[str]) -> dict[str, Any]:
    """The same measurements in a child process with glibc's own malloc thresholds, in a work
    folder of its own (a shared --work-dir would make the second `s2fin synth` refuse)."""
    child_args = [a for a in argv if a != "--compare-malloc"]
    with tempfile.TemporaryDirectory(prefix="s2fin-bench-malloc-") as tmp:
        out = Path(tmp) / "system.json"
        env = dict(os.environ, S2FIN_MALLOC="system")
        print("--- with glibc's malloc defaults (S2FIN_MALLOC=system) ---", flush=True)
        # argparse keeps the last value of an option: these override the user's --json/--work-dir
        subprocess.run([sys.executable, __file__, *child_args, "--json", str(out),
                        "--work-dir", str(Path(tmp) / "work")], env=env, check=True)
        print("--- with s2fin's malloc settings ---", flush=True)
        baseline: dict[str, Any] = json.loads(out.read_text())
        return baseline


def print_malloc_ratios(baseline: dict[str, Any], tuned: dict[str, Any]) -> None:
    print("\ns2fin's malloc settings against glibc's defaults (measured above, same script):")
    print(f"{'network':<8} {'rate':<13} {'glibc':>9} {'s2fin':>9} {'ratio':>7}")
    before = {r["network"]: r for r in baseline["networks"]}
    for row in tuned["networks"]:
        old = before.get(row["network"], {})
        for key, label in RATE_KEYS:
            if key in row and key in old:
                print(f"{row['network']:<8} {label:<13} {old[key]:>9.1f} {row[key]:>9.1f} "
                      f"{row[key] / old[key]:>6.2f}x")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", type=int, default=96, help="scene side in pixels")
    parser.add_argument("--networks", default="default,paper")
    parser.add_argument("--threads", type=int, default=0,
                        help="pass --threads N to the CLI and use N here (0: the CLI default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also the compiled forward")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--compare-malloc", action="store_true",
                        help="first measure with glibc's malloc defaults (S2FIN_MALLOC=system)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--work-dir", type=Path, help="keep scene/models here (default: temp)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    baseline = system_malloc_run(argv if argv is not None else sys.argv[1:]) \
        if args.compare_malloc else None
    threads = args.threads or None
    # The peak uses every CPU this process may use, whatever --threads says.
    torch.set_num_threads(available_cpus())
    peak = peak_flops(device, args.repeats)
    peak_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    bf16 = cpu_bf16_support()
    env: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "cpu": platform.processor() or platform.machine(), "cpus_allowed": available_cpus(),
        "threads": torch.get_num_threads(), "bf16": bf16.describe(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "-"),
        "malloc_tuned": malloc_tuned(),
        "load_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    print(f"peak float32 matmul, {peak_threads} thread(s): {peak / 1e9:.1f} GFLOP/s")

    rows = []
    with tempfile.TemporaryDirectory(prefix="s2fin-bench-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scene = make_scene(work, args.size)
        for name in args.networks.split(","):
            row = measure_network(name, scene, work, device, threads, args)
            for key in ("predict", "forward", "forward_one_batch", "compiled_forward"):
                if f"{key}_px_s" in row:
                    row[f"{key}_util"] = row["mflop_per_px"] * 1e6 * row[f"{key}_px_s"] / peak
            rows.append(row)
            print(json.dumps(row))
    env["load_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    header = (f"{'network':<8} {'params':>8} {'MFLOP/px':>9} {'predict px/s':>13} {'util':>6} "
              f"{'forward px/s':>13} {'util':>6} {'train step/s':>13}")
    print(f"\nscene {args.size}x{args.size}, device {device}, {torch.get_num_threads()} "
          f"thread(s); peak {peak / 1e9:.1f} GFLOP/s with {peak_threads} thread(s)")
    print(header)
    for r in rows:
        train = f"{r['train_steps_s']:13.2f}" if "train_steps_s" in r else f"{'-':>13}"
        print(f"{r['network']:<8} {r['params']:>8d} {r['mflop_per_px']:>9.1f} "
              f"{r['predict_px_s']:>13.1f} {r['predict_util']:>6.1%} {r['forward_px_s']:>13.1f} "
              f"{r['forward_util']:>6.1%} {train}")
        print(f"{'':<8} batch workers {r['batch_workers']}; one batch at a time on all "
              f"threads: forward {r['forward_one_batch_px_s']:.1f} px/s "
              f"({r['forward_one_batch_util']:.1%}), side by side "
              f"{r['forward_px_s'] / r['forward_one_batch_px_s']:.2f}x that")
        if "train_one_batch_steps_s" in r:
            print(f"{'':<8} training step, whole batch on all threads: "
                  f"{r['train_one_batch_steps_s']:.2f} step/s; split over the batch workers "
                  f"{r['train_steps_s'] / r['train_one_batch_steps_s']:.2f}x that")
        if "train_consistency_steps_s" in r:
            print(f"{'':<8} the step s2fin train runs by default, with consistency "
                  f"training's unlabelled batch and teacher: "
                  f"{r['train_consistency_steps_s']:.2f} step/s")
        if "compiled_forward_px_s" in r:
            print(f"{'':<8} compiled forward {r['compiled_forward_px_s']:.1f} px/s "
                  f"({r['compiled_forward_util']:.1%}), compile {r['compile_seconds']:.1f} s")
    result: dict[str, Any] = {"environment": env, "peak_flops": peak,
                              "peak_threads": peak_threads, "networks": rows}
    if baseline is not None:
        result["system_malloc"] = baseline
        print_malloc_ratios(baseline, result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
