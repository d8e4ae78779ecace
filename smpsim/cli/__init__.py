"""The ``smpsim`` command line: ``main.app`` assembles the commands, one module per command group."""
