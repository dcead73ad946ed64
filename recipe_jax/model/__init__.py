"""What is trained: models (built-in and users' own), losses, optimizers, augmentation, warm
starts from another run."""
