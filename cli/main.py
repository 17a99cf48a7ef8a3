"""``cnnviz``: explain CNN image classifiers from the command line.

Exit codes: 0 success; 2 bad usage (unknown option, bad value: click's usage errors); 1 failure, with a one-line
``cnnviz: error: ...`` cause on stderr (the full traceback only with ``--debug``); 130 interrupted (Ctrl-C), with
the results finished so far kept.
"""
from __future__ import annotations

import errno
import os
import sys
import traceback

import click

from onnx_cnnviz.errors import CnnvizError

from .common import EXIT_FAILURE, EXIT_INTERRUPTED, global_flags, settings


def fail_line(exc: BaseException, resumable: bool = True) -> str:
    """The one-line cause printed for an error; ``resumable``: the failed command has --resume (a full disk then
    suggests it)."""
    if isinstance(exc, CnnvizError):
        text = str(exc)
    elif isinstance(exc, OSError):
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        text = f"{exc.strerror or exc}{where}"
        if exc.errno == errno.ENOSPC:
            text += (" (the disk is full; free space and run again with --resume)" if resumable else
                     " (the disk is full; free space and run the command again)")
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            text += " (if this is an output path, choose a writable folder with --out)"
    else:
        text = f"internal error ({type(exc).__name__}: {exc}); run again with --debug for the traceback"
    return "cnnviz: error: " + " ".join(text.split())


class CnnvizGroup(click.Group):
    """A click group that maps errors to exit codes and one-line messages (for the console script and CliRunner)."""

    def resolve_command(self, ctx: click.Context, args):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta["cnnviz.command"] = command  # for the error message: which options the failed command has
        return name, command, rest

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # stdout closed early (| head): stop quietly, as a SIGPIPE would
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            ctx.exit(141)
        except KeyboardInterrupt:
            click.echo("cnnviz: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (CnnvizError, OSError, Exception) as exc:  # noqa: BLE001 - the CLI boundary
            if settings(ctx).debug or os.environ.get("CNNVIZ_DEBUG"):
                traceback.print_exc(file=sys.stderr)
            command = ctx.meta.get("cnnviz.command")
            resumable = command is not None and any(p.name == "resume" for p in command.params)
            click.echo(fail_line(exc, resumable), err=True)
            ctx.exit(EXIT_FAILURE)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group("cnnviz", cls=CnnvizGroup, context_settings=CONTEXT)
@click.version_option(package_name="onnx-cnnviz", prog_name="cnnviz")
@global_flags
def cli():
    """Explain CNN image classifiers through ONNX: Grad-CAM, saliency, guided backprop, occlusion and more,
    computed inside a stock onnxruntime session.

    \b
    Start with:
      cnnviz inspect model.onnx
      cnnviz explain model.onnx photos/ --method gradcam,saliency --out out/
      cnnviz report model.onnx photos/*.jpg --out report/

    Global flags (--quiet, --json, --debug) go before or after the command name.
    """


def _register():
    from . import convert, explain, features, graph, inspect_cmd, report

    cli.add_command(inspect_cmd.inspect_cmd)
    cli.add_command(explain.explain_cmd)
    cli.add_command(explain.occlusion_cmd)
    cli.add_command(report.report_cmd)
    cli.add_command(graph.export_graph_cmd)
    cli.add_command(convert.convert_group)
    for command in features.COMMANDS:
        cli.add_command(command)


_register()


def main(argv=None) -> int:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="cnnviz")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            # click turns Ctrl-C outside a command into Abort -> exit 1; report it as an interrupt.
            return code
        click.echo(code, err=True)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
