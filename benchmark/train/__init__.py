"""One model, trained and scored: encoders and their tokenizers, the training loop and the
torch-free records it hands out, metrics, mixed precision, and the non-neural reference
baselines. Imports data, config and the root modules."""
