"""``mometas-checkpoint``: check and list a run's checkpoints before keeping, copying or resuming one.

  mometas-checkpoint verify RUN/checkpoints[/stepN]   every file against the tag's manifest; exit 1 if damaged
  mometas-checkpoint list RUN/checkpoints             tag, step, complete, intact, size, run identity

Both read files only (no DeepSpeed, no torch.load): a checkpoint from elsewhere can be inspected safely.
See docs/checkpoints.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Tuple

from mometas_ds import checkpoint as ckpt
from mometas_ds.config.paths import RunPaths

PROG = "mometas-checkpoint"


class UsageError(ValueError):
    """A path that holds no checkpoints; reported as ``mometas-checkpoint: error: ...``, exit 2."""


def _targets(path: str) -> Tuple[str, Optional[str]]:
    """(directory of tags, one tag or None for all) for RUN, RUN/checkpoints or RUN/checkpoints/stepN."""
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise UsageError(f"{path}: no such directory")
    if ckpt.step_of(os.path.basename(path)) is not None:
        return os.path.dirname(path) or ".", os.path.basename(path)
    if os.path.isdir(RunPaths(path).checkpoints) and not _tags_in(path):
        path = os.path.join(path, "checkpoints")  # a run's output_dir
    if not _tags_in(path):
        raise UsageError(f"{path}: holds no checkpoint tags (step<N> directories)")
    return path, None


def _tags_in(tags_dir: str) -> List[str]:
    names = [n for n in os.listdir(tags_dir)
             if ckpt.step_of(n) is not None and os.path.isdir(os.path.join(tags_dir, n))]
    return sorted(names, key=ckpt.step_of, reverse=True)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _identity(tag_dir: str):
    """(short id, identity dict) of a tag's run_identity.json; ("-", None) without one, ("unreadable", None)."""
    try:
        identity = ckpt.read_run_identity(tag_dir)
    except ckpt.ResumeRefused:
        return "unreadable", None
    if identity is None:
        return "-", None
    record = ckpt.text_record(json.dumps(identity, sort_keys=True))
    return record[ckpt.HASH][:8], identity


def _pointer_problem(tags_dir: str) -> Optional[str]:
    pointer = ckpt.read_pointer(tags_dir)
    if pointer is not None and ckpt.step_of(pointer) is None:
        return (f"{os.path.join(tags_dir, ckpt.LATEST_FILE)} holds {pointer[:200]!r}, not a tag (step<N>): "
                "--resume auto refuses it")
    return None


def _auto_choice(tags_dir: str, level: str) -> str:
    """What --resume auto would do with this directory (the same rule, without its warnings)."""
    if _pointer_problem(tags_dir):
        return "--resume auto stops with exit 2 (see latest_complete above)"
    verdict, damaged = ckpt.newest_intact(tags_dir, level)
    if verdict is not None:
        return f"--resume auto resumes from {verdict.tag}"
    return ("--resume auto stops with exit 2: no complete tag is intact" if damaged
            else "--resume auto starts from step 0: no complete tag")


def cmd_verify(args) -> int:
    tags_dir, only = _targets(args.path)
    tags = [only] if only else _tags_in(tags_dir)
    bad = 0
    for tag in tags:
        verdict = ckpt.verify_tag(tags_dir, tag, args.level)
        if not verdict.complete:
            if only:
                print(f"{tag}: INCOMPLETE: no {ckpt.COMPLETE_MARKER} marker (a save that never finished)")
                bad += 1
            else:
                print(f"{tag}: incomplete (never published; --resume ignores it)")
        elif verdict.intact is None:
            print(f"{tag}: UNVERIFIED: written before checkpoints carried a manifest")
        elif verdict.intact:
            print(f"{tag}: intact ({'sizes and checksums' if verdict.level == 'full' else 'sizes'} of "
                  f"{_human(verdict.size)} checked)")
        else:
            bad += 1
            print(f"{tag}: DAMAGED")
            for problem in verdict.problems:
                print(f"  {problem}")
    problem = _pointer_problem(tags_dir)
    if problem:
        bad += 1
        print(problem)
    if not only:
        print(_auto_choice(tags_dir, args.level))
    return 1 if bad else 0


def cmd_list(args) -> int:
    tags_dir, only = _targets(args.path)
    tags = [only] if only else _tags_in(tags_dir)
    pointer = ckpt.read_pointer(tags_dir)
    rows, identities = [], {}
    for tag in tags:
        verdict = ckpt.verify_tag(tags_dir, tag, args.level)
        short, identity = _identity(verdict.path)
        if identity is not None:
            identities.setdefault(short, (identity, []))[1].append(tag)
        intact = ("-" if not verdict.complete else "unverified" if verdict.intact is None
                  else "yes" if verdict.intact else "NO")
        rows.append({"tag": tag, "step": verdict.step, "complete": verdict.complete, "intact": intact,
                     "checked": verdict.level, "size": verdict.size, "identity": short,
                     "latest_complete": tag == pointer, "problems": verdict.problems,
                     "run_identity": identity})
    if args.json:
        print(json.dumps({"checkpoints": tags_dir, "tags": rows}, indent=1))
        return 0
    header = ("TAG", "STEP", "COMPLETE", "INTACT", "SIZE", "IDENTITY")
    table = [header] + [(r["tag"] + (" *" if r["latest_complete"] else ""), str(r["step"]),
                         "yes" if r["complete"] else "no", r["intact"], _human(r["size"]), r["identity"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if pointer is not None:
        print(f"* named by {ckpt.LATEST_FILE}" if ckpt.step_of(pointer) is not None else _pointer_problem(tags_dir))
    for r in rows:
        for problem in r["problems"] if r["complete"] else []:
            print(f"{r['tag']}: {problem}")
    for short, (identity, with_it) in identities.items():
        settings = ", ".join(f"{key}={json.dumps(value)}" for key, value in identity.items())
        print(f"run identity {short} ({', '.join(with_it)}): {settings}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Verify and list mometas_ds checkpoints (reads files only; "
                                "loads nothing, so checkpoints from elsewhere can be checked safely).")
    sub = p.add_subparsers(dest="command", required=True)
    levels = ckpt.VERIFY_LEVELS
    v = sub.add_parser("verify",
                       help="check every file of each checkpoint against its manifest; exit 1 if any is damaged")
    v.add_argument("path", help="RUN/checkpoints (every tag), RUN/checkpoints/stepN (one), or a run's output_dir")
    v.add_argument("--level", choices=levels, default="full",
                   help="'full' (default) = sizes and xxh3_64 checksums, 'size' = sizes only, "
                        "'auto' = as --resume does (full up to 4 GiB a tag)")
    v.set_defaults(func=cmd_verify)
    ls = sub.add_parser("list", help="tags with step, complete, intact, size and run identity")
    ls.add_argument("path", help="RUN/checkpoints, RUN/checkpoints/stepN, or a run's output_dir")
    ls.add_argument("--level", choices=levels, default="auto",
                    help="how INTACT is checked: 'auto' (default, as --resume does), 'size' or 'full'")
    ls.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
