"""Writers for ``latest.json``, ``latest.md`` (a Markdown table) and ``latest.png`` (ratios)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks._figures import ALL, REQUIRED, Figure


def ordered(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 5's figures first (each followed by its spread and note), then the rest."""
    out: dict[str, Any] = {}
    for fig in ALL:
        for key in (fig.name, f"{fig.name}_spread", f"{fig.name}_note"):
            if key in results:
                out[key] = results[key]
    for key, value in results.items():
        out.setdefault(key, value)
    return out


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(ordered(results), indent=2, ensure_ascii=False) + "\n")


def _num(x: float) -> str:
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.3g}" if abs(x) >= 1 else f"{x:.3g}"


def _spread(results: dict[str, Any], fig: Figure) -> str:
    spread = results.get(f"{fig.name}_spread")
    if not spread:
        return ""
    low, high = spread
    return _num(low) if low == high else f"{_num(low)} \u2013 {_num(high)}"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results.get('measured_at')} on {results.get('machine')}, "
        f"{results.get('python')}, ccvault {results.get('version_ccvault')} "
        f"(commit {results.get('git_commit')}), mode `{results.get('mode')}`, "
        f"`{results.get('command')}`.",
        "",
        "Spread: lowest to highest repeat; for `shred_*` and `keystore_write_txn_*` latencies, "
        "the interquartile range of the samples. `null`: not measured (see the note).",
        "",
        "| Figure | Value | Spread | Unit | What / note |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    required = {f.name for f in REQUIRED}
    for fig in ALL:
        if fig.name not in results:
            continue
        value = results[fig.name]
        shown = "null" if value is None else _num(value)
        name = f"**{fig.name}**" if fig.name in required else fig.name
        what = fig.meaning
        note = results.get(f"{fig.name}_note")
        if note:
            what = f"{what}. *{note}*"
        what = what.replace("|", "\\|")
        lines.append(f"| {name} | {shown} | {_spread(results, fig)} | {fig.unit} | {what} |")
    lines.append("")
    lines.append(
        "Bold: the figures issue 5 asks for. Versions: "
        + ", ".join(
            f"{k.removeprefix('version_').replace('_', '-')} {v}"
            for k, v in results.items()
            if k.startswith("version_") and v
        )
        + f"; {results.get('openssl')}; key store {results.get('keystore_driver')}."
    )
    for label in ("sqlite", "postgres"):
        driver = results.get(f"orm_{label}_driver")
        if driver:
            server = results.get(f"orm_{label}_server_version")
            lines.append(f"ORM on {label}: {driver}, server {server}.")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    path.write_text(markdown(results))


def write_chart(path: Path, results: dict[str, Any]) -> str | None:
    """A horizontal bar chart of every measured ratio; returns why not, if it could not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not installed ({exc})"
    figs = [f for f in ALL if f.ratio and isinstance(results.get(f.name), int | float)]
    if not figs:
        return "no ratio was measured"
    names = [f.name for f in figs]
    values = [float(results[n]) for n in names]
    lows, highs = [], []
    for n, v in zip(names, values, strict=True):
        low, high = results.get(f"{n}_spread") or (v, v)
        lows.append(max(v - low, 0.0))
        highs.append(max(high - v, 0.0))
    colors = ["#1f6f8b" if n.startswith(("field_", "orm_")) else "#b0b0b0" for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.6))
    y = range(len(names))
    ax.barh(list(y), values, xerr=[lows, highs], color=colors, capsize=3)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, v in enumerate(values):
        ax.text(v * 1.08, i, f"{v:.3g}x", va="center", fontsize=8)
    ax.set_xlim(right=max(v + h for v, h in zip(values, highs, strict=True)) * 3)
    ax.set_xlabel("ratio to baseline (log scale; 1 = raw AES-GCM, or plaintext for ORM figures)")
    ax.set_title(
        f"ccvault (blue) and peers (grey), median of {results.get('field_repeats', '≥5')} "
        f"repeats, bars: lowest to highest repeat\n"
        f"{results.get('machine')}, mode {results.get('mode')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
