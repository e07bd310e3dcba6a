"""Options shared by several commands, declared once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from s2fin_cli.inference import DEFAULT_BATCH_SIZE, DEFAULT_CPU_BATCH_SIZE
from s2fin_cli.model_file import DEFAULT_MODEL_PATH

Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing outputs (refused otherwise).")
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")
]
Device = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N."),
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads for torch (default: the CPUs this process may "
                 "use, from its affinity and cgroup quota, or OMP_NUM_THREADS; on a machine busy "
                 "with other jobs --threads 1 can be faster). On the CPU each thread classifies "
                 "its own batch (up to 8 at once) and, training, its own part of every batch: "
                 "a training run is reproducible for a given --threads."),
]
Compile = Annotated[
    str,
    typer.Option("--compile", help="torch.compile the network: auto (on a GPU when the scene "
                 "is large enough for the compile time to pay off; never on the CPU, where "
                 "compiled code measured no faster), on, off. Compiled code is cached in "
                 "~/.cache/s2fin/inductor ($S2FIN_CACHE_DIR)."),
]
Bf16 = Annotated[
    str,
    typer.Option("--bf16", help="bfloat16 on the CPU: auto (only where the CPU computes it "
                 "natively: AVX512-BF16 or AMX), on, off. CUDA always uses mixed precision."),
]
Seed = Annotated[
    int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")
]
Cog = Annotated[
    bool, typer.Option("--cog", help="Write Cloud-Optimized GeoTIFFs (with overviews).")
]
CreationOptions = Annotated[
    list[str] | None,
    typer.Option("--co", help="GDAL creation option KEY=VALUE for written rasters; repeatable."),
]
ModelPath = Annotated[
    Path | None,
    # No dir_okay=False: a directory gets s2fin's one-line input error (3), not a usage error.
    typer.Option("--model", "-m", help=f"Model file (default: {DEFAULT_MODEL_PATH}).",
                 show_default=False),
]
HsiPath = Annotated[
    Path | None,
    typer.Option("--hsi", help="Optical raster (hyperspectral or multispectral); its grid is the "
                 "reference."),
]
LidarPath = Annotated[
    Path | None,
    typer.Option("--lidar", help="LiDAR raster (DSM, optionally more bands such as intensity)."),
]
SarPath = Annotated[
    Path | None, typer.Option("--sar", help="SAR raster (one or more bands).")
]
AuxBands = Annotated[
    int | None,
    typer.Option("--aux-bands", min=1, help="How many of the last bands of a stacked scene are "
                 "LiDAR/SAR (when it has no s2fin band tags)."),
]
LabelField = Annotated[
    str | None,
    typer.Option("--label-field", help="Attribute holding the class of vector labels (integer "
                 "ids, or names that become ids 1..N)."),
]
SkipValueCheck = Annotated[
    bool,
    typer.Option("--skip-value-check", help="Classify even when the scene's values do not look "
                 "like the training data's (another scale or unit): a warning instead of exit 7."),
]
# The network-side options of the commands that run a model over a scene (predict, suggest).
InferenceBatchSize = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, show_default=False,
                 help=f"Patches per forward pass (default: {DEFAULT_BATCH_SIZE} on CUDA, "
                 f"{DEFAULT_CPU_BATCH_SIZE} on the CPU)."),
]
BlockSize = Annotated[
    int, typer.Option("--block-size", min=1, help="Side of the blocks read at a time (memory "
                      "follows it).")
]
