"""The command line: one function per verb, parsing and printing only (``cli.app``).

Top layer: may import everything.
"""
