"""Nets and solvers as files: `netspec convert`, `upgrade` and `draw`."""
import click

from ..convert import BINARY_SUFFIXES, YAML_SUFFIXES, convert_file, path_has_suffix, upgrade_file
from ..draw import RANKDIRS, draw_net_to_file
from ..schema import read_net
from .base import command


def _format_name(path):
    if path_has_suffix(path, YAML_SUFFIXES):
        return "YAML"
    return "binary" if path_has_suffix(path, BINARY_SUFFIXES) else "prototxt"


def _kind_option(f):
    return click.option("--solver/--net", "is_solver", default=None,
                        help="Read IN as a solver / as a net (default: guess from the file "
                             "name and contents).")(f)


def _kind(is_solver):
    return None if is_solver is None else ("solver" if is_solver else "net")


@command("convert")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@_kind_option
def convert_command(src, dst, is_solver):
    """Convert a net or solver between prototxt and YAML (format by extension)."""
    kind = convert_file(src, dst, _kind(is_solver))
    click.echo(f"wrote {kind} {dst} ({_format_name(dst)}) from {src} ({_format_name(src)})")


@command("upgrade")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@_kind_option
def upgrade_command(src, dst, is_solver):
    """Upgrade an old-format Caffe net or solver (V0/V1 layers, input_dim, solver_type)."""
    kind, reasons = upgrade_file(src, dst, _kind(is_solver))
    if reasons:
        click.echo(f"upgraded {kind} {src} -> {dst}: {'; '.join(reasons)}")
    else:
        click.echo(f"{src} is already in the current format; wrote it unchanged to {dst}")


@command("draw")
@click.argument("net", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--rankdir", type=click.Choice(RANKDIRS, case_sensitive=False), default="LR",
              show_default=True, help="Direction the graph flows.")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST", "ALL"], case_sensitive=False), default="ALL",
              show_default=True, help="Draw only the layers this phase includes.")
@click.option("--display_lrm", is_flag=True, help="Show the lr_mult of Convolution, Deconvolution and InnerProduct.")
def draw_command(net, out, rankdir, phase, display_lrm):
    """Draw the net in NET as OUT (.dot, or .png/.jpg/.svg/.pdf/... with Graphviz installed)."""
    draw_net_to_file(read_net(net), out, rankdir.upper(), phase.upper(), display_lrm)
