"""Operator tools that act on a running installation from the outside: backup and restore (ops.backup) and
the fault drills (ops.drills). Nothing in the service imports them; the CLI does.
"""
