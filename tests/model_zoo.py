"""Small instances of the model families users upload, for loader and coverage tests.

Every builder makes a module with random weights (``weights=None``, transformers from config
objects: nothing is downloaded), puts it in eval mode and returns a :class:`ZooModel`: the
module, example inputs, the ONNX input names, the exporter's dynamic axes (if any) and how a
native parameter name maps to the initializer name an exporter gives it.

Sizes are the smallest that keep each family's structure (every block type, every op the
exporters emit for it), so exporting both ways stays within the CI budget.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar

import onnx
import torch
import torch.nn.functional as F
import torchvision
from onnx import defs
from onnx2torch.node_converters.registry import get_converter
from torch import nn

import diagnostics.loading.onnx.ops  # noqa: F401  (our converters count as available)
from diagnostics.model import LoadedModel
from tests.onnx_export import export_dynamo, export_legacy, loaded_grad_norms, native_grad_norms

# transformers must never reach the hub: every model below is built from a config object.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

Exporter = str  # "legacy" | "dynamo"
EXPORTERS: tuple[Exporter, ...] = ("legacy", "dynamo")
# The settings issue 4 asks for: the newest opset each exporter handles well, and no folding, so
# BatchNorm stays separate and weights keep their names.
LEGACY_OPSET, DYNAMO_OPSET = 17, 18
NameMap = Callable[[str, Exporter], str | None]


class _HasModule(Protocol):
    module: nn.Module


Built = TypeVar("Built", bound=_HasModule)


def same_name(name: str, exporter: Exporter) -> str | None:
    """Both exporters (constant folding / optimizer off) name initializers by ``state_dict`` key."""
    return name


class ZooModel(NamedTuple):
    """One exportable model and what a test needs to check it.

    Attributes:
        module: The native module, in eval mode.
        args: Example inputs, in ``input_names`` order.
        input_names: ONNX graph input names.
        dynamic_axes: Legacy-exporter style ``{input: {axis: name}}``; the dynamo export gets the
            equivalent ``dynamic_shapes``. None: every axis static.
        onnx_name: ``(native parameter name, exporter) -> initializer name``, or None where that
            exporter stores the parameter transformed under another name.
    """

    module: nn.Module
    args: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] | None
    onnx_name: NameMap


@dataclass(frozen=True)
class Family:
    """A model family: how to build it and what to expect of it.

    Attributes:
        name: Short id used in test ids and the coverage table.
        title: What the coverage table shows.
        build: Makes a fresh :class:`ZooModel` (seeded, so every call gives the same weights).
        slow: Exports take long enough to keep the family out of the CI subset.
        healthy: Its own initialization is known healthy (torchvision nets, transformers), so a
            diagnosis must say so; None where no claim is made.
        token_inputs: Inputs that are token ids (their synthesized values must index the table).
    """

    name: str
    title: str
    build: Callable[[], ZooModel]
    slow: bool = False
    healthy: bool | None = None
    token_inputs: tuple[str, ...] = field(default=())


def seeded(build: Callable[[], Built]) -> Callable[[], Built]:
    """Build under seed 0 (the global RNG left as it was), in eval mode."""
    def built() -> Built:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build()
        model.module.eval()
        return model

    built.__name__ = build.__name__
    built.__doc__ = build.__doc__
    return built


def image(batch: int = 2, size: int = 64) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 3, size, size),)


# --- torchvision ------------------------------------------------------------------------------


@seeded
def resnet18() -> ZooModel:
    """torchvision ResNet-18: residual blocks, BatchNorm, max and adaptive average pooling."""
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    return ZooModel(net, image(), ("input",), None, same_name)


@seeded
def mobilenet_v3_small() -> ZooModel:
    """torchvision MobileNetV3-Small: depthwise convs, squeeze-excitation, hardswish."""
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)
    return ZooModel(net, image(), ("input",), None, same_name)


@seeded
def convnext() -> ZooModel:
    """torchvision ConvNeXt: 7x7 depthwise convs, channels-last LayerNorm, layer scale.

    ConvNeXt-Tiny's blocks at a quarter of its widths and depths (1, 1, 2, 1): the same ops and
    initialization, but ~1 M parameters instead of 28 M, whose 111 MB file took a minute of
    the suite's budget to export and load twice.
    """
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    blocks = [CNBlockConfig(24, 48, 1), CNBlockConfig(48, 96, 1), CNBlockConfig(96, 192, 2),
              CNBlockConfig(192, None, 1)]
    return ZooModel(ConvNeXt(blocks, num_classes=10), image(batch=1), ("input",), None,
                    same_name)


@seeded
def vit() -> ZooModel:
    """A two-layer torchvision VisionTransformer: patch conv, class token, MultiheadAttention."""
    net = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10)
    return ZooModel(net, image(size=32), ("input",), None, same_name)


# --- hand-built -------------------------------------------------------------------------------


class TinyUNet(nn.Module):
    """Two-level UNet: conv blocks, max-pool down, ConvTranspose and bilinear resize up, skips."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                 nn.ReLU())

        self.down1 = block(3, channels)
        self.down2 = block(channels, 2 * channels)
        self.bottom = block(2 * channels, 4 * channels)
        self.up2 = nn.ConvTranspose2d(4 * channels, 2 * channels, 2, stride=2)
        self.dec2 = block(4 * channels, 2 * channels)
        self.reduce1 = nn.Conv2d(2 * channels, channels, 1)
        self.dec1 = block(2 * channels, channels)
        self.head = nn.Conv2d(channels, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 2, H, W) logits; H and W divisible by 4."""
        s1 = self.down1(x)
        s2 = self.down2(F.max_pool2d(s1, 2))
        b = self.bottom(F.max_pool2d(s2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), s2], dim=1))
        up1 = F.interpolate(self.reduce1(d2), scale_factor=2.0, mode="bilinear",
                            align_corners=False)
        return self.head(self.dec1(torch.cat([up1, s1], dim=1)))


@seeded
def unet() -> ZooModel:
    """:class:`TinyUNet` on 2x3x32x32."""
    return ZooModel(TinyUNet(), image(size=32), ("input",), None, same_name)


class RecurrentClassifier(nn.Module):
    """A 2-layer recurrent stack (LSTM, GRU or tanh RNN) with a Linear head on every step."""

    def __init__(self, cell: type[nn.RNNBase], features: int = 8, hidden: int = 16, *,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = cell(features, hidden, num_layers=2, batch_first=True,
                        bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, features) -> (N, T, 4)."""
        return self.head(self.rnn(x)[0])


