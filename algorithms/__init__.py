"""Composer Algorithms this project adds, and the registry that maps a recipe's algorithm names to Composer's
classes and ours."""
