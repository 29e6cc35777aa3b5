"""The demo world: synthetic shapes scenes with exact masks, and training the demo models on them
(`python -m clipx.demo.training`)."""
