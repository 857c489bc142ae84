"""Readers for external data formats; `shoprank.data.loaders` is the public entry point.

Every reader turns its files into raw object-dtype frames with the source line of each row
and hands them to `validate_table` (through `_io.assemble`), so all formats share one set of
checks, one error format (file:line column) and one bad-row policy.
"""
