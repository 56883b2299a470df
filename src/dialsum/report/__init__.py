"""The per-GPU guide, computed: Markdown, ready-to-paste YAML and plots per model section.

May import: everything but ``checks`` and ``cli``.
"""
