"""Evaluation: gold scorers (``gold``), metrics (``metrics``) and the HTML report (``report``).

Import the submodules directly; this package does not import matplotlib until a report is drawn.
"""
