"""``python -m runtime.cli``: the same as the ``agentrt`` command."""

from runtime.cli.main import main

main()
