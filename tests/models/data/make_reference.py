"""Regenerate the reference data of tests/models/test_model_reference.py (not a test).

The data pin the network's numerics and its state-dict layout to those of an earlier, known-good
implementation: run this script against THAT implementation, e.g. for the implementation before
the speed work (commit a2685d3):

    git worktree add /tmp/s2fin-ref a2685d3
    PYTHONPATH=/tmp/s2fin-ref python3 tests/models/data/make_reference.py tests/models/data

It writes reference.safetensors (weights, inputs, eval logits and, for one configuration, the
parameter gradients of a training step) and state_dict_layout.json (every state-dict key and
shape for several configurations). Weights are the seeded initialisation plus seeded noise, so
that no parameter sits at a special value (zeros, ones) that would hide a numerical difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import models
from models import S2Fin, S2FinConfig

TINY = dict(
    bands=12, reduced_bands=4, active_bands=1, num_classes=3, patch_size=11, spectral_window=5,
    dim=16, heads=2, hfset_depth=2, top_k=4, spatial_depth=1, long_range_depth=1, state_dim=4,
    ssm_heads=2, dropout=0.0,
)  # fmt: skip
# The CLI's default network (s2fin_cli.training.build_config) on a 16-band scene, no dropout.
CLI = dict(
    bands=16, reduced_bands=6, active_bands=2, num_classes=5, patch_size=11, spectral_window=5,
    dim=32, heads=4, hfset_depth=1, spatial_depth=1, long_range_depth=1, ssm_heads=2, dropout=0.0,
)  # fmt: skip
NUMERIC = {"tiny": (TINY, 6, True), "cli": (CLI, 4, False)}  # config, batch, with gradients
LAYOUT = {
    "tiny": TINY,
    "cli": CLI,
    "houston": {},
    "paper_cli": dict(CLI, dim=80, hfset_depth=2, spatial_depth=2, long_range_depth=2),
    "no_hfset": dict(TINY, use_hfset=False),
    "no_afcm": dict(TINY, use_afcm=False),
    "no_ssaf": dict(TINY, use_ssaf=False),
    "no_hfrm": dict(TINY, use_hfrm=False),
    "no_long_range": dict(TINY, use_long_range=False),
    "shallow": dict(TINY, spatial_depth=0, long_range_depth=0, hfset_depth=1, ssm_expand=2),
}


def main(out_dir: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, (overrides, batch, with_grads) in NUMERIC.items():
        cfg = S2FinConfig(**overrides)  # type: ignore[arg-type]
        torch.manual_seed(0)
        model = S2Fin(cfg)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        p, s = cfg.patch_size, cfg.spectral_window
        inputs = {
            "spectral": torch.randn(batch, cfg.bands, s, s, generator=g),
            "spatial": torch.randn(batch, cfg.reduced_bands, p, p, generator=g),
            "active": torch.randn(batch, cfg.active_bands, p, p, generator=g),
        }
        labels = torch.arange(batch) % cfg.num_classes
        for key, value in model.state_dict().items():
            tensors[f"{name}/param/{key}"] = value.detach().clone().contiguous()
        for key, value in inputs.items():
            tensors[f"{name}/input/{key}"] = value
        tensors[f"{name}/labels"] = labels
        model.eval()
        with torch.no_grad():
            tensors[f"{name}/logits"] = model(*inputs.values()).contiguous()
        if with_grads:
            model.train()
            loss = torch.nn.functional.cross_entropy(model(*inputs.values()), labels)
            loss.backward()
            for key, param in model.named_parameters():
                assert param.grad is not None, key
                tensors[f"{name}/grad/{key}"] = param.grad.detach().clone().contiguous()
    save_file(tensors, str(out_dir / "reference.safetensors"))
    layout = {}
    for name, overrides in LAYOUT.items():
        cfg = S2FinConfig(**overrides)  # type: ignore[arg-type]
        layout[name] = {
            "config": overrides,
            "state_dict": [[k, list(v.shape)] for k, v in S2Fin(cfg).state_dict().items()],
        }
    # One line per configuration and per key: readable diffs when the layout changes.
    lines = ["{"]
    for i, (name, entry) in enumerate(layout.items()):
        keys = ",\n".join(f"   {json.dumps(item)}" for item in entry["state_dict"])
        lines.append(f' {json.dumps(name)}: {{\n  "config": {json.dumps(entry["config"])},')
        lines.append(f'  "state_dict": [\n{keys}\n  ]\n }}' + ("," if i < len(layout) - 1 else ""))
    lines.append("}")
    (out_dir / "state_dict_layout.json").write_text("\n".join(lines) + "\n")
    print(f"models from {models.__file__}: wrote {len(tensors)} tensors and {len(layout)} layouts")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
