"""What a run is made of: the recipe format (:mod:`.recipe`, with its ``performance``
section in :mod:`.performance`), plugin discovery through entry points (:mod:`.registry`)
and the recipe JSON Schema for editors (:mod:`.schema`). Public: ``load_recipe``,
``Recipe``, ``Registry``, ``default_registry``, ``recipe_schema``."""
