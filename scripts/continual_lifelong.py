"""A lifelong (OSAKA-style) stream over rotated Fashion-MNIST: OML, La-MAML, MER and the baselines in one table.

Runs ``metajax continual --lifelong`` (see ``metajax.app.continual``) and prints its JSON
plus a table of ACC, BWT, FWT, forgetting, learning accuracy and online cumulative
accuracy. ``R``'s rows are taken when each new task first appears in the stream.

    nice -n 19 python scripts/continual_lifelong.py --budget small --out /tmp/lifelong
"""

from __future__ import annotations

import argparse
import json
import sys

from metajax.app import continual as continual_cli

BUDGETS = {
    "small": [
        "--tasks",
        "5",
        "--train-per-task",
        "200",
        "--test-per-task",
        "200",
        "--stream-steps",
        "300",
        "--meta-steps",
        "500",
        "--hidden",
        "100",
    ],
    "paper": [
        "--tasks",
        "20",
        "--train-per-task",
        "1000",
        "--test-per-task",
        "1000",
        "--stream-steps",
        "5000",
        "--meta-steps",
        "5000",
        "--hidden",
        "100",
    ],
}


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--budget", choices=BUDGETS, default="small")
    known, rest = pre.parse_known_args()
    parser = argparse.ArgumentParser(prog="continual_lifelong", description=__doc__)
    continual_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["continual", "--lifelong", "--mixture", "0.4", "0.4", "0.2", *BUDGETS[known.budget], *rest]
    )
    result = continual_cli.run(args)
    result["budget"] = known.budget
    print(continual_cli.table(result), file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
