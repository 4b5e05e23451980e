"""Training: the device runtime, continued pretraining (one process or DDP), and the host of the
classifier plugins (fit / load / score through ``selftrain.classifiers`` entry points)."""
