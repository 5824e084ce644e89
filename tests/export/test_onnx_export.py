"""ONNX export of registered models: standard ops only, checker, onnxruntime parity, TensorRT op coverage."""
import os

import onnx
import pytest
import torch
from torch import nn

from covseg_fast.cli.main import main as cli_main
from covseg_fast.export import OnnxRuntimeRunner, export_onnx, unsupported_nodes
from covseg_fast.models import ModelSpec, get_model, register_model, save_checkpoint
from covseg_fast.nn import APM, MSA


class TinyAttentionNet(nn.Module):
    """Exercises every fused module's reference path in an exported graph."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, stride=2, padding=1)
        self.msa = MSA(width)
        self.apm = APM(width)
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        features, attention_map = self.apm(self.msa(self.stem(x)))
        y = self.head(self.up(features))
        return y + nn.functional.interpolate(attention_map, scale_factor=2, mode="bilinear", align_corners=True)


def _criterion():
    return lambda outputs, batch: (outputs.mean(), {})


register_model(ModelSpec("tiny_attention_test", TinyAttentionNet, _criterion, in_channels=1, input_size=(32, 32),
                         normalization="unit", size_multiple=16))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = get_model("tiny_attention_test", width=8)
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return model, export_onnx(model, path)


def test_export_is_checked_and_matches_pytorch(exported):
    model, report = exported
    assert os.path.isfile(report.path)
    onnx.checker.check_model(report.path, full_check=True)
    assert report.max_abs_error_probability is not None and report.max_abs_error_probability <= 1e-4
    assert report.max_abs_error_logits <= 1e-3
    # random inputs at the traced shape, another batch size and another spatial size were compared
    assert {s[0] for s in report.checked_shapes} >= {1, 2, 3} and {s[2] for s in report.checked_shapes} == {32, 48}


def test_export_leaves_one_ordinary_file(exported):
    from covseg_fast.atomic import umask_mode

    _, report = exported
    # no temporary graph or weights file beside it (torch.onnx writes <tmp>.data; the weights are inlined)
    assert os.listdir(os.path.dirname(report.path)) == ["tiny.onnx"]
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in onnx.load(report.path).graph.initializer)
    assert os.stat(report.path).st_mode & 0o777 == umask_mode()    # not mkstemp's 0600


def test_graph_holds_only_ops_tensorrt_parses(exported):
    _, report = exported
    proto = onnx.load(report.path)
    assert unsupported_nodes(proto) == []
    assert report.tensorrt_unsupported == []
    assert {"Conv", "Softmax", "MatMul"} <= set(report.op_types)
    assert not any(n.domain.startswith("covseg") for n in proto.graph.node)


def test_metadata_names_the_model(exported):
    _, report = exported
    meta = {p.key: p.value for p in onnx.load(report.path).metadata_props}
    assert meta["covseg_model"] == "tiny_attention_test" and '"width": 8' in meta["covseg_config"]


def test_runner_batch_and_size_are_dynamic(exported):
    model, report = exported
    runner = OnnxRuntimeRunner(report.path)
    x = torch.rand(5, 1, 64, 48)
    with torch.no_grad():
        from covseg_fast.export import reference_modules

        with reference_modules(model):
            expected = model(x)
    torch.testing.assert_close(runner(x), expected, atol=1e-4, rtol=1e-4)


def _model(nodes, inputs, initializers=(), opset=18):
    """A graph over float ``inputs`` (name → shape) whose first node's first output is the output."""
    values = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT if not n.startswith("i64") else
                                                 onnx.TensorProto.INT64, shape) for n, shape in inputs.items()]
    out = onnx.helper.make_tensor_value_info(nodes[-1].output[0], onnx.TensorProto.FLOAT, None)
    graph = onnx.helper.make_graph(nodes, "g", values, [out], list(initializers))
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def _i64(name, values):
    return onnx.helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], values)


def test_opset_range_and_minimum_tensorrt():
    from covseg_fast.export import MIN_TENSORRT_VERSION, min_tensorrt_for_opset

    assert (MIN_TENSORRT_VERSION, min_tensorrt_for_opset(18)) == ("10.0", "10.0")  # 8.6 stops at opset 17
    assert [min_tensorrt_for_opset(o) for o in (13, 17, 20, 21)] == ["8.4", "8.5", "10.0", "10.15"]
    with pytest.raises(ValueError, match="opset 25"):
        min_tensorrt_for_opset(25)
    relu = [onnx.helper.make_node("Relu", ["x"], ["y"])]
    assert unsupported_nodes(_model(relu, {"x": [1]})) == []
    assert any("opset 21 is outside TensorRT 10.0's range 9..20" in p
               for p in unsupported_nodes(_model(relu, {"x": [1]}, opset=21)))


