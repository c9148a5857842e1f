"""Static-slot continuous batching: `scheduler.StaticBatcher` over `model_runner.ModelRunner`."""
