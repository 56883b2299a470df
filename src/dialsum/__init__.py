"""dialsum: memory-aware seq2seq summarization for Korean dialogue."""

__version__ = "0.1.0"
