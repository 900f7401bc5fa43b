"""The shipped recipes. Copy and edit any of them; loramerge itself reads `demo/` at run time.

This folder is also package data of the wheel, importable as `loramerge.shipped_recipes` (pyproject.toml maps
it), so an installed loramerge finds the very files of this repository: there is no second copy to drift.
"""
