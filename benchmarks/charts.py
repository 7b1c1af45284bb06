"""SVG charts of the suite's results, dependency-free (docs/performance-*.svg).

.venv/bin/python -m benchmarks.charts    (also run by benchmarks.report)
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
COLOURS = ("#4a7ab5", "#e08a3c", "#5aa55a", "#c4554d", "#8c6bb1", "#8c8c8c", "#2a9d9d")


def grouped_bars(
    title: str, unit: str, rows: list[str], series: dict[str, dict[str, float]]
) -> str:
    """Horizontal bars: one group per row, one bar per series, with a legend."""
    width, left, bar_h, gap, top = 760, 170, 11, 10, 56
    biggest = max((v for s in series.values() for v in s.values()), default=1.0) or 1.0
    scale = (width - left - 80) / biggest
    parts = [
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    x = 10
    for i, name in enumerate(series):
        parts.append(
            f'<rect x="{x}" y="32" width="10" height="10" fill="{COLOURS[i % len(COLOURS)]}"/>'
            f'<text x="{x + 14}" y="41" font-size="11">{escape(name)}</text>'
        )
        x += 22 + 7 * len(name)
    y = top
    for row in rows:
        group_h = len(series) * bar_h
        parts.append(
            f'<text x="{left - 8}" y="{y + group_h / 2 + 4:.0f}" text-anchor="end" '
            f'font-size="12">{escape(row)}</text>'
        )
        for i, values in enumerate(series.values()):
            value = values.get(row)
            if value is None:
                continue
            w = value * scale
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 1}" '
                f'fill="{COLOURS[i % len(COLOURS)]}"/>'
                f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 2}" font-size="9">'
                f"{value:.3g} {escape(unit)}</text>"
            )
            y += bar_h
        y += gap
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 10}" '
        f'font-family="sans-serif">{"".join(parts)}</svg>\n'
    )


def stacked_bar(title: str, unit: str, steps: dict[str, float]) -> str:
    """One bar split into consecutive steps (cold start)."""
    width, left, top, bar_h = 760, 10, 40, 28
    total = sum(steps.values()) or 1.0
    scale = (width - 20) / total
    parts = [f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>']
    x = float(left)
    for i, (name, value) in enumerate(steps.items()):
        w = value * scale
        colour = COLOURS[i % len(COLOURS)]
        parts.append(
            f'<rect x="{x:.1f}" y="{top}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>'
        )
        parts.append(
            f'<rect x="{left}" y="{top + bar_h + 10 + i * 16}" width="10" height="10" '
            f'fill="{colour}"/><text x="{left + 14}" y="{top + bar_h + 19 + i * 16}" '
            f'font-size="11">{escape(name)}: {value:.2f} {escape(unit)}</text>'
        )
        x += w
    height = top + bar_h + 20 + len(steps) * 16
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif">{"".join(parts)}</svg>\n'
    )


def write_all(latest: dict[str, Any]) -> list[Path]:
    m = latest["medians"]
    paths = list(m["bulk_down_1_gbit_s"])
    rounds = latest["sizes"]["rounds"]
    mib = latest["sizes"]["bulk_bytes"] >> 20
    written = []

    def write(name: str, svg: str) -> None:
        path = DOCS / name
        path.write_text(svg)
        written.append(path)

    write("performance-bulk.svg", grouped_bars(
        f"Bulk, {mib} MiB per run, median of {rounds} (Gbit/s)", "Gbit/s", paths,
        {f"{d} x{n}": m[f"bulk_{d}_{n}_gbit_s"] for d, n in
         (("down", 1), ("down", 8), ("up", 1), ("up", 8))},
    ))  # fmt: skip
    write("performance-latency.svg", grouped_bars(
        "Request/response on held connections (ms)", "ms", paths,
        {"1 conn p50": m["rr_1_p50_ms"], "1 conn p99": m["rr_1_p99_ms"],
         "8 conns p50": m["rr_8_p50_ms"], "8 conns p99": m["rr_8_p99_ms"]},
    ))  # fmt: skip
    write("performance-churn.svg", grouped_bars(
        "New connections per second (a request each, 4 workers)", "/s", paths,
        {"connections/s": m["churn_per_s"]},
    ))  # fmt: skip
    cold = latest["cold_start"]["median"]
    steps = dict(cold["steps_s"])
    steps["to the first answer"] = max(0.0, cold["first_request_s"] - sum(steps.values()))
    write("performance-cold-start.svg", stacked_bar(
        f"ktpy connect cold start: {cold['first_request_s']:.2f} s to the first answer", "s", steps,
    ))  # fmt: skip
    return written


def main() -> None:
    latest = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    for path in write_all(latest):
        print(path)


if __name__ == "__main__":
    main()
