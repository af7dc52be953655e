"""Online fine-tuning of the GRU from the samples the worker captures: pure PyTorch, no Kafka,
no Faust (`samples`: the sample format and its tensors; `learner`: rounds and promotion)."""
