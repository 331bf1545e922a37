"""The tasks a run does, one module each, all dispatched by `cli.run_task`: `train` (torch and Lightning,
loaded only for it), `plan` and `complexity` (neither loads torch unless it times a network)."""
