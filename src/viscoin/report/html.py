"""`viscoin report`: a self-contained static HTML report of a trained concept model.

``out_dir/index.html`` (inline CSS, no script, nothing fetched from the network) and
``out_dir/figures/*.png`` linked by relative paths. Contents (paper sections 3.5 and 4, figure 4,
appendix E):

- the model, its data and the training summary saved with the checkpoint;
- metrics tables: a JSON written by `viscoin evaluate` (``--metrics FILE``), or computed on the
  spot (``--evaluate``); without either, the report says how to add them;
- global relevance ``r_{j,c}`` over the training split, as a heat map, and the class–concept pairs by
  the paper's rule: for each class, its concepts with ``r_{j,c} > 0.5`` (the threshold and the number
  shown per class are options), a class with none said to have none (with its highest relevance);
- for the most relevant of those pairs, the figures of the paper's figure 4 and appendix E: the most
  activating training samples of the class, their λ sweeps (λ = 1 is the reconstruction), the
  difference images between the largest and smallest λ, the reverse difference and the energy;
  and the concept's most activating samples over all classes;
- optionally, ``out_dir/comparison.html`` (linked from the index; `write_comparison_page`): several
  systems on the same data (VisCoIN, FLINT, FLAEM; paper section 4 and appendix C.2): the paper's
  tables 1 and 2 side by side (`viscoin.metrics.compare`), and for a few relevant classes each
  system's visualisation of its most relevant concept on the same images.

The report folder keeps a manifest, ``out_dir/.viscoin-report.json``, of the files the report wrote
(`viscoin.utils.io.OutputFolder`): a later report replaces and deletes only those. A non-empty folder
without it (or with files changed since the report wrote them) is refused unless ``overwrite``
(``viscoin report --overwrite``), which still deletes no file the manifest does not list.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from viscoin.interpret.explainer import DEFAULT_LAMBDAS, PAIR_THRESHOLD, ConceptExplainer
from viscoin.interpret.plot import matrix_figure, pair_figure, samples_figure, save_figure, visualisations_figure
from viscoin.interpret.visualise import (
    ActivationMaximisationConfig,
    activation_maximisation,
    describe_visualisation,
    visualisation_kind,
)
from viscoin.metrics.compare import comparison_markdown, system_names
from viscoin.metrics.evaluate import markdown_tables
from viscoin.model.loading import TrainedModel, load_trained
from viscoin.utils.io import OutputFolder, atomic_path, read_json

FIGURES = "figures"
COMPARISON = "comparison.html"
COMPARISON_FIGURES = f"{FIGURES}/comparison"
WRITER = "viscoin report"
MANIFEST = ".viscoin-report.json"      # the files the report wrote in its folder (`OutputFolder`)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d1d1f; background: #fafafa; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { margin-top: 1.6em; } .muted { color: #666; } code { background: #eee; padding: 1px 4px; border-radius: 3px; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; background: #fff; font-size: 0.93em; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f0f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 1.6em; background: #fff; border: 1px solid #e3e3e3; padding: 10px; display: inline-block;
         max-width: 100%; box-sizing: border-box; }
figure img { max-width: 100%; height: auto; display: block; image-rendering: pixelated; }
figcaption { color: #555; font-size: 0.9em; margin-top: 6px; max-width: 1000px; }
.note { background: #fff8e1; border: 1px solid #f0d98a; padding: 8px 12px; border-radius: 4px; }
nav ol { columns: 2; } details { margin: 0.5em 0 1em; } summary { cursor: pointer; color: #444; } .pos { color: #b00020; } .neg { color: #1a4fb0; }
"""


