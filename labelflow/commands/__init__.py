"""``labelflow`` sub-commands other than ``bench``: each module exposes ``add_parser(subparsers)`` and
sets ``args.func`` (see :mod:`labelflow.cli`)."""
