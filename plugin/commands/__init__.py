"""Sub-commands of ``python -m plugin``.

Each module defines ``NAME``, ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args) -> int`` (exit status). To add a command (e.g.
``rate``), write such a module and list it in ``COMMANDS``.
"""

from plugin.commands import export, propose_labels, rate, report, setup, tune_thresholds

COMMANDS = (setup, export, rate, report, propose_labels, tune_thresholds)
