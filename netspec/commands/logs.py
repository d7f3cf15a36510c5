"""Training logs: `netspec parse_log` and `plot_log`, as Caffe's tools/extra scripts."""
import click

from ..errors import NetspecError
from ..logparse import parse_log, save_tables
from ..plotlog import CHART_TYPES, chart_name, chart_title, plot_logs
from .base import command


@command("parse-log")
@click.argument("logfile")
@click.argument("output_dir", required=False)
@click.option("--delimiter", default=",", show_default=True,
              help="Column delimiter for CSV output ('\\t' or 'tab' for a tab).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--verbose", is_flag=True, help="Print the files written and the line counts.")
def parse_log_command(logfile, output_dir, delimiter, fmt, verbose):
    """Parse a training log into LOGFILE.train and LOGFILE.test tables, as Caffe's
    tools/extra/parse_log.py does, in OUTPUT_DIR (default: next to the log)."""
    delimiter = "\t" if delimiter in ("\\t", "tab") else delimiter
    if len(delimiter) != 1:
        raise NetspecError(f"--delimiter must be one character, got {delimiter!r}")
    parsed = parse_log(logfile)
    written = save_tables(parsed, logfile, output_dir, fmt, delimiter)
    if parsed.garbled_lines:
        click.echo(f"netspec: warning: {logfile}: skipped {parsed.garbled_lines} garbled line(s) "
                   f"(first at line {parsed.garbled_line_numbers[0]})", err=True)
    if verbose:
        for path in written:
            click.echo(f"Wrote {path}")
        click.echo(f"{len(parsed.train)} train rows, {len(parsed.test)} test rows, "
                   f"{parsed.skipped_lines} non-glog lines skipped, {parsed.restarts} restart(s)")


_EPILOG = "\b\nChart types:\n" + "\n".join(
    f"  {i}: {chart_title(i)}  ({chart_name(i)})" for i in range(len(CHART_TYPES)))


@command("plot-log", epilog=_EPILOG)
@click.argument("chart_type")
@click.argument("output")
@click.argument("logs", nargs=-1, required=True)
def plot_log_command(chart_type, output, logs):
    """Plot CHART_TYPE (a number 0..7 or a name) for one or more LOGS into OUTPUT (.png or .svg),
    as Caffe's tools/extra/plot_training_log.py does."""
    plot_logs(chart_type, output, list(logs))
