"""Pure PyTorch/numpy side of seqstream: never imports Kafka or Faust."""
