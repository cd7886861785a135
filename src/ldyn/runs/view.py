"""`write_view(RUN_DIRS)`: one self-contained interactive HTML page over one or more runs (the CLI's `ldyn view`).

The page is `templates/view.html.j2` rendered with jinja2: plotly's JS bundle inlined from the installed plotly
package (no network), the runs' data as one JSON blob, and the page's own JS drawing everything client-side. It
opens on an overview (per run and stage, the mean change of every response type; a diagnosis box with the caller's
findings; the claims the runs can speak to) above a prompt picker: the first probed prompt, its texts, its
trajectory per response type and, for decomposed updates, observed against predicted Δ log π, the y⁺/y⁻ split and
the mass split. A 500-prompt run stays responsive: the data are arrays indexed by type, prompt and step, and only
the selected prompt's charts are drawn.

Data layout of one run in the blob (`run_data`): `types`, `ids` and `steps` name the axes; `logp[t][e]` is prompt
e's log π of type t per probed step (null where not probed, a whole null for a pair never probed);
`dec[field][t][e]` the same per decomposed update (`dsteps`); `texts[type][e]` the probed texts ("prompt" too).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import jinja2
from matplotlib.colors import to_hex

from ldyn import __version__
from ldyn.errors import LdynError
from ldyn.runs.compare import run_labels
from ldyn.runs.directory import Run, load_run, stage_spans
from ldyn.runs.style import color, label, ordered_types
from ldyn.runtime.files import writable_file, write_atomically

NOT_MEASURABLE = (
    "not measurable"  # the claims report's verdict for a claim the runs cannot speak to (paper.verdicts.NA)
)

PAGE_SUFFIXES = (".html", ".htm")
VIEW = "view.html"  # the default page, in the first run's folder
DIGITS = 4  # decimals kept of every number in the blob
# decomposition fields the page draws, when a run has them: the scatter, the y⁺/y⁻ split and the mass split
DEC_FIELDS = (
    "observed",
    "predicted",
    "sgd_positive",
    "sgd_negative",
    "observed/mass_argmax",
    "observed/mass_topk",
    "observed/mass_tail",
    "predicted/mass_argmax",
    "predicted/mass_topk",
    "predicted/mass_tail",
)
FINDING_FIELDS = ("title", "text", "mechanism", "levers")
CLAIM_FIELDS = ("id", "title", "paper", "measured", "verdict", "runs")


def _number(v) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return round(float(v), DIGITS)


def _grid(rows: list[dict], key: str, types: list[str], ids: list[str], steps: list[int]) -> list | None:
    """[type][example] -> values per step (None where missing; None for a pair with no value at all), or None
    when no row has `key`."""
    t_at, e_at, s_at = ({x: i for i, x in enumerate(xs)} for xs in (types, ids, steps))
    grid: list[list] = [[None] * len(ids) for _ in types]
    found = False
    for row in rows:
        if key not in row:
            continue
        found = True
        t, e = t_at[row["type"]], e_at[str(row["example_id"])]
        if grid[t][e] is None:
            grid[t][e] = [None] * len(steps)
        grid[t][e][s_at[row["step"]]] = _number(row[key])
    return grid if found else None


def _type_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return ordered_types(names) + (["except_argmax"] if "except_argmax" in names else [])


def run_data(run: Run, name: str) -> dict:
    """One run as the page reads it (the module docstring has the layout)."""
    ids = list(dict.fromkeys(str(r["example_id"]) for r in [*run.probes, *run.decomposition]))  # first probed first
    types = _type_order(r["type"] for r in [*run.probes, *run.decomposition])
    steps = sorted({r["step"] for r in run.probes})
    stage_at = {r["step"]: r["stage"] for r in run.probes}
    dsteps = sorted({r["step"] for r in run.decomposition})
    dec = {f: g for f in DEC_FIELDS if (g := _grid(run.decomposition, f, types, ids, dsteps)) is not None}
    texts: dict[str, list] = {}
    at = {e: i for i, e in enumerate(ids)}
    for (example_id, t), text in run.texts.items():
        if example_id in at:
            texts.setdefault(t, [None] * len(ids))[at[example_id]] = text
    stages = {s.name: s for s in run.config.stages}
    spans = [
        {"name": n, "start": a, "end": b, "describe": stages[n].describe() if n in stages else n}
        for a, b, n in stage_spans(run)
    ]
    return {
        "name": name,
        "describe": run.config.describe(),
        "path": str(run.path),
        "types": types,
        "labels": [label(t) for t in types],
        "colors": [to_hex(color(t)) for t in types],
        "ids": ids,
        "steps": steps,
        "step_stages": [stage_at[s] for s in steps],
        "stages": spans,
        "logp": _grid(run.probes, "logp_sum", types, ids, steps) or [[None] * len(ids) for _ in types],
        "dsteps": dsteps,
        "dec": dec,
        "texts": texts,
    }


def _fields(item, names: tuple[str, ...]) -> dict:
    """An object's or a dict's fields by name as text (missing: ""), the last one as a list of text."""
    get = item.get if isinstance(item, dict) else lambda k: getattr(item, k, None)
    row = {k: "" if get(k) is None else str(get(k)) for k in names[:-1]}
    last = get(names[-1])
    return row | {names[-1]: [] if last is None else [last] if isinstance(last, str) else [str(v) for v in last]}


def normalise_findings(findings) -> list[dict] | None:
    """The diagnosis box's rows (title, text, mechanism, levers as a list), or None to hide the box."""
    return None if findings is None else [_fields(f, FINDING_FIELDS) for f in findings]


def normalise_claims(claims) -> dict | None:
    """The claims rows split into those the runs can speak to (shown) and the rest (collapsed), or None."""
    if claims is None:
        return None
    rows = [_fields(c, CLAIM_FIELDS) for c in claims]
    unmeasured = [r for r in rows if r["verdict"] == NOT_MEASURABLE]
    return {"measured": [r for r in rows if r["verdict"] != NOT_MEASURABLE], "unmeasured": unmeasured}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ldyn.runs", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # `tojson` escapes < > & ' (a text holding "</script>" cannot end the data block); compact separators
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":"), "ensure_ascii": False}
    return env


def render(runs: list[Run], findings=None, claims=None) -> str:
    """The page's HTML for loaded runs."""
    import plotly.offline

    names = run_labels(runs)
    data = {"runs": [run_data(run, name) for run, name in zip(runs, names)]}
    return (
        _environment()
        .get_template("view.html.j2")
        .render(
            title="ldyn view: " + ", ".join(names),
            version=__version__,
            runs=data["runs"],
            data=data,
            findings=normalise_findings(findings),
            claims=normalise_claims(claims),
            plotly_js=plotly.offline.get_plotlyjs(),
        )
    )


def write_view(run_dirs: list[str | Path], out: str | Path | None = None, findings=None, claims=None) -> Path:
    """Write the interactive page over the runs in `run_dirs` to `out` (default: `<first run>/view.html`) and
    return its path. `findings` (objects or dicts with title, text, mechanism, levers) fill the diagnosis box: an
    empty list says "nothing notable", None hides it. `claims` (`paper.verdicts.Verdict`s or dicts) add the claims
    table: the rows the runs can speak to, the rest collapsed."""
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not run_dirs:
        raise LdynError("no runs to view")
    runs = [load_run(p) for p in run_dirs]
    out = writable_file(Path(run_dirs[0]) / VIEW if out is None else out, "--out", PAGE_SUFFIXES)
    write_atomically(out, render(runs, findings, claims), "--out")
    return out
