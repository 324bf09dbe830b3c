"""Defences, one per module, registered in `DEFENCES` (base.py): wrappers that make any target a defended target."""
