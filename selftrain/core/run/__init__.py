"""A run: the stages as pure functions (``stages``), their order without Prefect (``pipeline``),
the metrics of the evaluate stage, and the typed run form a deployment shows in the Prefect UI."""
