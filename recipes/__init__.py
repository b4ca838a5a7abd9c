"""The recipes (one YAML file per phase, algorithm_sets/) and the recipe language: the schema, loading and
validation, time strings, and the one error type. Imports nothing else of the project."""
