"""The click commands of the `netspec` program, apart from the library they call.

One module per tool family; cli.py mounts them all under `netspec`, and the
scripts in tools/ run single ones through `base.run`:

    caffe_tool  train, test, time, device_query (Caffe's `caffe` tool)
    files       convert, upgrade, draw (nets and solvers as files)
    logs        parse_log, plot_log (Caffe's tools/extra log scripts)
    data        convert_mnist, get_mnist, compute_image_mean (datasets)

A command is declared with `base.command()` (or `@main_group.command()`) and
raises NetspecError for bad input; base.py turns that into one line on stderr
and exit status 1.
"""
