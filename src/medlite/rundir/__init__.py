"""Run directories: the names in one (:mod:`~medlite.rundir.layout`), reading and writing them
(:mod:`~medlite.rundir.store`) and the model card (:mod:`~medlite.rundir.card`)."""
