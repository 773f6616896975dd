"""Benchmark results: CSV rows, the comparison table, and plots.

CSV columns: ``benchmark,lang,variant,workers,metric,value,unit,git_sha,cpu_model``. A
server that could not run (LiteLLM not installed, verify failed) gets a row with metric
``status`` and the reason in ``unit``; no number is ever made up for it.
"""

from __future__ import annotations

import csv
import statistics
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("benchmark", "lang", "variant", "workers", "metric", "value", "unit", "git_sha",
          "cpu_model")
HEADLINE = ("rps", "p50_latency_ms", "p99_latency_ms", "transfer_mib_s", "cpu_us_per_req",
            "cpu_us_per_event",
            "peak_pss_mib", "added_delay_p50_ms", "added_delay_p99_ms", "ttfb_p50_ms",
            "completed", "stream_errors", "added_p50_ms", "added_p99_ms", "share_spread")
COLOURS = {"li": "#3b7dd8", "nginx": "#888888", "haproxy": "#aaaaaa", "caddy": "#666666"}
LOWER_IS_BETTER = ("latency", "delay", "ttfb", "added", "cpu", "pss", "rss", "errors",
                   "spread", "non_2xx")


@dataclass(frozen=True)
class Row:
    benchmark: str
    lang: str
    variant: str
    workers: int
    metric: str
    value: str
    unit: str


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def median_metrics(runs: Sequence[Mapping[str, tuple[float, str]]]) -> dict[str, tuple[float, str]]:
    merged: dict[str, list[float]] = defaultdict(list)
    units: dict[str, str] = {}
    for run in runs:
        for metric, (value, unit) in run.items():
            merged[metric].append(value)
            units[metric] = unit
    return {m: (statistics.median(values), units[m]) for m, values in merged.items()}


def write_csv(path: Path, rows: Iterable[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sha, model = git_sha(), cpu_model()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for row in rows:
            writer.writerow([row.benchmark, row.lang, row.variant, row.workers, row.metric,
                             row.value, row.unit, sha, model])


def read_csv(path: Path) -> list[Row]:
    with path.open() as handle:
        return [Row(r["benchmark"], r["lang"], r["variant"], int(r["workers"]), r["metric"],
                    r["value"], r["unit"]) for r in csv.DictReader(handle)]


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


# Peers in the order of the table's columns; li is compared with each one present.
PEERS = ("nginx", "haproxy", "caddy", "litellm", "portkey")


def compare_table(rows: Sequence[Row], metrics: Sequence[str] = HEADLINE) -> str:
    """li next to every peer that has a row (a number or a status), then li/<peer> ratios
    for the same peers; a peer that could not run shows ``n/a`` and its reason below."""
    table: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for row in rows:
        if row.metric in metrics:
            table[(row.benchmark, row.variant, row.metric)][row.lang] = row.value
    # li measured as named variants (builds, features) is set beside the peers' one
    # measurement of the same scenario, so each variant gets its li/<peer> ratios.
    for (benchmark, variant, metric), values in list(table.items()):
        peer_values = table.get((benchmark, "default", metric), {})
        if variant != "default" and set(values) == {"li"}:
            values.update((lang, value) for lang, value in peer_values.items() if lang != "li")
    status = {(r.benchmark, r.lang): r.unit for r in rows if r.metric == "status"}
    present = {lang for values in table.values() for lang in values} | \
        {lang for _, lang in status}
    # nginx and litellm always: the table of a run without the newer peers keeps its shape.
    peers = [lang for lang in PEERS if lang in present or lang in ("nginx", "litellm")]
    columns = [peers[0], "li", *peers[1:]]
    header = f"{'benchmark':<17} {'variant':<8} {'metric':<20} " + \
        " ".join(f"{lang:>11}" for lang in columns) + " " + \
        " ".join(f"{'li/' + lang:>10}" for lang in peers)
    lines = [header]
    for (benchmark, variant, metric), values in sorted(table.items()):
        li = _number(values.get("li", ""))

        def cell(lang: str, values: dict[str, str] = values, benchmark: str = benchmark) -> str:
            if lang in values:
                number = _number(values[lang])
                return f"{number:.2f}" if number is not None else values[lang]
            return "n/a" if (benchmark, lang) in status else ""

        def ratio(lang: str, values: dict[str, str] = values, li: float | None = li) -> str:
            other = _number(values.get(lang, ""))
            return f"{li / other:.2f}" if li is not None and other else ""

        lines.append(f"{benchmark:<17} {variant:<8} {metric:<20} "
                     + " ".join(f"{cell(lang):>11}" for lang in columns) + " "
                     + " ".join(f"{ratio(lang):>10}" for lang in peers))
    for (benchmark, lang), reason in sorted(status.items()):
        lines.append(f"{benchmark}: {lang} {reason}")
    return "\n".join(lines)


def plot(rows: Sequence[Row], directory: Path) -> list[Path]:
    """One PNG per scenario: a bar per server for each headline metric it has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    by_benchmark: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.metric in HEADLINE and _number(row.value) is not None:
            by_benchmark[row.benchmark].append(row)
    for benchmark, selected in sorted(by_benchmark.items()):
        keys = sorted({(r.variant, r.metric) for r in selected})
        figure, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4), squeeze=False)
        for axis, (variant, metric) in zip(axes[0], keys, strict=True):
            points = [(r.lang, float(r.value)) for r in selected
                      if (r.variant, r.metric) == (variant, metric)]
            axis.bar([p[0] for p in points], [p[1] for p in points],
                     color=[COLOURS.get(p[0], "#d8843b") for p in points])
            better = "lower" if any(word in metric for word in LOWER_IS_BETTER) else "higher"
            axis.set_title(f"{metric}\n({variant}, {better} is better)", fontsize=8)
            axis.tick_params(labelsize=8)
        figure.suptitle(benchmark)
        figure.tight_layout()
        path = directory / f"{benchmark}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written
