"""Plant one-line bugs, one at a time, and check that the tests meant to guard each behaviour
fail. Each plant is (file, the exact text of the line, what it becomes, tests to run); the
file is restored after every run, whatever happens.

    python dev/plant.py dev/plants_round3.txt          # every plant of that list
    python dev/plant.py dev/plants_round3.txt -k flip  # the plants whose name has "flip"

A list holds blocks separated by blank lines:

    name: what the bug is
    file: teacher_cache.py
    old:     if flipped:  # mirror the small stored map and the box, not the large output
    new:     if False:
    (in old and new, \n stands for a line break)
    tests: tests/test_teacher_cache.py   (pytest arguments, split as a shell would: -k "a or b")

The systematic runs of docs/mutation.md use dev/mutate.py; this tool is for the behaviours that
need a named, hand-written bug (a forgotten flip, a blended panel) to be shown caught.
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_plants(path: Path) -> list:
    plants = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        fields = {}
        for line in block.strip().splitlines():
            key, _, value = line.partition(": ")
            raw = key.strip() in ("old", "new")  # indentation matters; \n joins lines
            fields[key.strip()] = value.replace("\\n", "\n") if raw else value.strip()
        if fields:
            plants.append(fields)
    return plants


def run_plant(plant: dict) -> bool:
    """True when the tests fail with the bug in place (the bug is caught)."""
    path = ROOT / plant["file"]
    original = path.read_text(encoding="utf-8")
    if original.count(plant["old"]) != 1:
        raise SystemExit(f"{plant['name']}: the old line is not in {path} exactly once")
    try:
        path.write_text(original.replace(plant["old"], plant["new"]), encoding="utf-8")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-x",
                "-q",
                "-p",
                "no:cacheprovider",
                *shlex.split(plant["tests"]),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    finally:
        path.write_text(original, encoding="utf-8")
    return proc.returncode != 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("plants", type=Path)
    p.add_argument("-k", default="", help="only the plants whose name holds this text")
    args = p.parse_args()
    plants = [x for x in read_plants(args.plants) if args.k in x["name"]]
    caught = 0
    for plant in plants:
        ok = run_plant(plant)
        caught += ok
        print(f"{'caught ' if ok else 'MISSED '} {plant['name']}", flush=True)
    print(f"{caught} of {len(plants)} planted bugs caught")
    sys.exit(0 if caught == len(plants) else 1)


if __name__ == "__main__":
    main()
