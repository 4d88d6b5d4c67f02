"""aligngpt-fixtures: write the tiny offline fixtures (a random-init Llama with LLaVA-1.5's tokenizer, a tiny
CLIP, the shapes dataset) that the tests, benchmarks and demo use; what is in them:
`aligngpt_plugin.devkit.tiny_checkpoints`.

    aligngpt-fixtures runs/fixtures            # same as: python -m aligngpt_plugin.fixtures runs/fixtures
"""

from __future__ import annotations

import argparse
import sys

from aligngpt_plugin.core.flags import DataclassFlags
from aligngpt_plugin.devkit.tiny_checkpoints import FixtureSpec, write_fixtures

SPEC_FLAGS = DataclassFlags(FixtureSpec, spelling="dash")  # --hidden-size, --n-pretrain, ...


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aligngpt-fixtures", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write into")
    SPEC_FLAGS.add_to(parser)
    args = parser.parse_args(argv)
    try:
        spec = SPEC_FLAGS.build(args)
    except ValueError as err:  # FixtureSpec's own check, e.g. a hidden size its heads do not divide
        parser.error(str(err))
    paths = write_fixtures(args.out, spec)
    print(f"wrote tiny fixtures to {paths.root}: llm/ clip/ data/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
