"""Post-hoc tools over written sets: side-by-side tables (:mod:`.compare`, ``mdk compare``),
HTML reports and exported figures (:mod:`.report`, ``mdk report``) and recipe grids
(:mod:`.sweep`, ``mdk sweep``)."""
