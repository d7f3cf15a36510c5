"""Charts of training logs, numbered as in Caffe's tools/extra/plot_training_log.py.example.

    0: Test accuracy vs. Iters         4: Train learning rate vs. Iters
    1: Test accuracy vs. Seconds       5: Train learning rate vs. Seconds
    2: Test loss vs. Iters             6: Train loss vs. Iters
    3: Test loss vs. Seconds           7: Train loss vs. Seconds

Each chart type also has a name ("test-accuracy-vs-iters", ...). Several logs
go on one chart, labelled by file name without ".log" as in Caffe. The output
format (PNG or SVG) follows the extension. matplotlib is optional and only
imported here, on first use, with the Agg canvas (no pyplot, no global backend
switch); `pip install matplotlib`, or the checkout's `plot` extra, brings it.
"""
import itertools
import os

from .durable import open_for_write
from .errors import NetspecError, install_hint
from .logparse import parse_log

# Caffe builds its list by sorting the field names; this is that order.
CHART_TYPES = (
    ("Test accuracy", "Iters"), ("Test accuracy", "Seconds"),
    ("Test loss", "Iters"), ("Test loss", "Seconds"),
    ("Train learning rate", "Iters"), ("Train learning rate", "Seconds"),
    ("Train loss", "Iters"), ("Train loss", "Seconds"),
)
_X_COLUMN = {"Iters": "NumIters", "Seconds": "Seconds"}
_MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*")
_FORMATS = {".png": "png", ".svg": "svg"}


def chart_name(chart_type):
    y, x = CHART_TYPES[chart_type]
    return f"{y}-vs-{x}".lower().replace(" ", "-")


def chart_title(chart_type):
    y, x = CHART_TYPES[chart_type]
    return f"{y} vs. {x}"


def resolve_chart_type(value):
    """A chart type number (0..7, int or string) or name -> the number."""
    text = str(value).strip().lower().replace("_", "-").replace(" ", "-")
    if text.isdigit() and int(text) < len(CHART_TYPES):
        return int(text)
    names = [chart_name(i) for i in range(len(CHART_TYPES))]
    if text in names:
        return names.index(text)
    raise NetspecError(f"unknown chart type {value!r}: expected 0..{len(CHART_TYPES) - 1} "
                       f"or one of {', '.join(names)}")


def _load_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NetspecError(f"plotting needs matplotlib: {install_hint('plot', 'matplotlib')}") from None
    return Figure, FigureCanvasAgg


def _y_column(rows, wanted):
    """The column holding `wanted` ("accuracy", "loss", "LearningRate"): exact name first."""
    names = [n for n in dict.fromkeys(k for row in rows for k in row)]
    if wanted in names:
        return wanted
    return next((n for n in names if wanted in n.lower()), None)


def series(chart_type, parsed, label="log"):
    """The (x, y) lists a chart draws for one parsed log."""
    y_field, x_field = CHART_TYPES[chart_type]
    phase, quantity = y_field.split(" ", 1)
    rows = parsed.test if phase == "Test" else parsed.train
    wanted = "LearningRate" if quantity == "learning rate" else quantity
    column = _y_column(rows, wanted)
    if not rows or column is None:
        have = ", ".join(n for n in dict.fromkeys(k for row in rows for k in row)) or "no rows"
        raise NetspecError(f"{label}: no {phase.lower()} {quantity} to plot for chart "
                           f"{chart_type} ({chart_title(chart_type)}); {phase.lower()} table has: {have}")
    x_column = _X_COLUMN[x_field]
    return ([row[x_column] for row in rows],
            [row.get(column, float("nan")) for row in rows])


def log_label(path):
    base = os.path.basename(path)
    return base[:-4] if base.endswith(".log") else base


def build_figure(chart_type, log_paths):
    """A matplotlib Figure with one line per log."""
    chart_type = resolve_chart_type(chart_type)
    Figure, FigureCanvasAgg = _load_matplotlib()
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for path, marker in zip(log_paths, itertools.cycle(_MARKERS)):
        x, y = series(chart_type, parse_log(path), label=path)
        ax.plot(x, y, label=log_label(path), marker=marker, markersize=3, linewidth=0.75)
    y_field, x_field = CHART_TYPES[chart_type]
    # Caffe's placement: losses and rates fall, accuracy rises
    ax.legend(loc="lower right" if "accuracy" in y_field else "upper right", ncol=1)
    ax.set_title(chart_title(chart_type))
    ax.set_xlabel(x_field)
    ax.set_ylabel(y_field)
    ax.grid(True, alpha=0.3)
    return fig


def plot_logs(chart_type, output_path, log_paths):
    """Draw the chart for every log into output_path (.png or .svg); return the path."""
    fmt = _FORMATS.get(os.path.splitext(output_path)[1].lower())
    if fmt is None:
        raise NetspecError(f"{output_path}: the output must end in .png or .svg")
    if not log_paths:
        raise NetspecError("no log files given to plot")
    fig = build_figure(chart_type, log_paths)
    with open_for_write(output_path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=100)
    return output_path
