"""Config read from argv and the environment at import, as deepseek_v4_pro/config.py does."""
import argparse
import os

_parser = argparse.ArgumentParser(add_help=False)
_parser.add_argument("--variant", default=os.environ.get("TOY_VARIANT", "small"))
_args, _ = _parser.parse_known_args()
VARIANT = _args.variant
ROWS = {"small": 16, "big": 64}[VARIANT]
