"""The training pipeline: manifests and labels, the feature cache, the training loop, distillation from the
teacher, finetuning, metrics, evaluation and the model card. Imports torch: used by the model commands only."""
