"""Throughput of ``cnnviz explain`` in one process and on Ray with 1 and 2 actors, same pictures and model, one run;
writes docs/ray.md with the table.

    .venv/bin/python benchmarks/ray_throughput.py [--images 64] [--size 224] [--method gradcam] [--batch-size 8]

The model is torchvision's ResNet-18 with fixed random weights (timings do not depend on the weights), exported at
``--size`` once (cached under .cache/bench); the pictures are random 256x256 PNGs, resized by the preprocessing. Each
configuration runs in a fresh Python process (so that each driver's peak resident memory, VmHWM, is its own)
over a fresh output folder:

* ``single process``: ``cnnviz explain`` as the command runs it (onnxruntime with the machine's cores as threads);
* ``ray, N actor(s)``: :func:`onnx_cnnviz.dataset.explain` on a local Ray started in that process with the machine's
  CPUs; the time is the call's, actor start and model load included, Ray's own start (``ray.init``) reported apart.

images/s = pictures / seconds of the run. The driver's peak is the process that lists, plans and receives the
records; the actors' memory is not in it (each actor holds one model and its sessions).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / ".cache" / "bench"
DOC = ROOT / "docs" / "ray.md"


def export_model(size: int) -> Path:
    """ResNet-18 (random weights, seed 0) as ONNX at ``size``, exported once."""
    path = CACHE / f"resnet18_s0_{size}.onnx"
    if not path.exists():
        import torch

        from tests.exporting import export_torchscript, torchvision_model

        export_torchscript(torchvision_model("resnet18"), torch.zeros(1, 3, size, size), path)
    return path


def make_pictures(folder: Path, n: int) -> Path:
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i:03d}.png"), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    return folder


def peak_mb() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would carry the parent's peak over fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def run_single(model: str, images: str, out: str, method: str, batch: int) -> dict:
    from click.testing import CliRunner

    from onnx_cnnviz.cli.main import cli

    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["explain", model, images, "-m", method, "--preprocess", "imagenet",
                                      "--batch-size", str(batch), "--out", out, "--quiet"])
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"single-process run failed: {result.output}")
    return {"seconds": seconds, "startup": 0.0}


def run_ray(model: str, images: str, out: str, method: str, batch: int, actors: int) -> dict:
    import ray

    from onnx_cnnviz import dataset

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    startup = time.perf_counter() - start
    start = time.perf_counter()
    summary = dataset.explain(model, [images], out, methods=[method], preprocess="imagenet", batch_size=batch,
                              actors=actors)
    seconds = time.perf_counter() - start
    ray.shutdown()
    return {"seconds": seconds, "startup": startup, "written": summary.written, "threads": summary.cpus_per_actor}


def one(args) -> None:
    """One configuration, in this process; prints its figures as JSON."""
    if args.actors == 0:
        figures = run_single(args.model, args.images_dir, args.out, args.method, args.batch_size)
    else:
        figures = run_ray(args.model, args.images_dir, args.out, args.method, args.batch_size, args.actors)
    figures["peak_mb"] = peak_mb()
    print(json.dumps(figures))


def measure(model: Path, images: Path, work: Path, args, actors: int) -> dict:
    out = work / f"out{actors}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--one", "--actors", str(actors), "--model", str(model), "--images-dir",
           str(images), "--out", str(out), "--method", args.method, "--batch-size", str(args.batch_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"configuration with {actors} actor(s) failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["images_per_s"] = args.images / figures["seconds"]
    return figures


def breakdown(model: Path, images: Path, method: str, batch: int) -> dict:
    """Per-picture cost of each stage of the pipeline, measured in this process: reading and preprocessing a
    picture (the Ray tasks' work), explaining it (the actors' model time, in batches of ``batch``), writing its
    picture, array and record (the actors' writes), and one record row on the driver (ms; the row in µs)."""
    import numpy as np

    import onnx_cnnviz as cv
    from onnx_cnnviz import jsonio, report
    from onnx_cnnviz.image import deprocess, preprocess
    from onnx_cnnviz.methods import registry

    paths = sorted(images.glob("*.png"))
    start = time.perf_counter()
    x = np.concatenate([preprocess([p], preset="imagenet") for p in paths])
    read = (time.perf_counter() - start) / len(paths)
    m = cv.load(model, device="cpu")
    registry.explain(m, method, x[:batch], None)  # sessions built before timing, as an actor has them
    start = time.perf_counter()
    maps = np.concatenate([registry.explain(m, method, x[i:i + batch], None) for i in range(0, len(x), batch)])
    explain = (time.perf_counter() - start) / len(paths)
    views = deprocess(x, preset="imagenet")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for i, (view, result) in enumerate(zip(views, maps)):
            report.write_atomic(Path(tmp) / f"{i}.png", report.png_bytes(report.picture(method, result, view, "RGB")))
            np.save(Path(tmp) / f"{i}.npy", result)
            report.write_atomic(Path(tmp) / f"{i}.json", jsonio.dumps({"image": str(paths[i]), "shape": result.shape}))
        write = (time.perf_counter() - start) / len(paths)
    row = json.dumps({"status": "ok", "record": {"image": str(paths[0]), "method": method, "class": 1, "score": 1.0,
                                                 "outputs": {"picture": "a.png", "array": "a.npy"}}})
    start = time.perf_counter()
    for _ in range(2000):
        json.loads(row)
    driver = (time.perf_counter() - start) / 2000
    return {"read": 1000 * read, "explain": 1000 * explain, "write": 1000 * write, "driver_us": 1e6 * driver}


def table(rows: list, n: int) -> str:
    lines = ["| run | seconds | images/s | ms per image | Ray start (s) | driver peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, f in rows:
        lines.append(f"| {name} | {f['seconds']:.1f} | {f['images_per_s']:.2f} | {1000 * f['seconds'] / n:.0f} | "
                     f"{f['startup']:.1f} | {f['peak_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--actors", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--images-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--no-doc", action="store_true", help="Print the table only; leave docs/ray.md alone.")
    args = parser.parse_args()
    if args.one:
        return one(args)
    model = export_model(args.size)
    with tempfile.TemporaryDirectory(prefix="cnnviz-ray-bench-") as tmp:
        work = Path(tmp)
        images = make_pictures(work / "images", args.images)
        rows = [("single process", measure(model, images, work, args, 0))]
        for actors in (1, 2):
            rows.append((f"ray, {actors} actor{'s' if actors > 1 else ''}", measure(model, images, work, args,
                                                                                     actors)))
        stages = breakdown(model, images, args.method, args.batch_size)
    load = os.getloadavg()[0]
    text = table(rows, args.images)
    print(text)
    print(f"stages (ms per picture): read {stages['read']:.1f}, explain {stages['explain']:.1f}, write "
          f"{stages['write']:.1f}; driver {stages['driver_us']:.1f} us per row; load average {load:.1f}")
    if not args.no_doc:
        DOC.write_text(document(text, rows, args, stages, load), encoding="utf-8")
        print(f"wrote {DOC}")


def document(text: str, rows: list, args, stages: dict, load: float) -> str:
    """docs/ray.md: the measured table and what it says about scaling (see the template below)."""
    single = dict(rows)["single process"]
    per_image = 1000 * single["seconds"] / args.images
    steady = stages["read"] + stages["explain"] + stages["write"]
    ray2 = dict(rows)["ray, 2 actors"]
    return TEMPLATE.format(table=text, n=args.images, size=args.size, method=args.method, batch=args.batch_size,
                           cores=os.cpu_count(), day=date.today().isoformat(), per_image=per_image,
                           map_kb=args.size * args.size * 4 / 1024, png_kb=args.size * args.size * 3 / 1024,
                           input_kb=3 * args.size * args.size * 4 / 1024,
                           d2=ray2["seconds"] - single["seconds"],
                           d1=dict(rows)["ray, 1 actor"]["seconds"] - single["seconds"], rate=1000.0 / steady,
                           load=load, steady=steady,
                           single_s=single["seconds"], startup=single["seconds"] - args.images * steady / 1000,
                           read=stages["read"], explain=stages["explain"], write=stages["write"],
                           driver_us=stages["driver_us"], reads_per_core=1000.0 / stages["read"],
                           writes_per_core=1000.0 / stages["write"],
                           rows_per_s=float(f"{1e6 / stages['driver_us']:.2g}"))


TEMPLATE = """# Explaining a whole dataset on Ray

`onnx_cnnviz.dataset` (the optional `ray` extra: `pip install 'onnx-cnnviz[ray]'`, Ray Data 2.60.0) runs `cnnviz
explain` over a folder, a list of files or a bucket on a Ray cluster and writes what the single-process run writes,
`NAME.METHOD.RANK.png` / `.npy` / `.json` per result, plus one Parquet table of records, `OUT/records.parquet`. The
core never imports Ray: `import onnx_cnnviz` and `cnnviz explain` without `--ray` work without it.

## Worked example

Explain a folder (or `s3://bucket/photos/`, `gs://...`: any filesystem pyarrow reads) on a running cluster, in three
lines of Python:

```python
from onnx_cnnviz import dataset
summary = dataset.explain("model.onnx", ["s3://bucket/photos/"], "/shared/out", methods=["gradcam"], address="auto")
print(summary)      # pandas.read_parquet("/shared/out/records.parquet"): one row per result
```

and from the command line (`--ray auto` joins the cluster of `ray start --head`; `--ray` alone starts a local Ray):

```bash
cnnviz explain model.onnx photos/ -m gradcam,saliency --top-k 3 --out /shared/out --ray auto --resume
cnnviz evaluate model.onnx photos/ -m gradcam,saliency --metric deletion,insertion --out /shared/eval --ray auto --resume
```

`cnnviz evaluate --ray` runs the same way: the actors explain and score each batch, the driver alone appends the
rows to `results.jsonl`, so `--resume`, the tables, `report.html` and the exit codes are the single-process run's.

The command's outputs, summary, `--json` document and exit codes are those of the single-process run (0, 1 when a
picture could not be read, 130 when interrupted); progress is Ray Data's own progress bars (none under `--quiet` or
`--json`).

## The pipeline

```
driver: list pictures, plan (the JSON records say what --resume skips)      -> paths only
  -> Ray tasks (0.25 CPU each): read the bytes where they lie, decode, preprocess
  -> actor pool (ActorPoolStrategy(size=N)): each actor loads the ONNX model once, keeps its onnxruntime sessions,
     intra_op_num_threads = its CPU share, 1 GPU when the cluster has GPUs; explains a batch with cnnviz explain's
     own code, writes the maps and its part of records.parquet
  -> driver: one small row per result, one batch at a time (nothing else is held)
```

* **Records table.** `OUT/records.parquet` is one table stored as a folder of parts (as Spark and Ray write tables;
  `pandas.read_parquet`, `pyarrow.dataset` and `ray.data.read_parquet` read it whole). Columns: `image` (path or
  URI), `key`, `method`, `rank` (`top1`.., `cN`), `class`, `class_name`, `score`, `probability`, `top_k` (the
  image's classes explained, best first), `target`, `layer`, `parameters` (JSON), `settings` (digest of model,
  parameters, preprocessing, overlay and metrics), `metrics` (metric name -> value), `status` (`ok` / `failed`),
  `error`, `picture`, `array`, `json` (the files), `device`, `worker` (host:pid of the actor).
* **Faults.** Ray Data creates the pool's actors with `max_restarts=-1` and `max_task_retries=-1`: an actor that
  dies is restarted (its model loaded again) and its batch retried. Each batch's part of the table is named by a
  digest of the results it holds, so the retried batch replaces the part its dead attempt may have written: every
  record is written once (`tests/dataset` kills an actor process mid-run and checks it).
* **Resume.** A rerun with `resume=True` (`--resume`) skips every result whose JSON record exists with the same
  settings, exactly as `cnnviz explain --resume`; results made with other settings (or other metrics) are made again
  and their old rows dropped; rows missing for finished results (a driver killed between the actor's record and its
  part) are rebuilt from the JSON records. Unreadable pictures are `failed` rows and are read again by a rerun.
* **Output folder.** Actors write where the driver says: on a cluster, `OUT` must be a folder every node sees (NFS,
  a mounted bucket); inputs can be anywhere pyarrow reads.

## Measured

`benchmarks/ray_throughput.py` ({day}, {cores} cores, shared with other jobs): ResNet-18 (random weights) exported at
{size}x{size}, {n} pictures, `{method}`, batches of {batch}; each configuration in a fresh process and output folder:

{table}

The machine was shared with other jobs (load average {load:.1f} on {cores} cores at the end of the run), so the
absolute times are several times those of an idle machine; the configurations ran one after the other on the same
load. Where the time goes, per picture, measured in one process on the same pictures: reading and preprocessing
{read:.1f} ms (the Ray tasks' work), explaining {explain:.1f} ms (the actors' model time, batches of {batch}),
writing the picture, array and record {write:.1f} ms (the actors' writes), and {driver_us:.0f} µs per record row on
the driver.

"ms per image" is the whole run's time over the pictures, start-up included (importing the library, loading the
model, building the gradient graph and the onnxruntime session: about {startup:.0f} s of the single process's
{single_s:.1f} s, the rest being {steady:.0f} ms per picture of reading, explaining and writing). The Ray rows
start one process per actor, each loading the model (in parallel with the reads), and Ray itself (the "Ray start"
column, outside the run's time); against the single process the Ray runs took {d1:+.1f} s (1 actor) and {d2:+.1f} s
(2 actors), within the noise of this shared machine. On one {cores}-core machine the Ray runs cannot be much faster
than the single
process, which already uses every core through onnxruntime's threads: Ray pays off with more machines (or GPUs)
than one process can use, and with long runs (resume, faults, a bucket as input).

## How it scales to N machines / N GPUs

* **Per actor:** one copy of the model and its onnxruntime sessions (the rewritten graph with its gradient
  sub-graph), `intra_op_num_threads` = its CPU share (default: one actor per machine with the machine's CPUs but the
  read tasks' share, or one actor per GPU with `num_gpus=1`), and one batch of inputs and maps at a time.
  Throughput grows with the actors until something else saturates: on CPUs, N machines give about N times one
  machine's rate once started ({steady:.0f} ms per picture here, about {rate:.1f} pictures/s for each
  {cores}-core machine at this size and method on this loaded machine, and N times that for N such machines).
* **What crosses the network:** the paths (bytes) from the driver; each picture's bytes from storage to a read
  task; the preprocessed input, {input_kb:.0f} KB of float32 at {size}x{size}, from the read task to an actor
  through Ray's object store (local when Ray schedules them on one node); the results from the actor to the output
  folder: the raw map ({map_kb:.0f} KB of float32 for a CAM or saliency at {size}x{size}; 3x that for
  gradient methods), the PNG (up to {png_kb:.0f} KB) and the JSON record (1 KB); one row (under 1 KB) per result to
  the driver.
* **Where the bottleneck moves:** on CPUs the model is it: {explain:.0f} ms of {read:.0f} + {explain:.0f} +
  {write:.0f} ms per picture here, so N machines give about N times the rate. With GPUs the model's time per
  picture falls by one to two orders of magnitude and the bottleneck moves to the CPU work around it: reading and
  preprocessing ({read:.1f} ms per picture, about {reads_per_core:.0f} pictures/s per core, run as Ray tasks on
  every CPU of the cluster: add CPUs, or CPU-only nodes, rather than GPUs) and writing the outputs ({write:.1f} ms
  per result in the actor, about {writes_per_core:.0f} results/s per actor, and about 0.3 MB per result to the
  shared folder: 1,000 pictures/s need about 300 MB/s from it; keep only the outputs you need). The driver comes
  last: {driver_us:.0f} µs per row, about {rows_per_s:,.0f} rows/s. (No GPU was measured here: the
  GPU speed-up is the usual order for CNNs of this size, not a figure of this benchmark.)
"""


if __name__ == "__main__":
    main()