# ---------------------------------------------------------------------------------------------
# HTML helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{_e(_fmt(value))}</td>'
    if isinstance(value, (list, tuple)) and len(value) <= 12 and all(not isinstance(v, (dict, list)) for v in value):
        return f"<td>{_e(', '.join(_fmt(v) for v in value))}</td>"
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str)
        return f"<td><code>{_e(text if len(text) <= 200 else text[:197] + '...')}</code></td>"
    return f"<td>{_e(_fmt(value))}</td>"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """An HTML table of plain values (numbers right-aligned, everything escaped)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, (dict, list, tuple)) or (
        isinstance(v, (list, tuple)) and len(v) <= 12 and all(not isinstance(x, (dict, list, tuple)) for x in v))


def dict_tables(data: Mapping[str, Any], level: int = 3, max_rows: int = 200) -> str:
    """Any JSON-like result as tables: scalars as name/value rows, lists of records as tables,
    nested dicts as sub-sections."""
    parts = []
    scalars = [(k, v) for k, v in data.items() if _is_scalar(v)]
    if scalars:
        parts.append(table(scalars, ["name", "value"]))
    for key, value in data.items():
        if _is_scalar(value):
            continue
        h = min(level, 6)
        if isinstance(value, Mapping):
            parts.append(f"<h{h}>{_e(key)}</h{h}>" + dict_tables(value, level + 1, max_rows))
        elif value and all(isinstance(v, Mapping) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))
            rows = [[v.get(c, "") for c in cols] for v in value[:max_rows]]
            more = f'<p class="muted">{len(value) - max_rows} more rows not shown</p>' if len(value) > max_rows else ""
            parts.append(f"<h{h}>{_e(key)}</h{h}>" + table(rows, cols) + more)
        else:
            parts.append(f"<h{h}>{_e(key)}</h{h}>" + table([[value]], ["value"]))
    return "\n".join(parts)


def markdown_to_html(text: str) -> str:
    """The small Markdown subset of metrics tables: '#' headings, pipe tables, paragraphs, '-' lists."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")) + 2)
            out.append(f"<h{level}>{_e(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            rows = [r for r in block if not all(set(c) <= set(":- ") for c in r)]
            if rows:
                head = "".join(f"<th>{_e(c)}</th>" for c in rows[0])
                body = "".join("<tr>" + "".join(_md_cell(c) for c in r) + "</tr>" for r in rows[1:])
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif line.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].strip().startswith(("- ", "* ")):
                items.append(f"<li>{_e(lines[i].strip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("#", "|", "- ", "* ")):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_e(' '.join(para))}</p>")
    return "\n".join(out)


def _md_cell(text: str) -> str:
    text = text.strip("`")
    try:
        float(text.replace("%", "").replace("±", "").split()[0])
        return f'<td class="num">{_e(text)}</td>'
    except (ValueError, IndexError):
        return f"<td>{_e(text)}</td>"


def metrics_html(metrics: Mapping[str, Any]) -> str:
    """The paper-style tables of `viscoin.metrics.evaluate.markdown_tables`, then every value of the
    result in generic tables (folded). A result without the sections those tables read, or lacking a key
    they need (another result format), gets generic tables only, with a note naming the missing key; any
    other failure (a value of the wrong type, a bug) is raised, never hidden."""
    try:
        paper = markdown_to_html(markdown_tables(dict(metrics)))
    except KeyError as exc:  # not laid out as `viscoin evaluate` writes it: show whatever is there
        return (f'<p class="note">Not the layout of <code>viscoin evaluate</code> (no key {_e(exc)}): the '
                "paper's tables are not shown, only the values.</p>" + dict_tables(metrics))
    if not paper.strip():
        return dict_tables(metrics)
    return paper + "<details><summary>All values of the evaluation</summary>" + dict_tables(metrics) + "</details>"


def page_head(title: str) -> str:
    """The start of a self-contained page, up to ``<main>``: charset, viewport, no favicon fetch, inline CSS."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>"""


def figure_html(src: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{_e(quote(src))}" alt="{_e(alt)}">{cap}</figure>'


def reconstruction_class_html(metrics: Mapping[str, Any]) -> str:
    """One sentence on whether the reconstructions show their inputs' class (as f sees it), when the evaluation
    has it (`viscoin.metrics.fidelity`)."""
    rec = metrics.get("reconstruction")
    agree = rec.get("reconstruction_agreement") if isinstance(rec, Mapping) else None
    if not isinstance(agree, (int, float)):
        return ""
    ce = rec.get("reconstruction_ce")
    ce_text = (f" The mean cross-entropy CE(f(x̃), f(x)), eq. 4's γ term without γ, is {ce:.3f}."
               if isinstance(ce, (int, float)) else "")
    return (f'<p class="note">Does the picture show the right class? f classifies {100 * agree:.1f}% of the test '
            f"reconstructions x̃ as it classifies their inputs x.{_e(ce_text)}</p>")


def ranked_pairs(by_class: Sequence[Mapping[str, Any]]) -> list[tuple[int, int, float]]:
    """The (class, concept, r) pairs of `ConceptExplainer.class_concept_pairs`, by decreasing relevance (ties:
    lower class, then lower concept first)."""
    pairs = [(int(s["class"]), int(j), float(r)) for s in by_class for j, r in zip(s["concepts"], s["relevance"])]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def pairs_table_html(
    by_class: Sequence[Mapping[str, Any]],   # `ConceptExplainer.class_concept_pairs`
    names: Sequence[str],                    # class names
    threshold: float,
    per_class: int,
) -> str:
    """The paper's class–concept pairs, one row per class: its concepts with r(j, c) > threshold (at most
    `per_class`, most relevant first); a class without any says so and gives its highest relevance."""
    rows = []
    for sel in by_class:
        c, passing = int(sel["class"]), int(sel["passing"])
        if passing:
            shown = ", ".join(f"{int(j)} ({float(r):+.3f})" for j, r in zip(sel["concepts"], sel["relevance"]))
            count = str(passing) if passing <= per_class else f"{passing} ({per_class} shown)"
        else:
            j, r = sel["best"]
            shown = f"none above {threshold:g} (highest: concept {j}, r = {r:+.3f})"
            count = "0"
        rows.append([names[c], shown, count])
    total = sum(int(sel["passing"]) for sel in by_class)
    with_pairs = sum(1 for sel in by_class if sel["passing"])
    return (f"<p>The paper's rule: concept j and class c form a pair when r(j, c) &gt; {threshold:g} "
            f"(<code>--relevance-threshold</code>). {total} pairs in {with_pairs} of {len(by_class)} classes; at "
            f"most {per_class} shown per class (<code>--concepts-per-class</code>), most relevant first.</p>"
            + table(rows, ["class c", "concepts j with r(j, c) > " + f"{threshold:g}" + " (r)", "pairs"]))


# ---------------------------------------------------------------------------------------------
# The report


def report_folder(out_dir: str | os.PathLike, overwrite: bool = False) -> OutputFolder:
    """The report folder, claimed (nothing is written): absent, empty, or holding an earlier report whose
    files are unchanged; otherwise a ValueError unless `overwrite` (see the module docstring)."""
    return OutputFolder(out_dir, WRITER, MANIFEST, overwrite)


def write_report(
    checkpoint: str | os.PathLike,                # concept-model folder (RUN/viscoin)
    out_dir: str | os.PathLike,                   # report folder: index.html + figures/
    metrics: Mapping[str, Any] | None = None,     # result of `viscoin evaluate` (JSON), if any
    pairs: int = 6,                               # class–concept pairs shown with figures (the most relevant)
    threshold: float = PAIR_THRESHOLD,            # a class–concept pair when r(j, c) > threshold (the paper: 0.5)
    per_class: int = 3,                           # at most this many pairs listed (and drawn) per class
    samples: int = 5,                             # most activating samples per pair
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    data_overrides: Sequence[str] = (),           # data.KEY=VALUE changes to the saved data config
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    trained: TrainedModel | None = None,          # an already loaded model (tests, demo); default: load it
    metrics_source: str = "",                     # where the metrics came from (shown in the report)
    comparison: Sequence[TrainedModel] = (),      # other systems on the same data: adds comparison.html
    comparison_metrics: Sequence[Mapping[str, Any]] = (),  # `viscoin evaluate` results of all compared systems
    am: ActivationMaximisationConfig = ActivationMaximisationConfig(),  # activation maximisation on that page
    overwrite: bool = False,                      # write into a non-empty folder without the report's manifest
) -> Path:
    """Write the report; returns the path of ``index.html``. With `comparison`, also the comparison page of
    this model and those (`write_comparison_page`), linked from the index. The folder is claimed first
    (`report_folder`): nothing is computed when it is refused."""
    output = report_folder(out_dir, overwrite)
    if pairs < 1 or samples < 1 or per_class < 1:
        raise ValueError(f"pairs, samples and per_class: expected >= 1, got {pairs}, {samples} and {per_class}")
    if not -1 <= threshold < 1:
        raise ValueError(f"threshold: expected a global relevance in [-1, 1), got {threshold}")
    if len(lambdas) < 2:
        raise ValueError(f"lambdas: expected at least two values, got {list(lambdas)}")
    checkpoint = Path(checkpoint)
    if trained is None:
        trained = load_trained(checkpoint, data_overrides, device)
    model, info, data_cfg, names = trained.model, trained.info, trained.data, trained.classes
    train = trained.dataset("train")

    out_dir = Path(out_dir)

    def save(name: str, fig: Any) -> str:
        save_figure(output.file(f"{FIGURES}/{name}"), fig)
        return f"{FIGURES}/{name}"

    explainer = ConceptExplainer(model, batch_size=batch_size)
    acts = explainer.activations(train)
    global_rel = explainer.global_relevance(acts)                        # [C, K]
    by_class = explainer.class_concept_pairs(global_rel, threshold, per_class)
    top = ranked_pairs(by_class)[:pairs]

    # -- figures ----------------------------------------------------------------------------------
    rel_src = save("global-relevance.png", matrix_figure(
        global_rel, [f"global relevance r(j, c) over the training split ({len(train)} images)",
                     "rows: classes, columns: concepts; red positive, blue negative, white 0"], names))
    pair_sections = []
    concept_src: dict[int, str] = {}
    for rank, (c, j, r) in enumerate(top, 1):
        ma = explainer.most_activating(acts, j, samples, per_class=c)
        images = torch.stack([train[int(i)]["image"] for i in ma["indices"]])
        sweeps = explainer.lambda_sweep(images, j, lambdas)               # [M, L, 3, R, R]
        src = save(f"pair-{rank:02d}-class{c}-concept{j}.png",
                   pair_figure(names[c], j, r, images, [float(a) for a in ma["activations"]], sweeps, lambdas))
        if j not in concept_src:
            overall = explainer.most_activating(acts, j, max(samples, 8))
            imgs = torch.stack([train[int(i)]["image"] for i in overall["indices"]])
            caps = [f"{names[int(y)][:14]} {float(a):.2f}" for y, a in zip(overall["labels"], overall["activations"])]
            concept_src[j] = save(f"concept-{j}-most-activating.png", samples_figure(
                f"concept {j}: most activating training samples, all classes (class, a_j)", imgs, caps))
        class_rel = explainer.class_top_concepts(global_rel, c, k=5, threshold=0.01)
        others = ", ".join(f"{int(cj)} ({float(cr):+.2f})" for cj, cr in zip(class_rel["concepts"], class_rel["relevance"]))
        pair_sections.append(
            f'<section id="pair-{rank}"><h3>{rank}. class {_e(names[c])} · concept {j} '
            f'<span class="pos">r = {r:+.3f}</span></h3>'
            f'<p class="muted">Most relevant concepts of this class: {_e(others)}.</p>'
            + figure_html(src, f"class {names[c]}, concept {j}",
                          f"The {len(ma['indices'])} training images of class {_e(names[c])} on which concept {j} "
                          f"is most active (pooled activation a), each regenerated with φ<sub>{j}</sub> multiplied by "
                          f"λ ∈ {{{', '.join(f'{v:g}' for v in lambdas)}}} (λ = 1: the reconstruction; Φ' and the "
                          f"noise are fixed). Δ rows: where (and in which colour) the image gains from λ = "
                          f"{min(lambdas):g} to λ = {max(lambdas):g}, and the reverse; energy: per-pixel squared "
                          f"difference.")
            + figure_html(concept_src[j], f"concept {j}, most activating samples",
                          f"Concept {j} over all classes: the training images it activates most.")
            + "</section>")

    # -- text -------------------------------------------------------------------------------------
    extra = info.get("extra") or {}
    model_rows = [["checkpoint", str(checkpoint.resolve())], *([k, v] for k, v in model.describe().items()),
                  ["data", f"{data_cfg.kind}: {data_cfg.root or '(the user cache folder)'}"], ["training images", str(len(train))]]
    if "perceptual" in extra:
        model_rows.append(["perceptual term", str(extra["perceptual"])])
    train_summary = extra.get("test")
    summary_html = ""
    if isinstance(train_summary, Mapping) and train_summary:
        summary_html = ("<h3>Test summary saved at the end of training</h3>" + dict_tables(train_summary))
    if metrics:
        src_note = f'<p class="muted">From {_e(metrics_source)}.</p>' if metrics_source else ""
        metrics_part = src_note + reconstruction_class_html(metrics) + metrics_html(metrics)
    else:
        metrics_part = (
            '<p class="note">No evaluation metrics in this report. Compute them with '
            f"<code>viscoin evaluate {_e(checkpoint)}</code> (it writes <code>evaluation.json</code> beside the "
            f"checkpoint, which the report then picks up) and rebuild the report with <code>viscoin report "
            f"{_e(checkpoint)}</code> (or <code>--metrics FILE</code>), or let the report compute them: "
            f"<code>viscoin report {_e(checkpoint)} --evaluate</code>.</p>")
    pairs_html = pairs_table_html(by_class, names, threshold, per_class)
    if top:
        pairs_html += (f"<p>Figures below: the {len(top)} most relevant of these pairs (<code>--pairs</code>).</p>"
                       + "<nav><ol>" + "".join(f'<li><a href="#pair-{i}">class {_e(names[c])} · concept {j} '
                                               f'(r = {r:+.3f})</a></li>' for i, (c, j, r) in enumerate(top, 1))
                       + "</ol></nav>")
    else:
        pair_sections = [f'<p class="note">No class–concept pair has r(j, c) &gt; {threshold:g}, so no concept is '
                         "drawn; a lower threshold (<code>viscoin report --relevance-threshold</code>) shows the "
                         "most relevant concepts anyway.</p>"]
    comparison_html = ""
    if comparison:
        write_comparison_page(out_dir, [trained, *comparison], comparison_metrics, pairs=min(pairs, 3),
                              samples=min(samples, 3), lambdas=lambdas, am=am, batch_size=batch_size,
                              output=output)
        others = ", ".join(f"{s.model.family} ({s.path.name})" for s in comparison)
        comparison_html = (f'<h2>Comparison</h2><p><a href="{COMPARISON}">This model beside {_e(others)}</a>: '
                           "the paper's tables 1 and 2 side by side and each system's concept visualisations on "
                           "the same images.</p>")
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc = f"""{page_head(f"{model.family} report: {checkpoint.name}")}
<h1>{_e(model.family)} report</h1>
<p class="muted">{_e(checkpoint.resolve())} · written {now} · viscoin (Parekh et al., ICLR 2025)</p>

<h2>Model</h2>
{table(model_rows, ["setting", "value"])}

<h2>Metrics</h2>
{metrics_part}
{summary_html}
{comparison_html}

<h2>Global relevance</h2>
<p>Local relevance of concept j for image x: r(j, x) = a<sub>j</sub>(x) W<sub>j,ĉ</sub> / max<sub>l</sub>
|a<sub>l</sub>(x) W<sub>l,ĉ</sub>| for the predicted class ĉ; the global relevance r(j, c) is its mean over the
training images of class c (paper section 3.5).</p>
{figure_html(rel_src, "global relevance heat map", "Global relevance of every concept (columns) for every class (rows).")}
<h3>Class–concept pairs</h3>
{pairs_html}

<h2>Concepts of the most relevant pairs</h2>
<p>As in the paper's figure 4 and appendix E: concept j is visualised by scaling its activation map
φ<sub>j</sub>(x) by λ and decoding the edited maps with {_e(model.decoder_name)} (everything else fixed);
λ = 0 removes the concept, λ = 1 is the reconstruction, larger λ exaggerates it.</p>
{''.join(pair_sections)}
</main>
</body>
</html>
"""
    index = output.file("index.html")
    with atomic_path(index) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    output.finish()  # files of an earlier report that this one did not write again (and only those) go
    return index


def write_comparison_page(
    out_dir: str | os.PathLike,                          # report folder: comparison.html + figures/comparison/
    systems: Sequence[TrainedModel],                     # 2 or more loaded systems on the same data; the first leads
    evaluations: Sequence[Mapping[str, Any]] = (),       # their `viscoin evaluate` results, for the tables
    pairs: int = 3,                                      # classes shown
    samples: int = 3,                                    # images per class
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,          # λ of the decoder systems' sweeps
    am: ActivationMaximisationConfig = ActivationMaximisationConfig(),
    batch_size: int = 32,
    back_link: str | None = "index.html",                # the page's link back (None: none)
    overwrite: bool = False,                             # write into a non-empty folder without the manifest
    output: OutputFolder | None = None,                  # the claimed report folder (`write_report`'s)
) -> Path:
    """Write ``comparison.html``: the tables of the evaluations side by side, then, for the first system's
    `pairs` most relevant class–concept pairs (distinct classes), that pair's `samples` most activating
    training images of the class, and on those same images each system's visualisation of its own most
    relevant concept for the class (VisCoIN's λ sweep, FLINT's activation maximisation, FLAEM's decoded
    scaled concept). Returns its path. Alone (no `output`), it claims `out_dir` as `write_report` does and
    replaces only the comparison page and figures of an earlier one."""
    own = output is None
    if output is None:
        output = report_folder(out_dir, overwrite)
    if len(systems) < 2:
        raise ValueError(f"comparison: expected at least 2 systems, got {len(systems)}")
    if pairs < 1 or samples < 1 or len(lambdas) < 2:
        raise ValueError(f"pairs, samples >= 1 and two λ or more expected, got {pairs}, {samples}, {list(lambdas)}")
    lead = systems[0]
    for s in systems[1:]:
        if s.classes != lead.classes or s.model.resolution != lead.model.resolution:
            raise ValueError(f"{s.path}: another dataset than {lead.path} (classes or resolution differ); systems "
                             "are compared on the same data")
    names = system_names([{"model": s.model.family, "dataset": "", "checkpoint": str(s.path)} for s in systems],
                         [s.path for s in systems])
    train = lead.dataset("train")
    explainers = [ConceptExplainer(s.model, batch_size=batch_size) for s in systems]
    encs = [e.activations(train) for e in explainers]
    global_rels = [e.global_relevance(enc) for e, enc in zip(explainers, encs)]     # [C, K] each
    shown: list[tuple[int, int, float]] = []
    for c, j, r in explainers[0].top_pairs(global_rels[0], global_rels[0].numel()):
        if r > 0 and c not in {p[0] for p in shown}:
            shown.append((c, j, r))
        if len(shown) == pairs:
            break
    sections: list[str] = []
    for rank, (c, j0, r0) in enumerate(shown, 1):
        ma = explainers[0].most_activating(encs[0], j0, samples, per_class=c)
        images = torch.stack([train[int(i)]["image"] for i in ma["indices"]])
        blocks, rows = [], []
        for name, s, e, grel in zip(names, systems, explainers, global_rels):
            top = e.class_top_concepts(grel, c, k=1)
            j, r = int(top["concepts"][0]), float(top["relevance"][0])
            kind = visualisation_kind(s.model)
            if kind == "decoder":
                views, labels, caps = e.lambda_sweep(images, j, lambdas), [f"λ = {v:g}" for v in lambdas], []
                what = describe_visualisation(kind, lambdas)
            else:
                res = activation_maximisation(s.model, images, j, am)
                views = torch.stack([am.start(images), res.images], dim=1)
                labels = [f"start: {am.init_scale:g} × sample", f"after {am.total_steps} steps"]
                caps = [f"a {a:.2f} → {b:.2f}" for a, b in zip(res.record["initial_activation"],
                                                               res.record["final_activation"])]
                what = describe_visualisation(kind, lambdas, am) + "; under each result: a_j before → after"
            blocks.append((f"{name} · concept {j} (r {r:+.2f})", views, labels, caps))
            rows.append([name, j, f"{r:+.3f}", what])
        fig_name = f"class{c}-{rank:02d}.png"
        save_figure(output.file(f"{COMPARISON_FIGURES}/{fig_name}"), visualisations_figure(
            [f"class {lead.classes[c]}: each system's most relevant concept, on the same images",
             f"images: the {len(images)} training images of the class that activate {names[0]}'s concept {j0} most"],
            images, [f"a = {float(a):.2f}" for a in ma["activations"]], blocks))
        sections.append(
            f'<section id="class-{rank}"><h3>{rank}. class {_e(lead.classes[c])}</h3>'
            + table(rows, ["system", "its most relevant concept j", "r(j, c)", "what its pictures show"])
            + figure_html(f"{COMPARISON_FIGURES}/{fig_name}", f"class {lead.classes[c]}: visualisations",
                          f"Top row: the images ({_e(names[0])}'s most activating training images of the class for "
                          f"concept {j0}, r = {r0:+.3f}; a: that concept's pooled activation). Below, for each system, "
                          "its visualisation of its own most relevant concept for this class on those images.")
            + "</section>")
    results = [dict(r) for r in evaluations if isinstance(r.get("model"), str) and isinstance(r.get("dataset"), str)]
    if results:
        numbers = markdown_to_html(comparison_markdown(results, system_names(results, [""] * len(results))))
    else:
        numbers = ('<p class="note">No numbers on this page: evaluate each system (<code>viscoin evaluate '
                   'CHECKPOINT</code>) and give the results (<code>viscoin compare EVAL.json ...</code> writes the '
                   'same tables as Markdown and JSON).</p>')
    systems_rows = [[n, s.model.family, str(s.path.resolve()), s.model.num_concepts, visualisation_kind(s.model)]
                    for n, s in zip(names, systems)]
    back = f'<p><a href="{_e(back_link)}">← back to the report</a></p>' if back_link else ""
    body = "".join(sections) or '<p class="note">The first system has no class–concept pair of positive relevance.</p>'
    doc = f"""{page_head(f"Comparison: {', '.join(names)}")}
{back}
<h1>Comparison of {len(systems)} systems</h1>
<p class="muted">On the same data ({_e(lead.data.kind)}: {_e(lead.data.root or '(the user cache folder)')}; relevance
over its {len(train)} training images) · written {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
· viscoin (Parekh et al., ICLR 2025, section 4 and appendix C.2)</p>
{table(systems_rows, ["system", "family", "checkpoint", "concepts K", "visualisation"])}

<h2>Numbers</h2>
{numbers}

<h2>Visualisations on the same images</h2>
<p>For the {len(shown)} most relevant class–concept pairs of {_e(names[0])} (one per class): each system's most
relevant concept for the class (global relevance r(j, c) over the training split, section 3.5), shown its own
way: a decoder family (VisCoIN, FLAEM) decodes the image's concepts with that concept scaled by λ; FLINT
optimises the input to raise the concept (activation maximisation, from {am.init_scale:g} × the image).</p>
{body}
</main>
</body>
</html>
"""
    page = output.file(COMPARISON)
    with atomic_path(page) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    if own:
        output.finish(within=(COMPARISON, f"{COMPARISON_FIGURES}/"))
    return page


# ---------------------------------------------------------------------------------------------
# Where a report goes and where its metrics come from


def default_out_dir(checkpoint: Path) -> Path:
    """CHECKPOINT/../report: next to the checkpoint, in its run folder."""
    return Path(checkpoint).resolve().parent / "report"


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics JSON (`viscoin evaluate`); ValueError naming the file when it is missing or not a JSON object."""
    data = read_json(path, what="metrics file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics (from `viscoin evaluate`), got {type(data).__name__}")
    return data


def default_metrics_file(checkpoint: Path) -> Path | None:
    """``evaluation.json`` beside the checkpoint (where `viscoin evaluate` writes by default), if it
    exists and was computed for this checkpoint."""
    path = Path(checkpoint).resolve().parent / "evaluation.json"
    if not path.is_file():
        return None
    try:
        data = read_metrics(path)
    except ValueError:
        return None
    recorded = data.get("checkpoint")  # as given to `viscoin evaluate`: may be relative to another folder
    if recorded is not None and Path(recorded).is_absolute() and Path(recorded).resolve() != Path(checkpoint).resolve():
        return None
    return path
