"""Several systems side by side: the paper's tables 1 and 2 from `viscoin evaluate` results (`viscoin compare`).

The paper compares VisCoIN with FLINT and FLAEM on the same test split of each dataset
(section 4.1, tables 1 and 2; appendix C.2 for the visualisation FID). Each ``evaluation.json``
names its system (``"model"``: the family) and dataset; this module

- checks that the results can be compared (`differences`): the same dataset, the same test split
  (the data-config keys that fix it, the number of test samples, f's test accuracy) and the same
  evaluation settings, naming every value that differs and in which files;
- lays the numbers out (`comparison_markdown`): table 1 with one row per system and one column
  per dataset (f's accuracy in its own row), table 2 with one row per (dataset, system) and the
  columns of `viscoin.metrics.evaluate.table2_columns` (with how often f classifies a system's
  reconstructions as their inputs, and the mean of eq. 4's γ term, where the evaluations have them);
- gives them as JSON (`comparison_json`), and writes both files (`write_comparison`), refusing
  to replace files it did not write.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from viscoin.metrics.evaluate import RECONSTRUCTION_CLASS_NOTE, fmt_number, has_reconstruction_class, table2_columns
from viscoin.utils.io import atomic_path, read_json, refuse_existing, write_json

WRITER = "viscoin compare"
MARKDOWN_MARKER = f"<!-- written by {WRITER}; rewritten on every run -->"
MARKDOWN_FILE, JSON_FILE = "comparison.md", "comparison.json"
SPLIT_KEYS = ("kind", "root", "resolution", "test_fraction", "split_seed", "synthetic_per_class", "on_bad_image")
UNCOMPARED_SETTINGS = ("metrics", "progress", "batch_size", "inception_path", "lpips_vgg_path")


def read_evaluation(path: str | os.PathLike) -> dict[str, Any]:
    """An ``evaluation.json`` written by `viscoin evaluate`; ValueError naming the file otherwise."""
    data = read_json(path, what="evaluation file")
    if not isinstance(data, dict) or not isinstance(data.get("model"), str) or not isinstance(data.get("dataset"), str):
        raise ValueError(f"{path}: not an evaluation written by `viscoin evaluate` (expected a JSON object with "
                         "\"model\" and \"dataset\")")
    return data


def system_names(results: Sequence[dict[str, Any]], files: Sequence[str | os.PathLike]) -> list[str]:
    """Each result's system name: its family; when a family appears twice on one dataset, the checkpoint's run
    folder (or the file's folder) is added, then the position."""
    families = [str(r["model"]) for r in results]
    names = list(families)
    for i, r in enumerate(results):
        if sum(f == families[i] and o["dataset"] == r["dataset"] for f, o in zip(families, results)) > 1:
            where = Path(str(r.get("checkpoint") or files[i]))
            names[i] = f"{r['model']} ({where.parent.name or where.name})"
    seen: dict[tuple[str, str], int] = {}
    for i, r in enumerate(results):
        key = (names[i], r["dataset"])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            names[i] = f"{names[i]} #{seen[key]}"
    return names


def _values(results: Sequence[dict[str, Any]], names: Sequence[str], get: Any) -> dict[str, Any]:
    return {n: get(r) for n, r in zip(names, results)}


def _differ(values: dict[str, Any]) -> bool:
    return len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1


def _listing(values: dict[str, Any]) -> str:
    return "; ".join(f"{n}: {json.dumps(v)}" for n, v in values.items())


def differences(results: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """What differs between the results that should not (empty: comparable), one sentence each."""
    out = []
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    if len(datasets) > 1:
        groups = ", ".join(f"{d} ({', '.join(n for n, r in zip(names, results) if r['dataset'] == d)})"
                           for d in datasets)
        out.append(f"different datasets: {groups}; systems are compared within each dataset only")
    for d in datasets:
        rows = [i for i, r in enumerate(results) if r["dataset"] == d]
        group, gnames = [results[i] for i in rows], [names[i] for i in rows]
        prefix = f"{d}: " if len(datasets) > 1 else ""
        for key in SPLIT_KEYS:
            values = _values(group, gnames, lambda r, k=key: (r.get("data") or {}).get(k))
            if _differ(values):
                out.append(f"{prefix}test split differs: data.{key} ({_listing(values)})")
        counts = _values(group, gnames, lambda r: (r.get("accuracy") or {}).get("count"))
        if _differ({n: c for n, c in counts.items() if c is not None}):
            out.append(f"{prefix}number of test samples differs ({_listing(counts)})")
        acc_f = {n: a for n, a in _values(group, gnames, lambda r: (r.get("accuracy") or {}).get("f")).items()
                 if a is not None}
        if _differ(acc_f):
            out.append(f"{prefix}f's test accuracy differs, so f or the test split differ ({_listing(acc_f)})")
    keys = list(dict.fromkeys(k for r in results for k in (r.get("config") or {}) if k not in UNCOMPARED_SETTINGS))
    for key in keys:
        values = _values(results, names, lambda r, k=key: (r.get("config") or {}).get(k))
        if _differ(values):
            out.append(f"evaluation setting {key} differs ({_listing(values)})")
    return out


def comparison_markdown(results: Sequence[dict[str, Any]], names: Sequence[str],
                        files: Sequence[str | os.PathLike] = ()) -> str:
    """The systems, what differs, table 1 (rows: f and each system; columns: datasets) and table 2 (rows:
    dataset · system), in Markdown."""
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    systems = list(dict.fromkeys(names))
    out = [f"# Comparison of {len(results)} evaluations", "", "| System | Model | Dataset | K | Evaluation |",
           "|---|---|---|---:|---|"]
    out += [f"| {n} | {r['model']} | {r['dataset']} | {r.get('num_concepts', '–')} | "
            f"{files[i] if files else r.get('checkpoint', '–')} |" for i, (n, r) in enumerate(zip(names, results))]
    diffs = differences(results, names)
    out += ["", "Differences: none (same dataset, test split and evaluation settings)." if not diffs
            else "Differences (the numbers may not be comparable):", ""]
    out += [f"- {d}" for d in diffs] + ([""] if diffs else [])
    if any("accuracy" in r for r in results):
        out += ["Table 1: test accuracy (%) of the interpretable predictor g of each system, and of f", "",
                "| Model | " + " | ".join(datasets) + " |", "|---|" + "---:|" * len(datasets)]
        first_f = {d: next(((r.get("accuracy") or {}).get("f") for r in results
                            if r["dataset"] == d and "accuracy" in r), None) for d in datasets}
        out.append("| f (classifier) | " + " | ".join(
            fmt_number(None if first_f[d] is None else 100 * first_f[d], ".2f") for d in datasets) + " |")
        for s in systems:
            cells = []
            for d in datasets:
                acc = next(((r.get("accuracy") or {}).get("g") for n, r in zip(names, results)
                            if n == s and r["dataset"] == d), None)
                cells.append(fmt_number(None if acc is None else 100 * acc, ".2f"))
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")
    header, cells = table2_columns(list(results))
    out += ["Table 2: reconstruction fidelity (MSE, LPIPS, FID of test reconstructions), faithfulness (median "
            "FF_x, random baseline in brackets), consistency (SVM test accuracy %, mean ± std over concepts), "
            "FID of concept visualisations (appendix C.2)", "",
            "| Dataset | System | " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(header)]
    for d in datasets:
        out += [f"| {d} | {n} | " + " | ".join(c) + " |" for n, r, c in zip(names, results, cells) if r["dataset"] == d]
    out += ["", RECONSTRUCTION_CLASS_NOTE] if has_reconstruction_class(results) else []
    return "\n".join(out).rstrip() + "\n"


def _numbers(r: dict[str, Any]) -> dict[str, Any]:
    """The paper's numbers of one evaluation (None where not computed)."""
    acc, rec, vis = r.get("accuracy") or {}, r.get("reconstruction") or {}, r.get("visualisation_fid") or {}
    ff = (r.get("faithfulness") or {}).get("thresholds") or {}
    cons = (r.get("consistency") or {}).get("lambdas") or {}
    return {
        "accuracy_g": acc.get("g"), "accuracy_f": acc.get("f"), "agreement": acc.get("agreement"),
        "test_count": acc.get("count"), "mse": rec.get("mse"), "lpips": rec.get("lpips"), "fid": rec.get("fid"),
        "fid_features": rec.get("fid_features"), "reconstruction_agreement": rec.get("reconstruction_agreement"),
        "reconstruction_ce": rec.get("reconstruction_ce"),
        "faithfulness": {t: {"median": v.get("median"), "random_median": v.get("random_median")} for t, v in ff.items()},
        "consistency": {lam: {"mean": v.get("mean"), "std": v.get("std")} for lam, v in cons.items()},
        "visualisation_fid": vis.get("fid"), "visualisation_fid_features": vis.get("fid_features"),
        "visualisation": vis.get("visualisation"),
    }


def comparison_json(results: Sequence[dict[str, Any]], names: Sequence[str],
                    files: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """The comparison as JSON: the systems with their numbers, and what differs."""
    return {
        "written_by": WRITER,
        "datasets": list(dict.fromkeys(r["dataset"] for r in results)),
        "differences": differences(results, names),
        "systems": [{"name": n, "model": r["model"], "dataset": r["dataset"], "num_concepts": r.get("num_concepts"),
                     "checkpoint": r.get("checkpoint"), "file": str(files[i]) if files else None, **_numbers(r)}
                    for i, (n, r) in enumerate(zip(names, results))],
    }


def _ours(path: Path) -> bool:
    """Whether an existing comparison file was written by `viscoin compare`."""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(data, dict) and data.get("written_by") == WRITER
        return path.read_text(encoding="utf-8").splitlines()[:1] == [MARKDOWN_MARKER]
    except (OSError, UnicodeDecodeError, ValueError):
        return False


class Written(NamedTuple):
    """What `write_comparison` wrote: both files, the Markdown, and what differs between the evaluations."""

    markdown_path: Path
    json_path: Path
    markdown: str
    differences: list[str]


def write_comparison(
    files: Sequence[str | os.PathLike],       # evaluation.json files (2 or more)
    out_dir: str | os.PathLike,
    overwrite: bool = False,                  # replace files that `viscoin compare` did not write
    names: Sequence[str] | None = None,       # system names (default: `system_names`)
) -> Written:
    """Write ``comparison.md`` and ``comparison.json`` into `out_dir`.

    An existing file of those names that `viscoin compare` did not write is left alone (ValueError)
    unless `overwrite`; nothing is written then."""
    if len(files) < 2:
        raise ValueError(f"compare: expected at least 2 evaluation files, got {len(files)}")
    results = [read_evaluation(f) for f in files]
    names = list(names) if names else system_names(results, files)
    if len(names) != len(results) or len(set(zip(names, (r["dataset"] for r in results)))) != len(results):
        raise ValueError(f"names: expected {len(results)} names, distinct within a dataset; got {names}")
    out = Path(out_dir)
    md_path, json_path = out / MARKDOWN_FILE, out / JSON_FILE
    foreign = [p for p in (md_path, json_path) if p.exists() and not _ours(p)]
    refuse_existing(foreign, f"exists and was not written by `{WRITER}`", overwrite)
    markdown = comparison_markdown(results, names, [str(f) for f in files])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"{MARKDOWN_MARKER}\n{markdown}", encoding="utf-8")
    data = comparison_json(results, names, files)
    write_json(json_path, data)
    return Written(md_path, json_path, markdown, data["differences"])


def paper_claims(results: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """The paper's comparative claims (section 4.1, tables 1-2, appendix C.2), each said to hold or not on
    these results, with the numbers. The first result is VisCoIN's, the others are the baselines'."""
    nums = [_numbers(r) for r in results]
    ours, others = nums[0], list(zip(names[1:], nums[1:]))
    lines = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("holds" if ok else "does not hold")

    def lower(key: str, label: str) -> None:
        values = [ours[key]] + [n[key] for _, n in others]
        ok = None if any(v is None for v in values) else all(ours[key] < n[key] for _, n in others)
        shown = ", ".join(f"{name} {v:.4g}" for name, v in zip(names, values) if v is not None)
        lines.append(f"{label} lower for {names[0]} than for every baseline: {verdict(ok)} ({shown or 'n/a'})")

    accs = [(name, n["accuracy_g"], n["accuracy_f"]) for name, n in zip(names, nums)]
    gap = [abs(g - f) for _, g, f in accs if g is not None and f is not None]
    ok = None if not gap else abs(ours["accuracy_g"] - ours["accuracy_f"]) <= 0.02
    lines.append(f"accuracy: {names[0]}'s g within 2 points of f: {verdict(ok)} ("
                 + ", ".join(f"{name} {100 * g:.1f}%" for name, g, _ in accs if g is not None)
                 + (f"; f {100 * accs[0][2]:.1f}%" if accs[0][2] is not None else "") + ")")
    lower("lpips", "reconstruction LPIPS")
    lower("fid", "reconstruction FID")
    lower("mse", "reconstruction MSE (the paper: not for FLINT)")
    ff = ours["faithfulness"]
    if ff:
        tau = min(ff, key=float)
        rows = [(name, n["faithfulness"].get(tau)) for name, n in zip(names, nums)]
        ok = ff[tau]["median"] is not None and ff[tau]["median"] > 4 * max(ff[tau]["random_median"], 1e-9)
        lines.append(f"faithfulness (median, τ={tau}) of {names[0]} well above random: {verdict(ok)} ("
                     + ", ".join(f"{name} {v['median']:.3f} vs random {v['random_median']:.3f}"
                                 for name, v in rows if v and v["median"] is not None) + ")")
    cons = ours["consistency"]
    if cons:
        lam = min(cons, key=float)
        values = [(name, (n["consistency"].get(lam) or {}).get("mean")) for name, n in zip(names, nums)]
        ok = None if any(v is None for _, v in values) else all(values[0][1] > v for _, v in values[1:])
        lines.append(f"consistency (λ={lam}) higher for {names[0]} than for every baseline: {verdict(ok)} ("
                     + ", ".join(f"{name} {100 * v:.1f}%" for name, v in values if v is not None) + ")")
    vis = [(name, n["visualisation_fid"]) for name, n in zip(names, nums) if n["visualisation_fid"] is not None]
    flint = [v for name, v in vis[1:] if name.upper() == "FLINT"]
    ok = None if ours["visualisation_fid"] is None or not flint else ours["visualisation_fid"] < flint[0]
    lines.append(f"visualisation FID lower for {names[0]} than for FLINT's activation maximisation: {verdict(ok)} ("
                 + ", ".join(f"{name} {v:.1f}" for name, v in vis) + ")")
    return lines
