"""The ``edgecut`` command line: thin commands that parse arguments and call the library.

Each package keeps its own commands in a private ``_cli`` module; this group loads a
command's module only when that command runs, so ``edgecut run`` never imports the
cloud service or the plotting stack.
"""

from __future__ import annotations

# importlib.util is a submodule: imported by name, or a fresh interpreter lacks it (the
# arm64 smoke check found `edgecut devices` failing on a clean install).
import importlib
import importlib.util
import sys
import time
from typing import Any

import click

from devices.errors import EdgecutError

# command name -> "module:attribute" of a click command, imported on first use.
_LAZY_COMMANDS = {
    "zoo": "edge.cli._zoo:zoo",
    "quantize": "edge.cli._quantize:quantize",
    "profile": "partition._cli:profile",
    "partition": "partition._cli:partition_cmd",
    "serve": "cloud._cli:serve",
    "token": "cloud._cli:token",
    "replay": "edge.cli._replay:replay",
    "agent": "edge.cli._agent:agent",
    "demo": "edge.lab._demo:demo",
    "export": "edge.cli._export:export",
    "devices": "edge.cli._devices:devices_cmd",
    "health": "edge.cli._health:health",
    "doctor": "edge.cli._doctor:doctor",
    "sign": "edge.cli._sign:sign",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        for name, target in _LAZY_COMMANDS.items():
            module = target.split(":")[0]
            if importlib.util.find_spec(module) is not None:
                names.add(name)
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None or name not in _LAZY_COMMANDS:
            return command
        module_name, attr = _LAZY_COMMANDS[name].split(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        return getattr(importlib.import_module(module_name), attr)


# Every option of every command may also come from EDGECUT_<COMMAND>_<OPTION> (click's
# automatic environment variables), e.g. EDGECUT_SERVE_GRPC_PORT=8001.
@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "auto_envvar_prefix": "EDGECUT"})
@click.version_option(package_name="edgecut")
def cli() -> None:
    """edgecut: edge inference with cloud offload (run locally, offload, or split)."""


def _load_input(path: str, name: str) -> Any:
    import numpy as np

    from devices.errors import ModelInputError

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ModelInputError(f"input '{name}': file '{path}' not found") from None
    except (OSError, ValueError) as exc:
        raise ModelInputError(f"input '{name}': '{path}' is not a readable .npy file ({exc})") from exc


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "inputs", multiple=True, metavar="[NAME=]FILE.npy",
              help="Input tensor from a .npy file; NAME= may be left out for one-input models.")
@click.option("--device", "device_name", default=None, help="Device profile name or .toml path (default: detected).")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 10000),
              help="Run this many times and report the median latency.")
@click.option("--seed", default=0, show_default=True, help="Seed for random inputs when --input is not given.")
def run(model: str, inputs: tuple[str, ...], device_name: str | None, repeat: int, seed: int) -> None:
    """Run MODEL once (or --repeat times) and print its outputs' shapes and the timing."""
    import numpy as np

    import devices
    from devices.errors import ModelInputError
    from edge import runtime

    profile = devices.load_profile(device_name) if device_name else devices.detect()
    load_start = time.perf_counter()
    with runtime.load(model, profile) as session:
        load_ms = (time.perf_counter() - load_start) * 1000
        feeds: dict[str, np.ndarray] = {}
        for item in inputs:
            name, _, file = item.rpartition("=")
            if not name:
                if len(session.inputs) != 1:
                    names = ", ".join(s.name for s in session.inputs)
                    raise ModelInputError(
                        f"--input {item}: the model has {len(session.inputs)} inputs ({names}); "
                        "write --input NAME=FILE.npy"
                    )
                name = session.inputs[0].name
            feeds[name] = _load_input(file, name)
        if not inputs:
            feeds = random_inputs(session, seed)
        times = []
        outputs: dict[str, Any] = {}
        for _ in range(repeat):
            start = time.perf_counter()
            outputs = session.run(feeds)
            times.append((time.perf_counter() - start) * 1000)
        click.echo(f"model     {model}")
        click.echo(f"device    {profile.name}  providers: {', '.join(session.providers)}")
        for spec in session.inputs:
            click.echo(f"input     {spec.name}  {feeds[spec.name].dtype} {list(feeds[spec.name].shape)}")
        for name, value in outputs.items():
            click.echo(f"output    {name}  {value.dtype} {list(value.shape)}")
        click.echo(f"load      {load_ms:.1f} ms")
        click.echo(f"latency   {float(np.median(times)):.2f} ms (median of {repeat})")


def random_inputs(session: Any, seed: int = 0, batch: int = 1) -> dict[str, Any]:
    """Random feeds that fit a session's inputs (dynamic dims become ``batch``, or 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.inputs:
        shape = tuple((batch if j == 0 else 1) if d is None else d for j, d in enumerate(spec.shape))
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise click.UsageError(f"input '{spec.name}' has dtype {spec.dtype}: give it with --input")
    return feeds


def main(argv: list[str] | None = None) -> int:
    """Console entry point: library errors become one clear line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="edgecut", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except EdgecutError as exc:
        click.echo(f"edgecut: error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
