"""Tools around the core, each run as `python -m resnext_lab.tools.<name>` (the Makefile names them): the
benchmark (`bench`), the GPU check, the thread policy, the plan check, the soak test, publishing a table,
the W&B dashboard and docs/SETTINGS.md. Nothing in the core imports them."""
