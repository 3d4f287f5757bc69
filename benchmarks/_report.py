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


def _workloads(results: dict[str, Any]) -> str:
    parts = []
    if "field_repeats" in results:
        parts.append(f"field: {results['field_repeats']} repeats")
    if "cold_rows" in results:
        parts.append(
            f"cold read: {results['cold_rows']:,} rows of {results['cold_customers']:,} customers"
        )
    if "orm_rows" in results:
        parts.append(
            f"ORM: {results['orm_rows']:,} rows, {results.get('orm_repeats')} repeats, "
            f"{results.get('orm_lookups_per_repeat')} lookups a repeat"
        )
    if "propagation_samples" in results:
        parts.append(f"propagation: {results['propagation_samples']} shreds per configuration")
    if "shred_samples" in results:
        parts.append(
            f"shred: {results['shred_samples']} shreds per key store, large key store of "
            f"{results.get('shred_ms_p50_1m_population', 0):,} subjects"
        )
    return ("Workloads: " + "; ".join(parts) + ".") if parts else ""


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Run started {results.get('started_at')} on {results.get('machine')}, "
        f"{results.get('python')}, ccvault {results.get('version_ccvault')} "
        f"(commit {results.get('git_commit')}"
        f"{', with uncommitted changes in src/' if results.get('git_src_dirty') else ''}), "
        f"mode `{results.get('mode')}`, `{results.get('command')}`, "
        f"{results.get('total_seconds')} s in all.",
        "",
        _workloads(results),
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
        "Bold: the figures the issues ask for. Versions: "
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


def _label(v: float) -> str:
    return f"{v:,.0f}x" if v >= 100 else f"{v:.3g}x"


KIND_COLORS = (  # (legend label, color), in the order the bars of a group are drawn
    ("ccvault", "#1f6f8b"),
    ("floor: keys in row order", "#5aa05a"),
    ("floor: keys scattered", "#a8d5a2"),
    ("peer", "#b0b0b0"),
)


ADDED_COLORS = (
    ("against the floor (keys in row order)", "#1f6f8b"),
    ("against the scattered floor", "#7fb3c8"),
)


def _kind(name: str) -> int:
    """Index into :data:`KIND_COLORS` of a charted figure."""
    if name.startswith("peer_"):
        return 3
    if "scattered_floor" in name and "_added_" not in name:
        return 2
    if "floor" in name and "_added_" not in name:
        return 1
    return 0


def _chart_order(fig: Figure) -> tuple[int, int, int, int]:
    """ORM bars grouped by operation (first read before steady state), then database, then
    ccvault, its floors and its peer side by side."""
    name = fig.name
    ops = ("first_write", "insert", "select_steady", "select", "lookup")
    op = next((i for i, o in enumerate(ops) if o in name), len(ops))
    op = {2: 3, 3: 2}.get(op, op)  # "select" (first read) before "select_steady"
    db = 2 if name.endswith("_binary") else int("postgres" in name)
    return (op, db, _kind(name), "scattered" in name)


def write_chart(path: Path, results: dict[str, Any]) -> str | None:
    """Bar charts of every measured ratio; returns why not, if it could not draw them."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        return f"matplotlib is not installed ({exc})"
    measured = [f for f in ALL if f.ratio and isinstance(results.get(f.name), int | float)]
    added = [f for f in measured if "_added_vs_" in f.name]
    panels = [
        (
            "field round trip, 100-byte value: ratio to raw AES-GCM",
            [f for f in measured if f.bench == "field"],
        ),
        (
            "ORM workload: ratio to the same table in plaintext (same repeat, same read)",
            [f for f in measured if f.bench != "field" and f not in added],
        ),
        (
            "ORM: ccvault's added time over plaintext / the floor's added time",
            added,
        ),
    ]
    panels = [(title, sorted(figs, key=_chart_order)) for title, figs in panels if figs]
    if not panels:
        return "no ratio was measured"
    heights = [len(figs) for _, figs in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 0.36 * sum(heights) + 1.4 * len(panels) + 0.8),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (title, figs) in zip(axes[:, 0], panels, strict=True):
        names = [f.name for f in figs]
        values = [float(results[n]) for n in names]
        lows, highs = [], []
        for n, v in zip(names, values, strict=True):
            low, high = results.get(f"{n}_spread") or (v, v)
            lows.append(max(v - low, 0.0))
            highs.append(max(high - v, 0.0))
        colors = [
            ADDED_COLORS[1][1] if "_added_vs_scattered" in n else KIND_COLORS[_kind(n)][1]
            for n in names
        ]
        y = list(range(len(names)))
        # Bars start at 0.5 (a log axis has no 0); the error bar sits at left + width = value.
        left = min(0.5, min(values) / 2) if min(values) > 0 else 0.5
        widths = [max(v, left) - left for v in values]
        ax.barh(y, widths, xerr=[lows, highs], color=colors, capsize=3, left=left)
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        tops = [v + h for v, h in zip(values, highs, strict=True)]
        for i, (v, top) in enumerate(zip(values, tops, strict=True)):
            ax.text(max(top, left) * 1.15, i, _label(v), va="center", fontsize=7)
        ax.set_xlim(left, max(tops) * 4)
        ax.set_title(title, fontsize=9, loc="left")
        if "added time" in title:
            ax.legend(
                handles=[Patch(color=color, label=label) for label, color in ADDED_COLORS],
                fontsize=7,
                loc="lower right",
            )
    axes[-1, 0].set_xlabel("ratio (log scale; 1 = the baseline)")
    axes[0, 0].legend(
        handles=[Patch(color=color, label=label) for label, color in KIND_COLORS],
        fontsize=7,
        loc="lower right",
    )
    fig.suptitle(
        f"ccvault, its floors and peers: median of the repeats (field "
        f"{results.get('field_repeats', '-')}, ORM {results.get('orm_repeats', '-')}), bars from "
        f"lowest to highest repeat\n{results.get('machine')}, mode "
        f"{results.get('mode')}, {results.get('started_at')}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # room for the suptitle
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
