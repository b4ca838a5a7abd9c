"""What builds and runs a Composer Trainer from a recipe: the runtime (device, DDP start), the recipe checks,
optimizer and schedule, checkpointing and resume, the trainer itself, evaluation, weights I/O, the run summary."""
