"""The ``dfm`` command line: ``services.cli.main`` (the app and ``dfm run``) and ``services.cli.ops``
(operator commands). ``python -m services.cli`` is the same as ``dfm``."""
