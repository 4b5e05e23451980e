"""Built-in classifier plugins (entry points in selftrain.classifiers)."""
