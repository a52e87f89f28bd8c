"""The synthetic-set file format (:mod:`.synthetic`: ``save_synthetic``, ``load_synthetic``,
``update_metadata``) and multi-formation decoding of stored sets (:mod:`.formation`)."""
