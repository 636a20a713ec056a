"""`cryptotensors inspect`: what a file says about itself, with no key."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .._core import Inspection
from ._args import Command
from ._errors import EXIT_INTEGRITY, EXIT_OK, PROG
from ._jobs import _collect, _Job, _tensor_jobs
from ._output import _human, _shown


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> List[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def _protection(h: Inspection) -> str:
    if h.legacy:
        return f"encrypted, by cryptotensors 0.2.3 (convert it with `{PROG} migrate`)"
    return h.protection


def _looks(h: Inspection) -> str:
    if h.protection == "plain":
        return "looks plain (no sign of cryptotensors)"
    return f"looks {h.protection}" + (", by cryptotensors 0.2.3" if h.legacy else "")


def _unknown(h: Inspection) -> Optional[str]:
    """What stands for a fact of the envelope where the file is protected
    but its envelope is not one this build reads: unknown, not "none"."""
    if h.legacy:
        return "unknown (a cryptotensors 0.2.3 file)"
    if h.protection != "plain" and "format_version" not in h:
        return "unknown (its envelope is not understood)"
    return None


def _facts(h: Inspection) -> List[Tuple[str, str]]:
    """The file-level facts of an inspect() result, as (label, text)."""
    tensors = h["tensors"]
    unknown = _unknown(h)
    facts = [("protection", _protection(h))]
    if h.damage:
        facts.append(("damaged", f"{h.damage}; {_looks(h)}"))
    if tensors or not h.damage:
        facts.append(("tensors", f"{len(tensors)}, {sum(t['encrypted'] for t in tensors)} encrypted"))
    else:
        facts.append(("tensors", "unknown (the header is not understood)"))
    facts.append(("algorithm", h.get("algorithm") or unknown or "none (not encrypted)"))
    if h.get("segment_size"):
        facts.append(("segment size", f"{_human(h['segment_size'])} ({h['segment_size']} bytes)"))
    for r in h.get("recipients") or ():
        facts.append(("recipient", f"{r['kid']} ({r['alg']})"))
    signer = h.get("signer")
    facts.append(("signer", f"{signer} (not verified: use `{PROG} verify`)" if signer else unknown or "none (not signed)"))
    for k, v in sorted((h.get("metadata") or {}).items()):
        facts.append(("metadata", f"{k}={v}"))
    facts.append(("policy", "Rego, checked on every load:" if h.get("policy") else unknown or "none"))
    return facts


def _render(job: _Job) -> str:
    h = job.header
    rows = [(_shown(t["name"]), _shown(t["dtype"]), _shape(t["shape"]), "yes" if t["encrypted"] else "no") for t in h["tensors"]]
    lines = [_shown(job.display)]
    if rows or not h.damage:
        lines += _table(("tensor", "dtype", "shape", "encrypted"), rows)
    facts = [(label, _shown(text)) for label, text in _facts(h)]
    width = max(len(label) for label, _ in facts)
    lines += [f"  {label.ljust(width)}  {text}" for label, text in facts]
    lines += [("      " + _shown(line, keep="\t")).rstrip() for line in (h.get("policy") or "").splitlines()]
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    src = Path(args.input)
    jobs = _tensor_jobs(_collect(src, damaged=True))
    if args.json:
        doc = jobs[0].header.to_dict() if src.is_file() else {"files": {j.rel: j.header.to_dict() for j in jobs}}
        print(json.dumps(doc, indent=2, ensure_ascii=True))  # \u-escapes controls and bidi overrides too
    else:
        print("\n\n".join(_render(j) for j in jobs))
    damaged = [j for j in jobs if j.header.damage]
    if damaged:
        # What could be learnt is printed above; the failure is said once
        # more where errors go, and in the exit code.
        for j in damaged:
            print(f"{PROG}: {_shown(j.display)}: damaged; {_looks(j.header)}", file=sys.stderr)
        return EXIT_INTEGRITY
    return EXIT_OK


def register(command: Command) -> None:
    """Adds the `inspect` command."""
    p = command("inspect", cmd_inspect, "show tensors, encryption, recipients and signer, with no key "
                f"(a damaged file: what it shows, and exit code {EXIT_INTEGRITY})")
    p.add_argument("input", metavar="IN", help="a .safetensors file or a model directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
