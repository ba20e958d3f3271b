"""Active learning around the calculator.

:mod:`.store` (frames and their statuses), :mod:`.trigger` (flags uncertain
frames), :mod:`.labelling` (the reference over an executor),
:mod:`.verification` (reference checks and the model choice),
:mod:`.learning_run` (rounds, state, resume), the learners
:mod:`.md_learner` and :mod:`.neb_learner`, and :mod:`.transition_state`
(Sella refinement of a saddle, checked by the reference).
"""