def test_inputs_that_must_be_constant_or_shape_computations():
    node = onnx.helper.make_node
    shape_of_x = [node("Shape", ["x"], ["s"])]
    cases = {  # name: (nodes, extra inputs, initializers, expected problem or None)
        "reduce_axes_initializer": ([node("ReduceMean", ["x", "ax"], ["y"])], {}, [_i64("ax", [1])], None),
        "reduce_axes_from_data": ([node("ReduceMean", ["x", "i64_ax"], ["y"])], {"i64_ax": [1]}, [],
                                  "axes must be an initializer"),
        "unsqueeze_axes_folded": ([node("Concat", ["a", "b"], ["ab"], axis=0), node("Unsqueeze", ["x", "ab"], ["y"])],
                                  {}, [_i64("a", [0]), _i64("b", [1])], None),
        "unsqueeze_axes_from_data": ([node("Unsqueeze", ["x", "i64_ax"], ["y"])], {"i64_ax": [1]}, [],
                                     "axes must be a build-time constant"),
        "reshape_from_shape": (shape_of_x + [node("Reshape", ["x", "s"], ["y"])], {}, [], None),
        "reshape_from_data": ([node("Reshape", ["x", "i64_shape"], ["y"])], {"i64_shape": [4]}, [],
                              "shape depends on tensor values"),
        "resize_sizes_from_shape": (shape_of_x + [node("Resize", ["x", "", "", "s"], ["y"], mode="linear")], {}, [],
                                    None),
        "resize_sizes_from_data": ([node("Resize", ["x", "", "", "i64_sizes"], ["y"], mode="linear")],
                                   {"i64_sizes": [4]}, [], "sizes depends on tensor values"),
        "pad_pads_from_data": ([node("Pad", ["x", "i64_pads"], ["y"])], {"i64_pads": [8]}, [],
                               "pads depends on tensor values"),
        "resize_antialias": ([node("Resize", ["x", "", "", "sz"], ["y"], mode="linear", antialias=1)], {},
                             [_i64("sz", [1, 1, 4, 4])], "antialias=1"),
        "resize_cubic": ([node("Resize", ["x", "", "", "sz"], ["y"], mode="cubic")], {}, [_i64("sz", [1, 1, 4, 4])],
                         "mode=cubic"),
        "squeeze_static": ([node("Squeeze", ["c"], ["y"])], {"c": [1, 1]}, [], None),
        "squeeze_dynamic": ([node("Squeeze", ["c"], ["y"])], {"c": ["batch", 1]}, [], "without axes"),
        "maxpool_dilated": ([node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])], {}, [],
                            "dilations"),
        "maxpool_indices": ([node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])], {}, [], "Indices"),
    }
    for name, (nodes, inputs, inits, expected) in cases.items():
        problems = unsupported_nodes(_model(nodes, {"x": ["batch", 1, 8, 8], **inputs}, inits))
        if expected is None:
            assert problems == [], name
        else:
            assert len(problems) == 1 and expected in problems[0], (name, problems)


def test_unsupported_nodes_flags_custom_domains_and_unknown_ops():
    node = onnx.helper.make_node("class_prob_pool", ["x"], ["y"], domain="covseg")
    nonzero = onnx.helper.make_node("NonZero", ["x"], ["z"])
    graph = onnx.helper.make_graph([node, nonzero], "g", [onnx.helper.make_tensor_value_info("x", 1, [1])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1])])
    problems = unsupported_nodes(onnx.helper.make_model(graph))
    assert any("covseg::class_prob_pool" in p for p in problems) and any("NonZero" in p for p in problems)


def test_cli_export_and_bad_checkpoints(tmp_path, capsys):
    model = get_model("tiny_attention_test", width=4)
    ckpt = str(tmp_path / "tiny.pt")
    save_checkpoint(ckpt, model)
    out = str(tmp_path / "tiny.onnx")
    assert cli_main(["export", "--checkpoint", ckpt, "--out", out]) == 0
    assert "max |Δ probability|" in capsys.readouterr().out and os.path.isfile(out)
    # existing output is not overwritten without --overwrite, nor is the ONNX file written beside an engine
    assert cli_main(["export", "--checkpoint", ckpt, "--out", out]) == 2
    assert cli_main(["export", "--checkpoint", ckpt, "--format", "tensorrt", "--out", out[:-5] + ".engine"]) == 2
    # a real-input check volume that cannot be read: a usage error before anything is written
    assert cli_main(["export", "--checkpoint", ckpt, "--check-volume", str(tmp_path / "none.nii.gz"),
                     "--out", str(tmp_path / "d.onnx")]) == 2
    assert not os.path.exists(tmp_path / "d.onnx")
    # wrong model, corrupted file, missing file: clear errors, exit 2
    assert cli_main(["export", "--checkpoint", ckpt, "--model", "msa_unet", "--out", str(tmp_path / "a.onnx")]) == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli_main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "b.onnx")]) == 2
    assert cli_main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "c.onnx")]) == 2


def test_real_check_slices_are_the_screeners_model_input():
    from covseg_fast.export.real_input import DEMO_CT, screening_slices
    from covseg_fast.inference.screener import ScreenConfig, Screener
    from covseg_fast.io import read_nifti
    from covseg_fast.models import get_spec

    x = screening_slices("tiny_attention_test", DEMO_CT, count=5)
    screener = Screener(nn.Identity(), get_spec("tiny_attention_test"), ScreenConfig(out_dir="unused", writers=1))
    every, _ = screener.to_model_slices(read_nifti(DEMO_CT).data)
    assert x.shape == (5, 1, 32, 32) and every.shape[0] == 64
    torch.testing.assert_close(x, every[[0, 16, 32, 47, 63]], rtol=0, atol=0)  # evenly spaced, first and last
    assert x.std() > 0.05  # real image content, not a constant


def test_tensorrt_build_needs_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from covseg_fast.export.tensorrt_engine import import_tensorrt

        with pytest.raises(RuntimeError, match=r"pip install \"tensorrt-cu12>=10,<11\""):
            import_tensorrt()
        pytest.skip("tensorrt is not importable here: engine build/run tests need it (see README)")
