"""What every layer may use, importing nothing else of the toolkit: the error types
(:mod:`.errors`), seeding and devices (:mod:`.runtime`), the process group
(:mod:`.distributed`), atomic file writes (:mod:`.files`), progress signals
(:mod:`.progress`), figures (:mod:`.plots`, with the ``plot`` extra) and the provenance
schema of written files (:mod:`.provenance`)."""
