"""`netspec export --format onnx`: a deploy net and its weights as an ONNX file, optionally checked."""
import click

from ..onnx_export.builder import ExportError
from .base import command

DEFAULT_TOLERANCE = 1e-5


def _shape(value):
    dims = value.type.tensor_type.shape.dim
    return "x".join(d.dim_param or str(d.dim_value) for d in dims) or "scalar"


@click.command("export_command.py:0")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="Output format.")
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="Deploy net prototxt or YAML.")
@click.option("--weights", default=None, help="Trained .caffemodel (comma-separated for several).")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@click.option("--opset", type=int, default=None, help="ONNX opset to target [default: 21].")
@click.option("--dynamic-batch", "dynamic_batch", is_flag=True, help="Make the batch dimension symbolic.")
@click.option("--check", is_flag=True,
              help="Run the file with ONNX Runtime on random input and compare with netspec's forward.")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="--check fails (exit 1) when an output's relative difference exceeds this.")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TEST",
              show_default=True)
def export_command(fmt, model, weights, output, opset, dynamic_batch, check, tolerance, phase):
    """Export a net to ONNX with Caffe's numbers (and check it against netspec with --check)."""
    from .. import glog
    from ..net import Net
    from ..onnx_export.export import DEFAULT_OPSET, to_onnx, save
    from ..proto import caffe_pb2
    net = Net(model, caffe_pb2.Phase.Value(phase.upper()))
    if weights:
        for w in weights.split(","):
            if w:
                net.copy_from(w)
    else:
        glog.warning("no --weights: the file holds the parameters the net's fillers give", "export_command.py:0")
    onnx_model = to_onnx(net, opset, dynamic_batch)
    save(onnx_model, output)
    graph = onnx_model.graph
    click.echo(f"wrote {output}: opset {opset or DEFAULT_OPSET}, {len(graph.node)} nodes, inputs "
               + ", ".join(f"{v.name} {_shape(v)}" for v in graph.input) + "; outputs "
               + ", ".join(f"{v.name} {_shape(v)}" for v in graph.output))
    if not check:
        return
    from ..onnx_export.check import compare, runtime_version
    diffs = compare(net, onnx_model)
    click.echo(f"check: ONNX Runtime {runtime_version()} vs netspec forward, random N(0, 1) input "
               "(seed 0); largest relative difference max|onnx - netspec| / max|netspec|:")
    for name, diff in diffs.items():
        click.echo(f"  {name}: {diff:.3g}")
    worst = max(diffs, key=diffs.get) if diffs else None
    if worst is not None and not diffs[worst] <= tolerance:
        raise ExportError(f"{output}: check failed: output '{worst}' differs by {diffs[worst]:.3g} relative "
                          f"(tolerance {tolerance:g})")
