"""Score of a mutmut run over the selected mutants (``scripts/mutation_test.sh``).

    python scripts/mutation_summary.py [--base BASE_RESULTS_TXT ...] RESULTS_TXT LABEL PATTERN [PATTERN ...]

``RESULTS_TXT`` is ``mutmut results --all true``; only mutant names matching a pattern (fnmatch) count.
Killed = killed, timeout or segfault; the others (survived, no tests, not checked, ...) are listed.
``--base``: the results of an earlier full run; a mutant left "not checked" by this run (one that re-ran only
the earlier survivors and the functions changed since) takes its status there. Valid when tests were only
added in between and the function is unchanged (mutmut names a mutant by function and number). ``--base``
may be repeated (newest first): a mutant takes its status from the first base that checked it.
"""

from __future__ import annotations

import collections
import fnmatch
import sys

KILLED = ("killed", "timeout", "segfault")


def _read(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            if ":" in line:
                name, status = (part.strip() for part in line.rsplit(":", 1))
                out[name] = status
    return out


def main(argv: list[str]) -> int:
    base: dict[str, str] = {}
    while argv[:1] == ["--base"]:
        for name, status in _read(argv[1]).items():
            if base.get(name, "not checked") == "not checked":
                base[name] = status
        argv = argv[2:]
    results, label, patterns = argv[0], argv[1], argv[2:]
    rows = []
    for name, status in _read(results).items():
        if status == "not checked" and name in base:
            status = base[name]
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            rows.append((name, status))
    count = collections.Counter(status for _, status in rows)
    killed = sum(count[s] for s in KILLED)
    total = sum(count.values())
    print(f"{label}: {killed}/{total} killed = {100 * killed / max(total, 1):.1f}%  {dict(sorted(count.items()))}")
    for name, status in rows:
        if status not in KILLED:
            print(f"  {status:12s} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
