"""Equations -> a checked cyclic cell: the parser, the cell graph, the builder, and the
built-in cells (written in the same language)."""
