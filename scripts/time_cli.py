"""Time `ov2` start-up (help, argument errors) for one or more source trees, interleaved, so a busy
machine slows them alike; prints the median wall time of each form per tree.

    python scripts/time_cli.py 7 before=/tmp/base/src after=src     # 7 runs of each form per tree
"""

import os
import statistics
import subprocess
import sys
import time

FORMS = (["--help"], ["train", "--bogus"], ["eval", "zeroshot", "--help"], ["--version"])


def main() -> None:
    runs = int(sys.argv[1])
    trees = dict(arg.split("=", 1) for arg in sys.argv[2:]) or {"this": "src"}
    times = {(tree, " ".join(form)): [] for tree in trees for form in FORMS}
    for _ in range(runs):
        for form in FORMS:
            for tree, path in trees.items():
                env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "openvision2.cli", *form], env=env, capture_output=True)
                times[(tree, " ".join(form))].append(time.perf_counter() - start)
    for (tree, form), values in times.items():
        print(f"{tree:8s} ov2 {form:24s} median {statistics.median(values):.3f} s  "
              f"min {min(values):.3f}  max {max(values):.3f}  n={len(values)}")


if __name__ == "__main__":
    main()
