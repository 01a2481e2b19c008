"""Post-processing of run logs (what the ``analysis/`` scripts and the reporting commands call): tables
(:mod:`.tables`), figures (:mod:`.figures`), the alpha-beta fit (:mod:`.fit`), projections (:mod:`.projection`)
and their report (:mod:`.report`), traces (:mod:`.trace`), summaries (:mod:`.summary`), test accuracy
(:mod:`.evaluate`) and benchmark tables (:mod:`.benchtables`)."""