def _recurrent(cell: type[nn.RNNBase], *, bidirectional: bool = False) -> ZooModel:
    # Batch and time dynamic, as sequence models are exported for variable-length input.
    return ZooModel(RecurrentClassifier(cell, bidirectional=bidirectional),
                    (torch.randn(2, 12, 8),), ("input",),
                    {"input": {0: "batch", 1: "time"}}, same_name)


@seeded
def lstm() -> ZooModel:
    """2-layer ``nn.LSTM`` + Linear head, batch-first, 12 steps (batch and time dynamic)."""
    return _recurrent(nn.LSTM)


@seeded
def bilstm() -> ZooModel:
    """2-layer bidirectional ``nn.LSTM`` + Linear head, batch-first, 12 steps."""
    return _recurrent(nn.LSTM, bidirectional=True)


@seeded
def gru() -> ZooModel:
    """2-layer ``nn.GRU`` + Linear head, batch-first, 12 steps (batch and time dynamic)."""
    return _recurrent(nn.GRU)


@seeded
def rnn() -> ZooModel:
    """2-layer tanh ``nn.RNN`` + Linear head, batch-first, 12 steps (batch and time dynamic)."""
    return _recurrent(nn.RNN)


class AudioNet(nn.Module):
    """A 1-D conv net over a waveform: strided Conv1d, BatchNorm1d, GELU, global pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 8, 9, stride=4, padding=4), nn.BatchNorm1d(8), nn.GELU(),
            nn.Conv1d(8, 16, 5, stride=2, padding=2), nn.BatchNorm1d(16), nn.GELU(),
            nn.Conv1d(16, 16, 3, padding=2, dilation=2), nn.BatchNorm1d(16), nn.GELU(),
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, samples) -> (N, 5)."""
        return self.head(self.features(x).mean(dim=-1))


@seeded
def audio_cnn() -> ZooModel:
    """:class:`AudioNet` on two 256-sample waveforms; batch and length dynamic."""
    return ZooModel(AudioNet(), (torch.randn(2, 1, 256),), ("input",),
                    {"input": {0: "batch", 2: "samples"}}, same_name)


class TiedAutoencoder(nn.Module):
    """An MLP autoencoder whose decoder reuses the encoder's weights transposed (tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Linear(16, 12)
        self.enc2 = nn.Linear(12, 6)
        self.dec_bias2 = nn.Parameter(torch.zeros(12))
        self.dec_bias1 = nn.Parameter(torch.zeros(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 16) -> (N, 16) reconstruction."""
        h = torch.tanh(self.enc2(torch.tanh(self.enc1(x))))
        h = torch.tanh(F.linear(h, self.enc2.weight.T, self.dec_bias2))
        return F.linear(h, self.enc1.weight.T, self.dec_bias1)


