"""Training: fine-tuning (gradient and zeroth-order), domain pretraining, distillation."""
