"""What every layer may use, importing nothing else of the toolkit: the error types
(:mod:`.errors`), seeding and devices (:mod:`.runtime`), the process group
(:mod:`.distributed`), atomic file writes (:mod:`.files`) and progress signals
(:mod:`.progress`)."""
