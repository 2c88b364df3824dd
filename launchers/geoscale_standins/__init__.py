"""Local stand-ins of the servers geoscale talks to, for tests, benchmarks and the study rehearsal:
``kubernetes`` (an API server whose job controller runs pods as local processes) and ``stac`` (a STAC API
with synthetic Sentinel-2 items); ``serving`` holds the HTTP plumbing both use."""
