"""Score of a mutmut run over the selected mutants (``scripts/mutation_test.sh``).

    python scripts/mutation_summary.py RESULTS_TXT LABEL PATTERN [PATTERN ...]

``RESULTS_TXT`` is ``mutmut results --all true``; only mutant names matching a pattern (fnmatch) count.
Killed = killed, timeout or segfault; the others (survived, no tests, not checked, ...) are listed.
"""

from __future__ import annotations

import collections
import fnmatch
import sys

KILLED = ("killed", "timeout", "segfault")


def main(argv: list[str]) -> int:
    results, label, patterns = argv[0], argv[1], argv[2:]
    rows = []
    with open(results) as f:
        for line in f:
            if ":" not in line:
                continue
            name, status = (part.strip() for part in line.rsplit(":", 1))
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
