"""Build the dashboard's world map: land outlines as one compact SVG path, shipped as package data.

The outlines are Natural Earth's (public domain) as redistributed by the npm package
`world-atlas` (ISC licence, TopoJSON). This script packs that package with npm, decodes the
TopoJSON land object, projects it equirectangularly (x = lon + 180, y = 90 - lat, so the SVG's
user units are degrees) and writes:

    src/gpuroam/ui/static/world-land.svg          the map (viewBox 0 0 360 180)
    src/gpuroam/ui/static/world-atlas-LICENSE.txt  where it came from, and the licence

Run once by a developer; the result is committed, and nothing is fetched at run time:

    python scripts/build_world_map.py [--resolution 110m|50m] [--tarball world-atlas-2.0.2.tgz]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

PACKAGE = "world-atlas@2.0.2"
STATIC = Path(__file__).resolve().parents[1] / "src" / "gpuroam" / "ui" / "static"
SOUTH_LIMIT = -60.0  # rings wholly south of this (Antarctica) are left out: no region is there


def decode_arcs(topology: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """Quantised, delta-encoded TopoJSON arcs -> lists of (lon, lat)."""
    (sx, sy), (tx, ty) = topology["transform"]["scale"], topology["transform"]["translate"]
    arcs = []
    for arc in topology["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def ring_points(ring: list[int], arcs: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Join a ring's arcs (index ~i is arc i reversed), dropping each joint's repeated point."""
    points: list[tuple[float, float]] = []
    for index in ring:
        arc = arcs[index] if index >= 0 else arcs[~index][::-1]
        points.extend(arc[1:] if points else arc)
    return points


def unwrap(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Make longitudes continuous where a ring crosses the antimeridian (179 -> -179 becomes 179 -> 181)."""
    out = [points[0]]
    for lon, lat in points[1:]:
        previous = out[-1][0]
        while lon - previous > 180:
            lon -= 360
        while previous - lon > 180:
            lon += 360
        out.append((lon, lat))
    return out


def copies(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """A ring that runs past +-180 is cut there, and the part beyond is drawn on the other side."""
    lons = [lon for lon, _ in points]
    shifts = [0.0] + ([-360.0] if max(lons) > 180 else []) + ([360.0] if min(lons) < -180 else [])
    out = []
    for shift in shifts:
        ring = [(lon + shift, lat) for lon, lat in points]
        ring = clip(clip(ring, 180.0, keep_below=True), -180.0, keep_below=False)
        if len(ring) >= 3:
            out.append(ring)
    return out


def clip(ring: list[tuple[float, float]], edge: float, keep_below: bool) -> list[tuple[float, float]]:
    """Sutherland-Hodgman against the meridian `edge`: keep lon <= edge (or >= edge)."""

    def inside(point: tuple[float, float]) -> bool:
        return point[0] <= edge if keep_below else point[0] >= edge

    out: list[tuple[float, float]] = []
    for i, current in enumerate(ring):
        previous = ring[i - 1]
        if inside(current) != inside(previous):
            t = (edge - previous[0]) / (current[0] - previous[0])
            out.append((edge, previous[1] + t * (current[1] - previous[1])))
        if inside(current):
            out.append(current)
    return out


def polygons(geometry: dict[str, Any]) -> list[list[list[int]]]:
    if geometry["type"] == "Polygon":
        return [geometry["arcs"]]
    if geometry["type"] == "MultiPolygon":
        return geometry["arcs"]
    if geometry["type"] == "GeometryCollection":
        return [p for g in geometry["geometries"] for p in polygons(g)]
    return []


def ring_path(points: list[tuple[float, float]]) -> str:
    """One closed ring in tenths of a degree: an absolute move, then relative lines."""
    projected = [(round((lon + 180) * 10), round((90 - lat) * 10)) for lon, lat in points]
    steps = [projected[0]]
    for point in projected[1:]:
        if point != steps[-1]:
            steps.append(point)
    if len(steps) < 3:
        return ""
    deltas = " ".join(f"{_n(x1 - x0)} {_n(y1 - y0)}" for (x0, y0), (x1, y1) in pairwise(steps))
    return f"M{_n(steps[0][0])} {_n(steps[0][1])}l{deltas}z"


def _n(tenths: int) -> str:
    """Tenths of a degree as the shortest decimal: 12 -> 1.2, -3 -> -.3, 40 -> 4."""
    sign, value = ("-" if tenths < 0 else ""), abs(tenths)
    whole, frac = divmod(value, 10)
    text = (str(whole) if whole else "") + (f".{frac}" if frac else "")
    return sign + (text or "0")


def build_path(topology: dict[str, Any]) -> str:
    arcs = decode_arcs(topology)
    parts = []
    for polygon in polygons(topology["objects"]["land"]):
        rings = [ring_points(ring, arcs) for ring in polygon]
        if not rings or max(lat for _, lat in rings[0]) < SOUTH_LIMIT:
            continue
        parts.extend(filter(None, (ring_path(c) for r in rings for c in copies(unwrap(r)))))
    return "".join(parts)


def svg(path: str, resolution: str) -> str:
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 360 180">\n'
        f"<!-- Land, Natural Earth {resolution} (public domain) via the npm package {PACKAGE} (ISC licence, "
        "see world-atlas-LICENSE.txt); equirectangular: x = lon + 180, y = 90 - lat. "
        "Built by scripts/build_world_map.py. -->\n"
        f'<path id="land" fill-rule="evenodd" d="{path}"/>\n'
        "</svg>\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", choices=["110m", "50m"], default="110m")
    parser.add_argument("--tarball", type=Path, help="a world-atlas .tgz already packed (else `npm pack` fetches it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball
        if tarball is None:
            subprocess.run(["npm", "pack", "--silent", PACKAGE], cwd=tmp, check=True, capture_output=True)
            tarball = next(Path(tmp).glob("world-atlas-*.tgz"))
        with tarfile.open(tarball) as archive:
            topology = json.load(archive.extractfile(f"package/land-{args.resolution}.json"))  # type: ignore[arg-type]
            licence = archive.extractfile("package/LICENSE").read().decode()  # type: ignore[union-attr]
    path = build_path(topology)
    STATIC.mkdir(parents=True, exist_ok=True)
    (STATIC / "world-land.svg").write_text(svg(path, args.resolution))
    (STATIC / "world-atlas-LICENSE.txt").write_text(
        f"world-land.svg: land outlines from Natural Earth ({args.resolution}, public domain,\n"
        f"https://www.naturalearthdata.com), as redistributed in TopoJSON by the npm package {PACKAGE}\n"
        "(ISC licence), converted to an SVG path by scripts/build_world_map.py. Its licence follows.\n\n" + licence
    )
    print(f"wrote {STATIC / 'world-land.svg'} ({len(path):,} characters of path)")


if __name__ == "__main__":
    main()
