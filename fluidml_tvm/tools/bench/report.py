"""The benchmark's report: the markdown table and the plots (ratios, memory timelines)."""

from __future__ import annotations

import os

import numpy as np


def _mb(x):
    return "-" if x is None else f"{x / 1e6:.2f}"


def _ratio(engines: dict, a: str, b: str, key: str) -> str:
    x, y = engines.get(a, {}).get(key), engines.get(b, {}).get(key)
    return f"{x / y:.2f}x" if x and y else "-"


def _options(rows: list) -> list[str]:
    """One line per engine: the pass-config it was compiled with and the FluidML options that
    differ from the defaults (the JSON has them all), or ONNX Runtime's session options. The
    first model's: every model of a suite runs with the same."""
    from ...options import Options

    defaults = Options().to_dict()
    out = []
    for e, m in (rows[0]["engines"].items() if rows else ()):
        if m.get("pass_config") is not None:
            opts = m.get("options") or {}
            changed = ", ".join(f"{k}={v}" for k, v in opts.items()
                                if opts.get("fluidml") and k != "fluidml"
                                and defaults.get(k) != v)
            out.append(f"- {e}: pass-config `{' '.join(m['pass_config'])}`"
                       + (f"; options off the defaults: {changed}" if changed else ""))
        elif m.get("options"):
            out.append(f"- {e}: " + ", ".join(f"{k}={v}" for k, v in m["options"].items()))
    return out


def markdown_table(rows: list, info: dict) -> str:
    loads = [f"{'/'.join(str(x) for x in info[k])} {k[5:]}" for k in ("load_before", "load_after")
             if info.get(k)]
    load = f"; load average (1/5/15 min) {', '.join(loads)}" if loads else ""
    lines = [f"Host: {info['cpu']}, {info['cores']} cores, {info['threads']} threads per engine; "
             f"TVM {info['tvm']}, ONNX Runtime {info['onnxruntime']}; {info['date']}"]
    if "commit" in info:
        lines += [f"Commit {info['commit']}; ISA {' '.join(info.get('isa') or []) or '?'} "
                  f"(LLVM cpu {info.get('llvm_cpu', '?')}){load}.",
                  f"Memory: {info['memory_method']}."]
    lines += _options(rows)
    lines += ["",
             "| model | engine | median ms (min-max, n) | compile s | planned MB | bound MB | "
             "peak act. MB | peak RSS MB | max abs diff vs ORT |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for e, m in row["engines"].items():
            cs = m.get("compile_seconds")
            diff = m.get("max_abs_diff_vs_ort")
            lines.append(
                f"| {row['model']} | {e} | {m['median_ms']:.2f} ({m['min_ms']:.2f}-"
                f"{m['max_ms']:.2f}, {m['samples']}) | {'-' if cs is None else f'{cs:.1f}'} | "
                f"{_mb(m.get('planned_bytes'))} | {_mb(m.get('bound_bytes'))} | "
                f"{_mb(m.get('peak_activation_bytes'))} | {_mb(m.get('peak_rss_bytes'))} | "
                f"{'-' if diff is None else f'{diff:.2e}'} |")
    lines += ["", "| model | fluidml/ort | fluidml/tvm | tvm/ort | planned fluidml/tvm | "
              "peak RSS fluidml/ort |", "|---|---|---|---|---|---|"]
    for row in rows:
        r, en = row["ratios"], row["engines"]
        lines.append(
            f"| {row['model']} | "
            + " | ".join(f"{r[k]:.3g}x" if k in r else "-"
                         for k in ("fluidml/ort", "fluidml/tvm", "tvm/ort"))
            + f" | {_ratio(en, 'fluidml', 'tvm', 'planned_bytes')} | "
              f"{_ratio(en, 'fluidml', 'ort', 'peak_rss_bytes')} |")
    return "\n".join(lines) + "\n"


def plots(rows: list, outdir: str, stem: str) -> list:
    """Bar chart of ratios per model and a memory timeline per model (PNG, needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    names = [r["model"] for r in rows]
    keys = [k for k in ("fluidml/ort", "fluidml/tvm", "tvm/ort") if any(k in r["ratios"]
                                                                         for r in rows)]
    if keys:
        fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(names)), 4))
        width = 0.8 / len(keys)
        for i, k in enumerate(keys):
            vals = [r["ratios"].get(k, np.nan) for r in rows]
            ax.bar(np.arange(len(names)) + i * width, vals, width, label=f"latency {k}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(names)) + width * (len(keys) - 1) / 2)
        ax.set_xticklabels(names, rotation=20)
        ax.set_ylabel("ratio (lower is better for the first engine)")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(outdir, f"{stem}-ratios.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    for row in rows:
        series = {e: m.get("timeline") for e, m in row["engines"].items() if m.get("timeline")}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for e, tl in series.items():
            (line,) = ax.plot(np.array(tl) / 1e6, label=f"{e}: live bytes")
            m, color = row["engines"][e], line.get_color()
            if m.get("planned_bytes"):
                ax.axhline(m["planned_bytes"] / 1e6, ls="--", lw=1, color=color,
                           label=f"{e}: planned {m['planned_bytes'] / 1e6:.3g} MB")
            if m.get("bound_bytes"):
                ax.axhline(m["bound_bytes"] / 1e6, ls=":", lw=1.5, color=color,
                           label=f"{e}: bound {m['bound_bytes'] / 1e6:.3g} MB")
        ax.set_xlabel("binding (program point)")
        ax.set_ylabel("MB")
        ax.set_title(f"{row['model']}: activation memory")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(outdir, f"{stem}-{row['model'].replace(':', '_')}-memory.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
