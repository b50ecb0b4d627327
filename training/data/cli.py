"""`cosa data ACTION`: hands over to the dataset check (`training/data/check/validate.py`) or import
(`training/data/importers/`) the user chose."""

from __future__ import annotations

import argparse
import importlib

ACTIONS = {
    "check": "cosa_sdk.training.data.check.validate:check_command",
    "import": "cosa_sdk.training.data.importers:import_command",
}


def data_command(args: argparse.Namespace) -> int:
    module_name, func_name = ACTIONS[args.data_command].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(args) or 0)
