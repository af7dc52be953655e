"""Offline training of `models.gru.SeqModel`: config, sequences, batches, the loss (shared with
online learning), the fit loop, calibration, inference, the evaluation ranker and a cli-free run."""
