"""Pseudo-labelling at scale: the unlabeled pool cut into shards and scored by one job per shard."""
