"""``cnnviz``: explain CNN image classifiers from the command line.

Exit codes: 0 success; 2 bad usage (unknown option, bad value: click's usage errors); 1 failure, with a one-line
``cnnviz: error: ...`` cause on stderr (the full traceback only with ``--debug``); 130 interrupted (Ctrl-C), with
the results finished so far kept.
"""
from __future__ import annotations

import copy
import errno
import os
import sys
import traceback
import warnings

import click

from onnx_cnnviz import jsonio
from onnx_cnnviz import settings as env_settings
from onnx_cnnviz.errors import CnnvizError, InputError

from .common import EXIT_FAILURE, EXIT_INTERRUPTED, error_document, global_flags, settings, warn


def fail_line(exc: BaseException, resumable: bool = True) -> str:
    """The one-line cause printed on stderr for an error that stops a command.

    Args:
        exc: the error.
        resumable: the failed command has ``--resume`` (a full disk then suggests it).

    Returns:
        ``cnnviz: error: `` followed by :func:`fail_text`.
    """
    return "cnnviz: error: " + fail_text(exc, resumable)


def fail_text(exc: BaseException, resumable: bool = True) -> str:
    """The cause of an error in one line, without the ``cnnviz: error:`` prefix (the --json error message).

    A :class:`~onnx_cnnviz.errors.CnnvizError` says its own cause; an ``OSError`` names its file, with what to do
    when the disk is full or a path is not writable; anything else is an internal error that points to ``--debug``.

    Args:
        exc: the error.
        resumable: the failed command has ``--resume`` (a full disk then suggests it).

    Returns:
        The message, its whitespace folded to single spaces.
    """
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
    return " ".join(text.split())


def _wants_json(ctx: click.Context | None, args=()) -> bool:
    """--json was given: read by its callback, or (for an error while the command line is parsed) anywhere among
    the arguments before ``--``."""
    if ctx is not None and settings(ctx).json:
        return True
    if ctx is not None and ctx.find_root().meta.get("cnnviz.json"):
        return True
    args = list(args)
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _emit_error(exc: BaseException, message: str, exit_code: int) -> None:
    click.echo(jsonio.dumps(error_document(exc, message, exit_code)))


def _library_warning(message, category, filename, lineno, file=None, line=None) -> None:
    warn(str(message), once=str(message))


def _debug_from_environment() -> bool:
    """Whether ``CNNVIZ_DEBUG`` asks for tracebacks (a malformed value, already reported, asks for none)."""
    try:
        return bool(env_settings.DEBUG.read())
    except InputError:
        return False


class CnnvizGroup(click.Group):
    """A click group that maps errors to exit codes and one-line messages (for the console script and CliRunner);
    under --json an error is also one JSON document on stdout, ``{"error": {"type", "message", "exit_code"}}``,
    usage errors (exit code 2) included."""

    def make_context(self, info_name, args, parent=None, **extra):
        args = list(args)
        wants_json = _wants_json(None, args)
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as exc:
            if wants_json:
                _emit_error(exc, exc.format_message(), exc.exit_code)
            raise
        ctx.meta["cnnviz.json"] = wants_json
        return ctx

    def resolve_command(self, ctx: click.Context, args):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta["cnnviz.command"] = command  # for the error message: which options the failed command has
        return name, command, rest

    def invoke(self, ctx: click.Context):
        try:
            env_settings.check_all()  # a malformed CNNVIZ_ variable is refused before any work, in one line
            with warnings.catch_warnings():
                # The library warns (no rectifier on the path, incremental occlusion unavailable, ...): show those
                # as the CLI's own one-line warnings, once each, silenced by --quiet.
                warnings.showwarning = _library_warning
                return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException as exc:  # bad usage (2), or click's own failures (1)
            if _wants_json(ctx):
                _emit_error(exc, exc.format_message(), exc.exit_code)
            raise
        except click.exceptions.Abort:
            raise
        except BrokenPipeError:  # stdout closed early (| head): stop quietly, as a SIGPIPE would
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            ctx.exit(141)
        except KeyboardInterrupt as exc:
            click.echo("cnnviz: interrupted", err=True)
            if _wants_json(ctx):
                _emit_error(exc, "interrupted", EXIT_INTERRUPTED)
            ctx.exit(EXIT_INTERRUPTED)
        except (CnnvizError, OSError, Exception) as exc:  # noqa: BLE001 - the CLI boundary
            if settings(ctx).debug or _debug_from_environment():
                traceback.print_exc(file=sys.stderr)
            command = ctx.meta.get("cnnviz.command")
            resumable = command is not None and any(p.name == "resume" for p in command.params)
            text = fail_text(exc, resumable)
            click.echo("cnnviz: error: " + text, err=True)
            if _wants_json(ctx):
                _emit_error(exc, text, EXIT_FAILURE)
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

    Global flags (--quiet, --json, --debug) go before or after the command name. One flag name means one thing in
    every command: --method (registry names), --target (a class index or name), --top-k (the K best classes),
    --batch-size (images per run), --out (a folder, or the file of a one-file command).
    """


def _register():
    from . import convert, evaluate, explain, features, graph, inspect_cmd, report

    cli.add_command(inspect_cmd.inspect_cmd)
    cli.add_command(explain.explain_cmd)
    cli.add_command(explain.occlusion_cmd)
    cli.add_command(evaluate.evaluate_cmd)
    cli.add_command(report.report_cmd)
    cli.add_command(graph.export_graph_cmd)
    cli.add_command(convert.convert_group)
    for command in features.COMMANDS:
        cli.add_command(command)
    # The other spelling of localize, accepted but not listed.
    alias = copy.copy(features.localize_cmd)
    alias.hidden = True
    cli.add_command(alias, name="localise")


_register()


def main(argv=None) -> int:
    """The ``cnnviz`` console script: run the command line and turn its exit into a status code.

    Args:
        argv: the arguments after the program name (None: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 failure (a one-line cause on stderr), 2 bad usage, 130 interrupted.
    """
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
