"""Competition CSVs in, cleaned records and tokenized rows out.

May import: ``core``.
"""
