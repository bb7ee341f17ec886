"""The application layer: the `ditto` command and everything that composes the pieces below it.

Here, and only here, the kernel (`ditto`), the stages (`services.audio_encoder`, `services.motion_generator`,
`services.renderer`), the orchestrator (`services.orchestrator`) and training (`ditto_training`) meet: the stage
factory, the worker runner, the embedded and local distributed stacks, the weights commands and the synthetic weights
writer. Nothing below imports this package (import-linter checks it: `make lint`).
"""
