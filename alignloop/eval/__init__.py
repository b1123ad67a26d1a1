"""Evaluation: gold scorers (``gold``), metrics (``metrics``) and the HTML report (``report``).

Import the submodules directly; this package imports none of them. ``metrics`` needs only numpy;
``report`` (and ``rm_report``, ``eval_report``, which build on it) import matplotlib.
"""
