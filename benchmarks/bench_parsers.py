"""Parser speed on hostile input: each 1 MB ``parameters`` text must be parsed (or refused) in
under 100 ms. The inputs are the shapes that make a backtracking reader quadratic or worse: runs
of spaces or key characters without a colon, unterminated quotes, one colon after another.

    python benchmarks/bench_parsers.py            # best of 5 per input; exits 1 over the budget (CPU time)
"""
from __future__ import annotations

import sys
import time

BUDGET_S = 0.100
SIZE = 1_000_000


def hostile_texts() -> dict[str, str]:
    from dynamicid_rt.formats.infotext import MAX_FIELDS_LINE, MAX_TEXT_CHARS

    def fill(unit: str, head: str = "", tail: str = "") -> str:
        return head + unit * ((SIZE - len(head) - len(tail)) // len(unit)) + tail

    return {
        "spaces only": fill(" "),
        "spaces inside a field line": fill(" ", "Steps: 20, Sampler: Euler, a", "b: 1"),
        "key characters without a colon": fill("a -", "Steps: 1, "),
        "unterminated quotes": fill('ab: "x, ', "Steps: 1, "),
        "empty lines": fill("\n", "a"),
        "negative prompt lines": fill("Negative prompt: x\n"),
        "one long prompt line and fields": fill("word ", "", "\nSteps: 20, Sampler: Euler, CFG scale: 7"),
        "a last line longer than its cap (refused)": fill(":"),
        "colons in a last line at its cap": fill("a\n", "", ":" * MAX_FIELDS_LINE),
        "escaped quotes in a last line at its cap": fill("a\n", "", 'k: "' + '\\"' * (MAX_FIELDS_LINE // 2 - 4)),
        "text longer than its cap (refused)": "a" * (MAX_TEXT_CHARS + 1),
    }


def main() -> int:
    from dynamicid_rt import DynamicIDError, parse_parameters

    worst_wall = worst_cpu = 0.0
    for name, text in hostile_texts().items():
        wall = cpu = float("inf")
        for _ in range(5):
            started, started_cpu = time.perf_counter(), time.process_time()
            try:
                parse_parameters(text)
                outcome = "parsed"
            except DynamicIDError as exc:
                outcome = f"refused ({type(exc).__name__})"
            wall, cpu = min(wall, time.perf_counter() - started), min(cpu, time.process_time() - started_cpu)
        worst_wall, worst_cpu = max(worst_wall, wall), max(worst_cpu, cpu)
        print(f"{name:44s} {len(text) / 1e6:.2f} MB  wall {wall * 1000:6.1f} ms  cpu {cpu * 1000:6.1f} ms  {outcome}")
    # CPU time is the parser's own cost; wall time also counts other jobs sharing the cores.
    ok = worst_cpu < BUDGET_S
    print(f"worst: wall {worst_wall * 1000:.1f} ms, cpu {worst_cpu * 1000:.1f} ms (budget {BUDGET_S * 1000:.0f} ms): "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
