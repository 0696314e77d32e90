"""The benchmark's models, exported once with the legacy exporter into a cache outside git.

Random weights (the libraries' own initialization), seeded; ``GRADDOCTOR_BENCH_CACHE`` moves the
cache (default ``~/.cache/graddoctor-bench``). Each entry: file name -> (builder, config
overrides the diagnosis and the floor both use).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

CACHE = Path(os.environ.get("GRADDOCTOR_BENCH_CACHE", Path.home() / ".cache" / "graddoctor-bench"))


def _export(module, args: tuple, names: list[str], axes: dict) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, buffer, dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=names, dynamic_axes=axes)
    return buffer.getvalue()


def _vision(build: Callable) -> Callable[[], bytes]:
    def export() -> bytes:
        import torch

        torch.manual_seed(0)
        return _export(build(), (torch.randn(1, 3, 224, 224),), ["image"],
                       {"image": {0: "batch"}})
    return export


def _resnet18():
    import torchvision
    return torchvision.models.resnet18()


def _resnet50():
    import torchvision
    return torchvision.models.resnet50()


def _vit_b16():
    import torchvision
    return torchvision.models.vit_b_16()


def _bert_base() -> bytes:
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    class Positional(nn.Module):  # the legacy exporter cannot pass transformers' keyword extras
        def __init__(self) -> None:
            super().__init__()
            self.model = BertModel(BertConfig())

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids, use_cache=False, return_dict=False)

    torch.manual_seed(0)
    ids = torch.randint(0, 30522, (1, 128))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return _export(Positional(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), names,
                   {name: {0: "batch"} for name in names})


# name -> (exporter, DiagnosisConfig overrides). Batch sizes keep one bare pass near a second
# or two on one core; the ratios, not the absolute times, are the benchmark's result.
MODELS: dict[str, tuple[Callable[[], bytes], dict]] = {
    "resnet18": (_vision(_resnet18), {"batch_size": 8}),
    "resnet50": (_vision(_resnet50), {"batch_size": 4}),
    "bert-base": (_bert_base, {"batch_size": 2}),
    "vit-b16": (_vision(_vit_b16), {"batch_size": 2}),
}


def model_path(name: str) -> Path:
    """The cached ``.onnx`` file of ``name``, exported on first use."""
    path = CACHE / f"{name}.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        data = MODELS[name][0]()
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return path


def _small() -> bytes:
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 220),
                        nn.ReLU(), nn.Linear(220, 10))
    return _export(net, (torch.randn(1, 3, 32, 32),), ["image"], {"image": {0: "batch"}})


def small_model_path() -> Path:
    """A small CNN (about 0.5 MB) for the CLI's cold start."""
    path = CACHE / "small-cnn.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_small())
    return path


if __name__ == "__main__":
    import sys

    for wanted in sys.argv[1:] or MODELS:
        print(wanted, model_path(wanted), model_path(wanted).stat().st_size // 2**20, "MiB")
