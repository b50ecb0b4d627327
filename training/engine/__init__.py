"""Running training: the trainer loop, one iteration, checkpoints, the schedule, distributed set-up, sampling."""
