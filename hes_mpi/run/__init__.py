"""Running: the setup shared with benchmarks (:mod:`.setup`), the training loop (:mod:`.trainer`), the
per-iteration record (:mod:`.recorder`), signals, faults and the abort policy (:mod:`.control`), the main
job and sweeps (:mod:`.suite`) and their parameter files (:mod:`.params`)."""
