"""External data: default ``dynamo=True`` exports (weights in ``model.onnx.data``) load, with
the same gradients as the same model in one file; every unsafe reference is refused by name.

Parity: each family is exported once to a folder with torch's defaults (external data on), and
the one-file twin is that export with its data embedded by onnx itself (same graph, same bytes),
so any difference comes from how we read the data. The native module stays the independent
reference for the gradients (:func:`tests.model_zoo.check_gradients`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from diagnostics import diagnose
from diagnostics.errors import ExternalDataError, ResourceLimitError
from diagnostics.limits import Limits
from diagnostics.loading.onnx.external_data import INLINE_ELEMENTS, initializer_array
from diagnostics.loading.onnx.loader import load_onnx
from tests.model_zoo import BY_NAME, DYNAMO_OPSET, FAMILIES, ZooModel, check_gradients
from tests.onnx_export import loaded_grad_norms

FAST = ("tied_mlp", "resnet18", "bert")
# Every other family of the model zoo (make test-all): a default dynamo export of each is read
# with its data file and matches the native gradients and the file with its data embedded.
SLOW = tuple(family.name for family in FAMILIES if family.name not in FAST)


@functools.cache
def _zoo(family: str) -> ZooModel:
    return BY_NAME[family].build()


def _export_to(model: ZooModel, folder: Path, *, optimize: bool = False) -> Path:
    """``torch.onnx.export(..., dynamo=True)`` to a file with torch's defaults for the data
    (external); optimizer off by default so initializers keep their ``state_dict`` names."""
    shapes = None
    if model.dynamic_axes:
        dims: dict[str, torch.export.Dim] = {}
        shapes = tuple({axis: dims.setdefault(label, torch.export.Dim(label))
                        for axis, label in model.dynamic_axes.get(name, {}).items()} or None
                       for name in model.input_names)
    path = folder / "model.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.module, model.args, str(path), dynamo=True,
                          opset_version=DYNAMO_OPSET, optimize=optimize,
                          input_names=list(model.input_names), dynamic_shapes=shapes)
    return path


@functools.cache
def _exported(family: str, root: Path, optimize: bool = False) -> Path:
    folder = root / f"{family}-{'optimized' if optimize else 'plain'}"
    folder.mkdir()
    return _export_to(_zoo(family), folder, optimize=optimize)


@pytest.fixture(scope="module")
def export_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dynamo-exports")


def _one_file(path: Path) -> bytes:
    return onnx.load(str(path), load_external_data=True).SerializeToString()


def _parity(family: str, root: Path) -> None:
    path = _exported(family, root)
    assert (path.parent / "model.onnx.data").is_file(), "the default export wrote no data file"
    external = load_onnx(path.read_bytes(), name=path.name, data_dir=path.parent)
    single = load_onnx(_one_file(path), name=path.name)
    zoo = _zoo(family)
    check = check_gradients(zoo, external, "dynamo")
    assert check.ok, check.describe()
    got, want = loaded_grad_norms(external, zoo.args), loaded_grad_norms(single, zoo.args)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-12), name


@pytest.mark.parametrize("family", FAST)
def test_default_dynamo_export_matches_one_file(family: str, export_root: Path) -> None:
    _parity(family, export_root)


def _optimized_parity(family: str, root: Path) -> None:
    """All of torch's defaults (its optimizer folds and renames weights, so the native names
    no longer apply): the same gradients as the file with its data embedded."""
    path = _exported(family, root, optimize=True)
    assert (path.parent / "model.onnx.data").is_file()
    zoo = _zoo(family)
    external = load_onnx(path.read_bytes(), data_dir=path.parent)
    got = loaded_grad_norms(external, zoo.args)
    want = loaded_grad_norms(load_onnx(_one_file(path)), zoo.args)
    assert got.keys() == want.keys()
    assert got
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=1e-12), name


@pytest.mark.parametrize("family", ["resnet18"])
def test_all_defaults_dynamo_export_matches_one_file(family: str, export_root: Path) -> None:
    _optimized_parity(family, export_root)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tied_mlp", "bert", *SLOW])
def test_all_defaults_dynamo_export_matches_one_file_slow(family: str,
                                                          export_root: Path) -> None:
    _optimized_parity(family, export_root)


@pytest.mark.slow
@pytest.mark.parametrize("family", SLOW)
def test_default_dynamo_export_matches_one_file_slow(family: str, export_root: Path) -> None:
    _parity(family, export_root)


def test_diagnose_reads_the_data_beside_a_path(export_root: Path) -> None:
    path = _exported("tied_mlp", export_root)
    report = diagnose(path, config={"samples": 1, "verify_remedies": False})
    assert report.layers


def test_bytes_without_folder_say_how_to_pass_the_data(export_root: Path) -> None:
    path = _exported("tied_mlp", export_root)
    with pytest.raises(ExternalDataError, match="data_dir") as caught:
        diagnose(path.read_bytes(), config={"samples": 1})
    assert caught.value.context["location"] == "model.onnx.data"


def test_weights_are_shared_not_copied(export_root: Path) -> None:
    """A large external weight becomes a parameter holding the file's values; it is read
    once (every use shares it), so it is not duplicated by the loader."""
    path = _exported("resnet18", export_root)
    loaded = load_onnx(path.read_bytes(), data_dir=path.parent)
    model = onnx.load(str(path), load_external_data=False)
    big = [init for init in model.graph.initializer
           if init.data_location == TensorProto.EXTERNAL and np.prod(init.dims) > INLINE_ELEMENTS]
    assert big
    values = onnx.load(str(path)).graph.initializer
    expected = {init.name: numpy_helper.to_array(init) for init in values}
    for init in big:
        param = loaded.parameters[init.name]
        np.testing.assert_array_equal(param.detach().numpy(), expected[init.name])


# --- refusals: every unsafe reference, by tensor and location ---------------------------------

WEIGHT = np.arange(INLINE_ELEMENTS + 4, dtype=np.float32).reshape(-1, 4) / 1000


def _model(location: str, *, offset: int | None = None, length: int | None = None,
           data_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """y = x @ W with W (n x 4) declared external at ``location``."""
    weight = TensorProto(name="W", data_type=data_type, dims=WEIGHT.shape,
                         data_location=TensorProto.EXTERNAL)
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, WEIGHT.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = tmp_path / "model"
    data.mkdir()
    (data / "w.bin").write_bytes(WEIGHT.tobytes())
    return data


def test_hand_written_reference_loads(folder: Path) -> None:
    loaded = load_onnx(_model("w.bin").SerializeToString(), data_dir=folder)
    np.testing.assert_array_equal(loaded.parameters["W"].detach().numpy(), WEIGHT)
    out = loaded.module(torch.ones(2, WEIGHT.shape[0]))
    out.sum().backward()
    assert loaded.parameters["W"].grad is not None


def _outside(folder: Path) -> Path:
    secret = folder.parent / "secret.bin"
    secret.write_bytes(WEIGHT.tobytes())
    return secret


REFUSALS = [
    pytest.param(lambda f: _model("../secret.bin"), "'..'", id="traversal"),
    pytest.param(lambda f: _model("sub/../../secret.bin"), "'..'", id="traversal-inner"),
    pytest.param(lambda f: _model(str(_outside(f))), "absolute", id="absolute"),
    pytest.param(lambda f: _model("C:\\data\\w.bin"), "absolute", id="windows-absolute"),
    pytest.param(lambda f: (os.symlink(_outside(f), f / "link.bin"), _model("link.bin"))[1],
                 "outside the data folder", id="symlink-out"),
    pytest.param(lambda f: _model("missing.bin"), "no such file", id="missing-file"),
    pytest.param(lambda f: _model("w.bin", offset=64), "beyond the end", id="offset-beyond"),
    pytest.param(lambda f: _model("w.bin", length=WEIGHT.nbytes * 2), "length",
                 id="length-lies"),
    pytest.param(lambda f: _model("w.bin", offset=-1), "not a non-negative integer",
                 id="negative-offset"),
    pytest.param(lambda f: _model(""), "no location", id="no-location"),
    pytest.param(lambda f: (os.mkdir(f / "dir"), _model("dir"))[1], "not a regular file",
                 id="directory"),
    pytest.param(lambda f: _model("w.bin", data_type=TensorProto.STRING), "string",
                 id="string-tensor"),
]


@pytest.mark.parametrize(("build", "message"), REFUSALS)
def test_unsafe_references_are_refused(build, message: str, folder: Path) -> None:
    model = build(folder)
    with pytest.raises(ExternalDataError, match=message) as caught:
        load_onnx(model.SerializeToString(), data_dir=folder)
    assert caught.value.context["tensor"] == "W"
    assert "'W'" in caught.value.detail


def test_shapes_are_budgeted_before_any_read(folder: Path) -> None:
    with pytest.raises(ResourceLimitError, match="float weights"):
        load_onnx(_model("w.bin").SerializeToString(), data_dir=folder,
                  limits=Limits(max_parameters=100))


def test_no_external_read_outside_a_load(folder: Path) -> None:
    """onnx's own reader would open the location relative to the working directory."""
    weight = _model("w.bin").graph.initializer[0]
    with pytest.raises(ExternalDataError, match="not being read here"):
        initializer_array(weight)


def test_repaired_model_of_an_external_data_model_is_one_file(tmp_path: Path) -> None:
    """Weights read from external data are written back embedded: the repaired file loads
    alone, with the remedy's new weights."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(10):
        layers += [torch.nn.Linear(80, 80), torch.nn.Sigmoid()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(80, 4)).eval()
    model = ZooModel(net, (torch.randn(4, 80),), ("x",), None, lambda name, _: name)
    path = _export_to(model, tmp_path)
    report = diagnose(path, config={"samples": 1})
    repairable = [remedy.id for remedy in report.remedies if remedy.repairable]
    assert repairable, [remedy.id for remedy in report.remedies]
    repaired = onnx.load_from_string(report.repaired_model(repairable[0]))
    assert not any(init.data_location == TensorProto.EXTERNAL
                   for init in repaired.graph.initializer)
    before = onnx.load(str(path)).graph.initializer
    changed = [init.name for init, old in zip(repaired.graph.initializer, before, strict=True)
               if not np.array_equal(initializer_array(init), numpy_helper.to_array(old))]
    assert changed
    load_onnx(repaired.SerializeToString())