@seeded
def tied_mlp() -> ZooModel:
    """:class:`TiedAutoencoder` on 4x16."""
    return ZooModel(TiedAutoencoder(), (torch.randn(4, 16),), ("input",), None, same_name)


# --- transformers -----------------------------------------------------------------------------

TOKENS = {"vocab": 100, "batch": 2, "sequence": 16}


class _Seq2Tuple(nn.Module):
    """A transformers model called with keyword inputs, returning a tuple without cache.

    Both exporters call ``forward`` positionally; transformers 5's forward takes keyword-only
    extras (``use_cache``), and the legacy exporter fails on them unless named here.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple:
        """(N, T) token ids, mask and (BERT) segment ids -> the model's output tuple."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          return_dict=False, **extra)


def _token_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, TOKENS["vocab"], (TOKENS["batch"], TOKENS["sequence"]))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # one padded sequence, so masking is exercised
    return ids, mask


_TOKEN_AXES = {name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")}


@seeded
def bert() -> ZooModel:
    """A 2-layer BERT encoder (``transformers.BertModel``) with the three inputs exports carry.

    Token ids, attention mask and segment (token type) ids; batch and sequence axes dynamic.
    """
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=TOKENS["vocab"], hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    ids, mask = _token_inputs()
    segments = torch.zeros_like(ids)
    segments[:, TOKENS["sequence"] // 2:] = 1
    names = ("input_ids", "attention_mask", "token_type_ids")
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    return ZooModel(_Seq2Tuple(BertModel(config)), (ids, mask, segments), names, axes, same_name)


@seeded
def gpt2() -> ZooModel:
    """A 2-layer GPT-2 LM (``transformers.GPT2LMHeadModel``) with its tied output head.

    Takes an attention mask, as LM exports for serving do; without one, transformers 5 traces
    a packed-sequence check (``torch.diff``) that the legacy exporter cannot export.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=TOKENS["vocab"], n_embd=32, n_layer=2, n_head=2,
                        n_positions=64, bos_token_id=0, eos_token_id=0)
    return ZooModel(_Seq2Tuple(GPT2LMHeadModel(config)), _token_inputs(),
                    ("input_ids", "attention_mask"), _TOKEN_AXES, same_name)


FAMILIES: tuple[Family, ...] = (
    Family("resnet18", "ResNet-18 (torchvision)", resnet18, healthy=True),
    Family("mobilenet_v3_small", "MobileNetV3-Small (torchvision)", mobilenet_v3_small,
           slow=True, healthy=True),
    Family("convnext", "ConvNeXt, Tiny's blocks at 1/4 size (torchvision)", convnext,
           slow=True, healthy=True),
    Family("vit", "ViT, 2 layers (torchvision)", vit, healthy=True),
    Family("unet", "UNet, ConvTranspose + bilinear", unet),
    Family("lstm", "LSTM, 2 layers", lstm),
    Family("bilstm", "Bidirectional LSTM, 2 layers", bilstm, slow=True),
    Family("gru", "GRU, 2 layers", gru, slow=True),
    Family("rnn", "RNN (tanh), 2 layers", rnn, slow=True),
    Family("audio_cnn", "1-D conv audio net", audio_cnn, slow=True),
    Family("tied_mlp", "MLP autoencoder, tied weights", tied_mlp),
    Family("bert", "BERT encoder, 2 layers (transformers)", bert, healthy=True,
           token_inputs=("input_ids",)),
    Family("gpt2", "GPT-2 LM, 2 layers (transformers)", gpt2, slow=True, healthy=True,
           token_inputs=("input_ids",)),
)
BY_NAME = {family.name: family for family in FAMILIES}


def export(model: ZooModel, exporter: Exporter) -> bytes:
    """Export ``model`` to ONNX bytes.

    ``legacy``: TorchScript exporter, opset 17, ``do_constant_folding=False``, ``dynamic_axes``.
    ``dynamo``: ``dynamo=True``, opset 18, ``optimize=False``, ``dynamic_shapes`` with one named
    ``torch.export.Dim`` per axis name (axes sharing a name share the Dim, as users write it).
    """
    if exporter == "legacy":
        return export_legacy(model.module, model.args, opset=LEGACY_OPSET,
                             do_constant_folding=False, input_names=model.input_names,
                             dynamic_axes=model.dynamic_axes)
    shapes = None
    if model.dynamic_axes:
        dims: dict[str, torch.export.Dim] = {}
        shapes = [{axis: dims.setdefault(label, torch.export.Dim(label))
                   for axis, label in model.dynamic_axes.get(name, {}).items()} or None
                  for name in model.input_names]
    return export_dynamo(model.module, model.args, opset=DYNAMO_OPSET, optimize=False,
                         input_names=model.input_names, dynamic_shapes=shapes)


def missing_converters(data: bytes) -> tuple[str, ...]:
    """``Op-version`` of every top-level op without a converter (stock or ours), in node order.

    The version is the schema's ``since_version`` at the model's opset: what a converter must be
    registered for. The loader stops at the first; coverage wants them all.
    """
    model = onnx.load_from_string(data)
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    missing: dict[str, None] = {}
    for node in model.graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        try:
            get_converter(operation_type=node.op_type, version=opsets[domain], domain=domain)
        except NotImplementedError:
            version = defs.get_schema(node.op_type, opsets[domain], domain).since_version
            missing[f"{node.op_type}-{version}"] = None
    return tuple(missing)


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` normalizes by batch statistics in training mode (the probe's default)."""
    return any(isinstance(sub, nn.modules.batchnorm._BatchNorm) for sub in module.modules())


@dataclass(frozen=True)
class GradientCheck:
    """Per-initializer gradient norms of a loaded export against the native module's.

    Attributes:
        native: Native parameters (a tied one counts once).
        compared: Initializers compared with the native parameter they store.
        mismatched: ``(initializer, loaded norm, native norm)`` outside the tolerance.
        unmatched: Loaded parameters that store no native parameter.
        misplaced: Native parameters the file stores under none or several of their names.
    """

    native: int
    compared: int
    mismatched: tuple[tuple[str, float, float], ...]
    unmatched: tuple[str, ...]
    misplaced: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Everything compared matched and every parameter is accounted for."""
        return self.compared > 0 and not (self.mismatched or self.unmatched or self.misplaced)

    def describe(self) -> str:
        """One line for a test failure or a coverage-table cell."""
        parts = [f"{self.compared} of {self.native} weights compared"
                 + (", all match" if self.ok else "")]
        if self.mismatched:
            name, got, want = max(self.mismatched,
                                  key=lambda m: abs(m[1] - m[2]) / max(m[2], 1e-30))
            parts.append(f"{len(self.mismatched)} differ (worst {name}: {got:.6g} vs native "
                         f"{want:.6g})")
        if self.unmatched:
            parts.append(f"no native counterpart: {', '.join(self.unmatched[:3])}")
        if self.misplaced:
            parts.append(f"stored under none or several names: {', '.join(self.misplaced[:3])}")
        return "; ".join(parts)


def check_gradients(model: ZooModel, loaded: LoadedModel, exporter: Exporter, *,
                    rtol: float = 1e-4, atol: float = 1e-6) -> GradientCheck:
    """Compare ‖grad‖ per initializer with the native ``param.grad`` norm, same inputs and loss.

    A tied parameter (several names, one tensor) is stored once and gets the total gradient;
    it is compared under whichever of its names the file uses. Parameters ``onnx_name`` says
    the exporter renames are not compared.

    ``atol`` is relative to the largest native gradient norm: gradients that are zero in exact
    arithmetic (the bias of a BatchNorm whose output the next batch-statistics BatchNorm
    re-centres, an unused embedding row) come out of both sides as float32 rounding noise.
    """
    want = native_grad_norms(model.module, model.args)
    got = loaded_grad_norms(loaded, model.args)
    atol = atol * max(want.values(), default=0.0)
    groups: dict[int, list[str]] = defaultdict(list)
    for name, param in model.module.named_parameters(remove_duplicate=False):
        groups[id(param)].append(name)
    compared, mismatched, misplaced = set(), [], []
    for names in groups.values():
        candidates = {mapped for name in names
                      if (mapped := model.onnx_name(name, exporter)) is not None}
        if not candidates:
            continue
        stored = candidates & set(got)
        if len(stored) != 1:
            misplaced.append(names[0])
            continue
        (name,) = stored
        compared.add(name)
        if abs(got[name] - want[names[0]]) > atol + rtol * abs(want[names[0]]):
            mismatched.append((name, got[name], want[names[0]]))
    return GradientCheck(len(groups), len(compared), tuple(mismatched),
                         tuple(sorted(set(got) - compared)), tuple(misplaced))
