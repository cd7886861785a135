"""`ldyn probes check FILE`: how good a probe set's response types are, per type: empty and duplicate responses,
the length against chosen, the word overlap with its source, and the rows a generator failed on.

The file is read as `ldyn run` reads a probe set (`data/formats.py`): a row that run would refuse -- a response
that is a number, a conversation with an unknown role -- is one error naming its line and field (with how many
more such values the file has), not a report. A response that is missing, null or empty counts as empty.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from ldyn.data.formats import example_from_row, text_of
from ldyn.data.jsonl import json_type, read_jsonl
from ldyn.errors import LdynError
from ldyn.generate.probe_types import ORDER, SOURCE


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def overlap(a: str, b: str) -> float:
    """F1 of the word multisets of a and b: 1 for the same words (in any order), 0 for none in common."""
    wa, wb = Counter(words(a)), Counter(words(b))
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    p, r = common / sum(wa.values()), common / sum(wb.values())
    return 2 * p * r / (p + r)


def read_texts(path: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """Per row, each response type of `ORDER` it has as its text ("" when missing, null or empty), and the types
    of the first row; a value that is not a response is an error naming the first and counting the others."""
    rows = list(read_jsonl(path))
    if not rows:
        raise LdynError("no rows", file=str(path))
    texts, bad = [], []
    for i, (line, row) in enumerate(rows):
        example = example_from_row(row, str(path), line, str(i))  # the row's own format errors, as `ldyn run`'s
        bad += [(line, t) for t in ORDER if t not in example.responses and row.get(t) is not None]
        texts.append({t: text_of(example.responses[t]) if t in example.responses else "" for t in ORDER})
    if bad:
        (line, t), more = bad[0], len(bad) - 1
        got = json_type(dict(rows)[line][t])
        others = f" ({more} more values in this file are not responses either)" if more else ""
        raise LdynError(
            f"must be a string or a list of messages ({{role, content}}), got {got}{others}",
            file=str(path),
            line=line,
            field=t,
        )
    first_line, first = rows[0]
    types = [t for t in ORDER if t in example_from_row(first, str(path), first_line, "0").responses or t in first]
    return texts, types


def check(path: str | Path) -> dict:
    """Per response type: rows, empty, duplicates (the same text as another type of the row, or as the same type of
    another row), mean length in words relative to chosen, mean word overlap with its source, copies of the source;
    and the rows each generator failed on (from the provenance file beside it)."""
    rows, types = read_texts(path)
    report = {}
    for t in types:
        filled = [(r, r[t]) for r in rows if r[t].strip()]
        seen = Counter(x.strip() for _, x in filled)
        same_row = sum(any(x.strip() == r[o].strip() for o in types if o != t) for r, x in filled)
        source = SOURCE.get(t)
        ratios = [len(words(x)) / max(len(words(r["chosen"])), 1) for r, x in filled]
        entry = {
            "rows": len(rows),
            "empty": len(rows) - len(filled),
            "duplicate_across_rows": sum(n - 1 for n in seen.values() if n > 1),
            "same_as_another_type": same_row,
            "length_vs_chosen": round(sum(ratios) / len(ratios), 3) if ratios else None,
        }
        if source and source != t and filled:
            overlaps = [overlap(x, r[source]) for r, x in filled]
            entry["overlap_with_" + source] = round(sum(overlaps) / len(overlaps), 3)
            entry["copies_of_" + source] = sum(x.strip() == r[source].strip() for r, x in filled)
        report[t] = entry
    for t, how in _provenance(Path(str(path) + ".provenance.json")).items():
        if t in report:
            report[t]["generator"] = how.get("generator")
            report[t]["failed_rows"] = how.get("failed_rows", [])
    return report


def _provenance(path: Path) -> dict[str, dict]:
    """The `fields` of the provenance file beside a built probe file ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        fields = json.loads(path.read_text(encoding="utf-8")).get("fields", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        fields = None
    if not isinstance(fields, dict) or not all(isinstance(how, dict) for how in fields.values()):
        raise LdynError(
            "is damaged (not the JSON `ldyn probes build` writes): build the probe set again, or delete it",
            file=str(path),
        )
    return fields


def check_file(path: str | Path) -> tuple[dict, Path]:
    """`check`, and the report written beside the file as FILE.check.json."""
    report = check(path)
    written = Path(str(path) + ".check.json")
    try:
        written.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as e:
        raise LdynError(f"cannot write the report: {e.strerror or e}", file=str(written)) from None
    return report, written


def check_lines(report: dict) -> list[str]:
    """The report as a table, one line per type."""
    lines = [f"{'type':<20}{'empty':>6}{'dup':>5}{'len/chosen':>11}  overlap with source   generator (failed rows)"]
    for t, e in report.items():
        ov = next(((k.removeprefix("overlap_with_"), v) for k, v in e.items() if k.startswith("overlap_with_")), None)
        copies = next((v for k, v in e.items() if k.startswith("copies_of_")), 0)
        ov_text = f"{ov[1]:.2f} ({ov[0]}; {copies} copies)" if ov else "-"
        failed = e.get("failed_rows") or []
        length = "-" if e["length_vs_chosen"] is None else f"{e['length_vs_chosen']:.2f}"
        lines.append(
            f"{t:<20}{e['empty']:>6}{e['duplicate_across_rows'] + e['same_as_another_type']:>5}"
            f"{length:>11}  {ov_text:<21}{e.get('generator') or '-'}"
            f"{f' ({len(failed)} failed)' if failed else ''}"
        )
    return lines
