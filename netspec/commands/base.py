"""How every `netspec` command reports a user error, and how a command runs as a program.

The one convention: library code raises NetspecError; a command built with
`command()` turns it (and MemoryError) into a UserError, which click shows as
one line, `netspec: error: ...`, with exit status 1. Usage errors are click's
own (exit 2). `run` is the program entry point for the `netspec` group and for
each tools/ script: it adds gflags spellings, Ctrl-C (exit 130), `--verbose`
tracebacks, and under MPI ends every rank when one fails.
"""
import sys
import traceback

import click

from .. import glog, parallel
from ..errors import NetspecError
from ..gflags import expand_flagfiles, take_log_dir


class UserError(click.ClickException):
    """Bad input from the user: one readable line on stderr, exit status 1."""

    exit_code = 1

    def __init__(self, message):
        super().__init__(glog.printable(" ".join(str(message).split("\n"))))

    def show(self, file=None):
        click.echo(f"netspec: error: {self.format_message()}", err=True)


def user_error(exc):
    """The UserError a NetspecError or MemoryError stands for; any other exception as it is."""
    if isinstance(exc, NetspecError):
        return UserError(exc)
    if isinstance(exc, MemoryError):
        return UserError("out of memory")
    return exc


class Command(click.Command):
    """A click command whose NetspecError and MemoryError reach the user as a UserError."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (NetspecError, MemoryError) as e:
            raise user_error(e) from e


class Group(click.Group):
    """A click group whose `@group.command()` makes a Command."""

    command_class = Command


def command(name=None, **attrs):
    """click.command for netspec: errors follow the convention above."""
    return click.command(name, cls=Command, **attrs)


def gflags_to_click(argv):
    """gflags accept `-solver x` and `-solver=x`; click wants `--solver`."""
    out = []
    for arg in argv:
        if len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and arg[1:].split("=")[0].replace("_", "").isalpha():
            arg = "-" + arg
        out.append(arg)
    return out


def run(command, argv=None, prog_name="netspec"):
    """Run a click command as a program and exit: 0, 1 for user errors, 2 for usage, 130 on Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in argv
    glog.configure(level=glog.default_level())      # GLOG_minloglevel, as Caffe's tools
    try:
        try:
            # gflags' --flagfile and glog's --log_dir, for every command, before click parses.
            argv, log_dir = take_log_dir(expand_flagfiles(argv))
            if log_dir:
                glog.add_log_files(log_dir, prog_name)
            status = command.main(args=gflags_to_click(argv), prog_name=prog_name, standalone_mode=False)
        except BaseException as e:
            error = user_error(e)       # also for a plain click command that let a NetspecError out
            parallel.abort_job(error, verbose)      # MPI: a failing rank ends the whole job (no-op alone)
            if error is e:
                raise
            raise error from e
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("netspec: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        if verbose and isinstance(e, UserError) and e.__cause__ is not None:
            traceback.print_exception(e.__cause__)
        e.show()
        sys.exit(e.exit_code)
    # click hands back ctx.exit(n) as a return value when not in standalone mode: keep its status.
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)
