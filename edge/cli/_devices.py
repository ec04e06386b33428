from __future__ import annotations

import click


@click.command("devices")
@click.option("--detect", "only_detect", is_flag=True, help="Print only the detected profile.")
def devices_cmd(only_detect: bool) -> None:
    """List the device profiles and the one detected for this machine."""
    import devices

    detected = devices.detect_name()
    if only_detect:
        click.echo(detected)
        return
    for name in devices.list_profiles():
        p = devices.load_profile(name)
        mark = "*" if name == detected else " "
        click.echo(f"{mark} {name:18s} x{p.relative_speed:<5g} {p.power.name:>6s} "
                   f"idle {p.power.idle_w:g} W  {p.description}")
