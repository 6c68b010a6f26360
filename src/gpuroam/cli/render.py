"""`gpuroam render`: the manifests a cluster provider would apply, written for review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpuroam.cli.app import app
from gpuroam.cli.common import JsonOption, die, out


@app.command()
def render(
    spec: Annotated[Path, typer.Argument(help="Service spec YAML (see examples/stable-diffusion.yaml).")],
    provider: Annotated[str, typer.Option(help="kubernetes (any clusters) or gke (Autopilot + global endpoint).")],
    regions: Annotated[str, typer.Option(help="Comma-separated regions, one cluster each: us-central1,europe-west4.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the manifests: one file per region, plus the config cluster's.")
    ],
    endpoint: Annotated[
        str, typer.Option(help="gke only: ingress (MultiClusterIngress) or gateway (multi-cluster Gateway API).")
    ] = "ingress",
    catalog: Annotated[Path | None, typer.Option(help="A catalog file that overrides the bundled one.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Write every manifest a cluster provider would apply, for review or `kubectl apply -f`."""
    from gpuroam.catalog import load_catalog
    from gpuroam.providers.render import RenderError
    from gpuroam.providers.render import render as render_manifests
    from gpuroam.spec import SpecError, load_spec

    try:
        parsed = load_spec(spec)
        wanted = [r.strip() for r in regions.split(",") if r.strip()]
        written = render_manifests(parsed, provider, wanted, out_dir, endpoint, catalog=load_catalog(catalog))
    except (SpecError, RenderError) as error:
        die(str(error))
    if json_out:
        out.print_json(data={"files": [str(p) for p in written]})
    else:
        for path in written:
            out.print(f"wrote {path}")
