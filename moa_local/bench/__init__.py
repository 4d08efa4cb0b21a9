"""`moa-local bench`: load generator, statistics, engine figures and the report."""
