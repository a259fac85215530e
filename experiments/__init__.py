"""Experiment drivers: ``python -m experiments.<name> --quick --out DIR`` or ``--full``."""
