"""builder: the top layer. Dockerfile → image, and the pybuild CLI (``builder.cli``).

May import grammar, registry and runtime; click only in ``builder/cli.py`` and
``builder/commands/``. No logic lives in the CLI: commands call library functions here or
in the lower layers.
"""
