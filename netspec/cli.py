"""The `netspec` program: Caffe's `caffe` tool (train, test, time, device_query) plus the tools.

Flags keep Caffe's spellings, including gflags' single dash (`-solver x` works
like `--solver=x`), so existing scripts run unchanged. Errors in the user's
input print one line and exit 1; usage errors exit 2; `--verbose` shows the
traceback as well. The commands live in netspec/commands/; this module mounts them.
"""
import click

from .commands import caffe_tool, data, export, files, logs
from .commands.base import Group, run


# `parse-log` and `parse_log` name the same command (Caffe's tools use underscores).
@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"],
                                          "token_normalize_func": lambda name: name.replace("-", "_")})
@click.option("--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main_group(ctx, verbose):
    """netspec: train and run Caffe nets on numpy."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


for _command, _name in [
        (caffe_tool.train, "train"), (caffe_tool.test, "test"), (caffe_tool.time_command, "time"),
        (caffe_tool.device_query, "device_query"),
        (logs.parse_log_command, "parse_log"), (logs.plot_log_command, "plot_log"),
        (files.convert_command, "convert"), (files.upgrade_command, "upgrade"), (files.draw_command, "draw"),
        (data.convert_mnist_command, "convert_mnist"), (data.get_mnist_command, "get_mnist"),
        (data.compute_image_mean_command, "compute_image_mean"),
        (data.convert_imageset_command, "convert_imageset"), (data.extract_features_command, "extract_features"),
        (data.convert_annoset_command, "convert_annoset"),
        (export.export_command, "export")]:
    main_group.add_command(_command, name=_name)


def main(argv=None):
    run(main_group, argv)


if __name__ == "__main__":
    main()
