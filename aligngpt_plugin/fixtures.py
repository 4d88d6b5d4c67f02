"""aligngpt-fixtures: write the tiny offline fixtures (a random-init Llama with LLaVA-1.5's tokenizer, a tiny
CLIP, the shapes dataset) that the tests, benchmarks and demo use; what is in them:
`aligngpt_plugin.devkit.tiny_checkpoints`.

    aligngpt-fixtures runs/fixtures            # same as: python -m aligngpt_plugin.fixtures runs/fixtures
"""

from __future__ import annotations

import argparse
import sys

from aligngpt_plugin.devkit.tiny_checkpoints import FixtureSpec, write_fixtures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aligngpt-fixtures", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to write into")
    for name, f in FixtureSpec.__dataclass_fields__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=f.default, help=f.metadata["help"])
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    paths = write_fixtures(out, FixtureSpec(**args))
    print(f"wrote tiny fixtures to {paths.root}: llm/ clip/ data/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
