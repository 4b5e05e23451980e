"""Storage shared by every stream: local paths and ``s3://`` (fsspec), files written whole."""
